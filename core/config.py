"""What every config dataclass of the core shares: dict and YAML round trips with clear errors.

A config is a dataclass that mixes in ``ConfigMixin`` and names its YAML section; a YAML file
holds its fields at top level or under that section (``moe:``, ``retrieval:``, ...), so one
scenario file can carry several configs.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import yaml

C = TypeVar("C", bound="ConfigMixin")


def cache_dir(*parts: str) -> Path:
    """Fathom's cache folder (``$FATHOM_CACHE_DIR``, default ``~/.cache/fathom``), joined with ``parts``.

    Read at call time, so a test or a deployment can move it with the environment variable.
    """
    root = os.environ.get("FATHOM_CACHE_DIR")
    return (Path(root) if root else Path.home() / ".cache" / "fathom").joinpath(*parts)


def models_dir(*parts: str) -> Path:
    """Folder of the shipped trained weights (``$FATHOM_MODELS_DIR``, default ``models/`` of the checkout).

    Each model lives in its own sub-folder with safetensors weights and a model card.
    """
    root = os.environ.get("FATHOM_MODELS_DIR")
    return (Path(root) if root else Path(__file__).resolve().parents[1] / "models").joinpath(*parts)


class ConfigMixin:
    """``to_dict``/``from_dict``/``from_yaml`` for a dataclass; unknown fields are an error."""

    yaml_section: ClassVar[str] = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls: type[C], data: dict[str, Any]) -> C:
        known = {f.name for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"unknown {cls.__name__} fields: {', '.join(unknown)}")
        return cls(**data)

    @classmethod
    def from_yaml(cls: type[C], path: str | Path) -> C:
        """Read a YAML mapping of fields, at top level or under the class's ``yaml_section`` key."""
        data = yaml.safe_load(Path(path).read_text())
        if not isinstance(data, dict):
            raise ValueError(
                f"{path}: expected a mapping of {cls.__name__} fields, got {type(data).__name__}"
            )
        return cls.from_dict(data.get(cls.yaml_section, data) if cls.yaml_section else data)
