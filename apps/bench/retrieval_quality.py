"""Retrieval quality of ``fathom bench retrieval``: recall@1/5/10 and MRR against plain LangChain.

The questions are BANKING77 questions held out from the intent router's training, each answered by the
knowledge-base article(s) written for its intent (``apps.customer_service.evaluation``). Rows: Fathom's
hybrid retriever, hybrid + the assistant's intent-aware ordering (its own LCEL chain), hybrid + a local
cross-encoder, and LangChain's ``FAISS`` vector store over the same chunks (plain texts, and with the
title headers our retriever indexes, for reference).
"""

from __future__ import annotations

import tempfile
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from apps.bench.common import Report
from apps.bench.retrieval import NO_RERANKER, RECALL_MARGIN_POINTS, Progress, RetrievalBenchConfig
from apps.customer_service.evaluation import QAPair, banking77_kb_pairs, evaluate_qa, sample_pairs
from core.retrieval.embeddings import Embedder


def qa_pairs(cfg: RetrievalBenchConfig, sample: int, seed: int) -> list[QAPair]:
    """A stratified sample of BANKING77 -> knowledge-base pairs.

    Args:
        cfg: the inputs (``banking77``, ``kb_dir``).
        sample: how many pairs.
        seed: seed of the sample.

    Returns:
        The pairs.

    Raises:
        FileNotFoundError: the CSV or the knowledge base is missing.
    """
    return banking77_kb_pairs(cfg.banking77, cfg.kb_dir, sample=sample, seed=seed)


def held_out_pairs(cfg: RetrievalBenchConfig, router: Any) -> tuple[list[QAPair], str]:
    """The quality sample: BANKING77 questions the intent router did not train on, and how they were chosen.

    The router trains on the CSV minus a stratified validation split (``intents.stratified_split``); the
    same split, from the router's model card (else the shipped training config), gives questions that
    neither the router nor anything else here has seen, so the intent ordering is not flattered.

    Args:
        cfg: the inputs (``banking77``, ``kb_dir``, ``qa_sample``, ``seed``).
        router: the loaded router (its model card gives the split), or ``None``.

    Returns:
        ``(pairs, note)``; the note says which rows were used and warns when the router was trained on
        another file.

    Raises:
        FileNotFoundError: the CSV or the knowledge base is missing.
    """
    from apps.customer_service.intents import DEFAULT_CONFIG, IntentTrainConfig, stratified_split
    from core.training import TrainConfig, file_sha256

    pairs = banking77_kb_pairs(cfg.banking77, cfg.kb_dir)  # every row, in file order, as training reads it
    conf = (getattr(router, "card", None) or {}).get("config") or {}
    try:
        val_fraction = float(conf["intent_train"]["val_fraction"])
        seed = int(conf["train"]["seed"])
        origin = "the intent router's model card"
    except (KeyError, TypeError, ValueError):
        val_fraction = IntentTrainConfig.from_yaml(DEFAULT_CONFIG).val_fraction
        seed = TrainConfig.from_yaml(DEFAULT_CONFIG).seed
        origin = f"{DEFAULT_CONFIG.name}"
    _, held_out = stratified_split([p.label or "" for p in pairs], val_fraction, seed)
    note = (
        f"{cfg.banking77.name} rows held out from intent-router training (stratified {val_fraction:.0%} "
        f"split, seed {seed}, from {origin})"
    )
    trained_on = ((getattr(router, "card", None) or {}).get("data") or {}).get(cfg.banking77.name)
    if router is not None and trained_on != file_sha256(cfg.banking77):
        note += f"; WARNING: the router was not trained on this {cfg.banking77.name} (hash differs)"
    return sample_pairs([pairs[i] for i in held_out], cfg.qa_sample, cfg.seed), note


def langchain_faiss(texts: Sequence[str], records: Sequence[Any], embedder: Embedder) -> Any:
    """LangChain's own FAISS vector store over ``texts`` (one per record), embedded by ``embedder``.

    Args:
        texts: what LangChain embeds and returns as ``page_content``, one per record.
        records: the passages (their ids and metadata go with each document).
        embedder: embeds texts and queries (through ``FathomEmbeddings``).

    Returns:
        A ``langchain_community.vectorstores.FAISS`` built with ``FAISS.from_texts``.
    """
    from core.retrieval.langchain import FathomEmbeddings

    with warnings.catch_warnings():  # langchain-community warns on import that it is being sunset
        warnings.simplefilter("ignore", DeprecationWarning)
        from langchain_community.vectorstores import FAISS

    return FAISS.from_texts(
        list(texts),
        FathomEmbeddings(embedder),
        metadatas=[{**r.metadata, "id": r.id} for r in records],
        ids=[r.id for r in records],
    )


def bench_quality(
    report: Report,
    cfg: RetrievalBenchConfig,
    embedder: Embedder,
    router: Any,
    router_reason: str | None,
    say: Progress,
) -> None:
    """Recall@1/5/10 and MRR on the BANKING77 -> KB pairs; adds rows and the recall@5 targets.

    Args:
        report: where rows and targets go.
        cfg: inputs (``kb_dir``, ``banking77``, ``qa_sample``, ``reranker``).
        embedder: the benchmark's embedder (shared by every retriever, so each text is embedded once).
        router: the trained intent router, or ``None`` (then the intent row is left out).
        router_reason: why there is no router.
        say: progress callback.
    """
    from connectors.knowledge import load_path
    from core.retrieval.hybrid import HybridRetriever, index_text

    names = {
        "hybrid": "QA recall@5: fathom hybrid - LangChain FAISS (points)",
        "intent": "QA recall@5: fathom hybrid + intent ordering - LangChain FAISS (points)",
        "rerank": "QA recall@5: fathom hybrid + reranker - LangChain FAISS (points)",
    }
    try:
        pairs, chosen = held_out_pairs(cfg, router)
    except FileNotFoundError as exc:
        for name in names.values():
            report.add_target(name, None, RECALL_MARGIN_POINTS, "higher", reason=str(exc))
        return
    report.settings["qa_questions"] = chosen
    chunks = load_path(cfg.kb_dir).documents
    case = f"qa/banking77->kb/n={len(pairs)}/chunks={len(chunks)}"
    say(f"{case}: embedding questions and chunks")
    embedder.embed([p.question for p in pairs])  # one batch; every search below reads the cache
    ours = HybridRetriever.build(chunks, embedder=embedder)
    results: dict[str, dict[str, float]] = {}
    say(f"{case}: LangChain FAISS baseline")
    results["langchain-faiss"] = evaluate_qa(
        pairs, langchain_faiss([c.text for c in chunks], chunks, embedder)
    )
    results["langchain-faiss (chunks with title headers)"] = evaluate_qa(
        pairs, langchain_faiss([index_text(c) for c in chunks], chunks, embedder)
    )
    say(f"{case}: fathom hybrid")
    results["fathom-hybrid"] = evaluate_qa(pairs, ours)
    if router is not None:
        say(f"{case}: fathom hybrid + the assistant's intent ordering")
        with tempfile.TemporaryDirectory(prefix="fathom-bench-") as folder:
            search = _assistant_search(ours, router, embedder, Path(folder))
            results["fathom-hybrid+intent"] = evaluate_qa(pairs, search)
    if cfg.reranker is not None:
        say(f"{case}: fathom hybrid + reranker")
        reranked = HybridRetriever.build(chunks, embedder=embedder, reranker=cfg.reranker)
        results["fathom-hybrid+reranker"] = evaluate_qa(pairs, reranked)

    base = results["langchain-faiss"]
    for impl, metrics in results.items():
        row = {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}
        if impl.startswith("fathom"):
            row["recall_at_5_gain_points"] = round(100 * (metrics["recall_at_5"] - base["recall_at_5"]), 2)
        report.add_result(case, impl, **row)
    for key, impl, reason in (
        ("hybrid", "fathom-hybrid", None),
        ("intent", "fathom-hybrid+intent", router_reason),
        ("rerank", "fathom-hybrid+reranker", NO_RERANKER),
    ):
        if impl in results:
            gain = round(100 * (results[impl]["recall_at_5"] - base["recall_at_5"]), 2)
            report.add_target(names[key], gain, RECALL_MARGIN_POINTS, "higher")
        else:
            report.add_target(names[key], None, RECALL_MARGIN_POINTS, "higher", reason=reason)


def _assistant_search(
    retriever: Any, router: Any, embedder: Embedder, folder: Path
) -> Callable[[str, int], list[Any]]:
    """``(question, k) -> hits`` through the assistant's own chain (mask, intent, retrieve with ordering).

    The chain runs to the end (the answer too); its ``hits`` are what the assistant retrieved.
    """
    from apps.customer_service.assistant import Assistant, AssistantConfig
    from apps.customer_service.extractive import ExtractiveAnswerer
    from apps.customer_service.sessions import open_store

    assistants: dict[int, Assistant] = {}

    def search(question: str, k: int) -> list[Any]:
        if k not in assistants:
            store = open_store(f"sqlite:///{folder}/sessions.db")
            assistants[k] = Assistant(
                retriever, router, store, ExtractiveAnswerer(embedder), AssistantConfig(k=k)
            )
        return assistants[k].chain.invoke({"question": question})["hits"]

    return search
