from __future__ import annotations

from pathlib import Path

import pytest

import core.retrieval
from core.retrieval.config import RetrievalConfig

CONFIGS = sorted((Path(core.retrieval.__file__).parent / "configs").glob("*.yaml"))


def test_defaults() -> None:
    config = RetrievalConfig()
    assert config.index_kind == "auto" and config.rrf_k == 60 and config.model_path is None
    assert config.retriever_options() == {"rrf_k": 60, "reranker": None, "candidates": 20}
    assert RetrievalConfig.from_dict(config.to_dict()) == config


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_yaml_loads(path: Path) -> None:
    assert isinstance(RetrievalConfig.from_yaml(path), RetrievalConfig)


def test_yaml_at_top_level(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text("index_kind: hnsw\nrrf_k: 10\nreranker_path: /models/reranker\n")
    config = RetrievalConfig.from_yaml(path)
    assert (config.index_kind, config.rrf_k, config.reranker_path) == ("hnsw", 10, "/models/reranker")
    assert config.embedder_options()["model_path"] is None


def test_bad_configs(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="index_kind must be one of"):
        RetrievalConfig(index_kind="annoy")
    with pytest.raises(ValueError, match="rrf_k must be an integer >= 0"):
        RetrievalConfig(rrf_k=-5)
    with pytest.raises(ValueError, match="candidates must be an integer >= 1"):
        RetrievalConfig(candidates=0)
    with pytest.raises(ValueError, match="unknown RetrievalConfig fields: top_k"):
        RetrievalConfig.from_dict({"top_k": 3})
    path = tmp_path / "list.yaml"
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="expected a mapping"):
        RetrievalConfig.from_yaml(path)


def test_public_names() -> None:
    for name in core.retrieval.__all__:
        assert getattr(core.retrieval, name) is not None
