"""Vector index over FAISS: exact flat, HNSW, or IVF-PQ, by inner product.

Vectors are expected unit-normalised (``Embedder`` makes them so), so inner product is cosine
similarity. ``kind="auto"`` picks by corpus size:

=================  ===========  ==================================================================
documents N        kind         why
=================  ===========  ==================================================================
N < 50 000         ``flat``     exact; ~370 queries/s at 200k x 384 on 2 cores, so still fast here
50 000 <= N < 1M   ``hnsw``     recall@10 ~0.99 at ~20x exact speed (FACTS.md), memory as flat
N >= 1 000 000     ``ivfpq``    compressed codes: flat vectors would need N x D x 4 bytes of RAM
=================  ===========  ==================================================================

The FAISS GPU build is used when it is installed and sees a GPU (flat and IVF-PQ move to the
GPU; FAISS has no GPU HNSW, so HNSW stays on the CPU).

Shapes:
    ``add(vectors (N, D), ids (N,))``; ``search(queries (Q, D), k) -> (scores (Q, k'), ids (Q, k'))``
    with ``k' = min(k, len(index))``; slots an approximate index could not fill hold id -1.
"""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import faiss
import numpy as np

log = logging.getLogger(__name__)

IndexKind = Literal["auto", "flat", "hnsw", "ivfpq"]
KINDS = ("flat", "hnsw", "ivfpq")
FLAT_MAX = 50_000  # below this many vectors "auto" builds an exact index
HNSW_MAX = 1_000_000  # below this many (and >= FLAT_MAX) "auto" builds HNSW; IVF-PQ beyond
MIN_IVFPQ_TRAIN = 1_000  # fewer vectors than this cannot train useful IVF centroids and PQ codebooks
MANIFEST = "index.json"
INDEX_FILE = "index.faiss"
IDS_FILE = "ids.npy"


def choose_kind(n: int) -> str:
    """The index kind ``"auto"`` builds for ``n`` vectors (see the module docstring)."""
    if n < 0:
        raise ValueError(f"corpus size must be >= 0, got {n}")
    if n < FLAT_MAX:
        return "flat"
    return "hnsw" if n < HNSW_MAX else "ivfpq"


def ivfpq_params(n: int, dim: int) -> dict[str, int]:
    """IVF lists, PQ sub-quantizers and bits per code for ``n`` training vectors of width ``dim``.

    nlist ~ 4 sqrt(N) (the FAISS guideline) but at most N / 39, so each list gets the 39 training
    points k-means asks for; m is the largest divisor of D with at least 4 dims per sub-vector
    (PQ needs m | D); nbits is 8 when there are 256 x 39 points to train each codebook, fewer below.
    """
    if n < MIN_IVFPQ_TRAIN:
        raise ValueError(
            f"IVF-PQ needs at least {MIN_IVFPQ_TRAIN} vectors to train, got {n}: "
            "use kind='flat' or 'hnsw' for a corpus this small"
        )
    nlist = max(1, min(int(4 * math.sqrt(n)), n // 39))
    m = max(d for d in range(1, dim + 1) if dim % d == 0 and dim // d >= 4) if dim >= 4 else 1
    nbits = int(min(8, max(4, math.floor(math.log2(n / 39)))))
    return {"nlist": nlist, "m": m, "nbits": nbits}


def gpu_available() -> bool:
    """Whether this FAISS build has GPU support and sees a GPU."""
    try:
        return hasattr(faiss, "StandardGpuResources") and faiss.get_num_gpus() > 0
    except Exception:  # a CPU build may lack the symbol or fail to query CUDA
        return False


class VectorIndex:
    """A FAISS inner-product index with external integer ids and a JSON manifest.

    Args:
        dim: vector width D.
        kind: ``"flat"``, ``"hnsw"``, ``"ivfpq"`` or ``"auto"`` (chosen from ``expected_size`` or,
            if not given, the size of the first ``add``).
        model_id: id of the embedding model that made the vectors (recorded in the manifest).
        expected_size: corpus size for ``kind="auto"`` when vectors arrive in several batches.
        hnsw_m: neighbours per HNSW node.
        ef_construction: HNSW build breadth. 128 rather than FAISS's 40: on 1M clustered 384-d vectors
            the graph built with 40 levels off at recall@10 0.935 whatever ``ef_search`` is, while 128
            reaches 0.99 at ef_search=32 (build 3.8x slower; ``fathom bench retrieval`` measures it).
        ef_search: HNSW search breadth.
        nprobe: IVF lists visited per query (default nlist / 4).
        use_gpu: move the index to the GPU (default: when ``gpu_available()``).
    """

    def __init__(
        self,
        dim: int,
        kind: IndexKind = "auto",
        *,
        model_id: str | None = None,
        expected_size: int | None = None,
        hnsw_m: int = 32,
        ef_construction: int = 128,
        ef_search: int = 64,
        nprobe: int | None = None,
        use_gpu: bool | None = None,
    ) -> None:
        if not isinstance(dim, int) or isinstance(dim, bool) or dim < 1:
            raise ValueError(f"VectorIndex dim must be a positive integer, got {dim!r}")
        if kind not in (*KINDS, "auto"):
            raise ValueError(f"unknown index kind {kind!r}; choose one of auto, {', '.join(KINDS)}")
        self.dim = dim
        self.kind = choose_kind(expected_size) if kind == "auto" and expected_size is not None else kind
        self.model_id = model_id
        self.hnsw_m = hnsw_m
        self.ef_construction = ef_construction
        self.ef_search = ef_search
        self.nprobe = nprobe
        self.use_gpu = gpu_available() if use_gpu is None else use_gpu
        self.params: dict[str, Any] = {}
        self._index: Any = None
        self._ids = np.empty(0, dtype=np.int64)
        self.created = datetime.now(UTC).isoformat(timespec="seconds")

    def __len__(self) -> int:
        return int(self._ids.shape[0])

    @property
    def ids(self) -> np.ndarray:
        """External ids in insertion order. Shapes: ``(N,)`` int64."""
        return self._ids.copy()

    def add(self, vectors: np.ndarray, ids: np.ndarray | list[int]) -> None:
        """Add vectors under external ids (IVF-PQ trains on the first batch).

        Args:
            vectors: ``(N, D)`` float, finite; unit rows expected.
            ids: ``(N,)`` integers, unique and not yet in the index.
        """
        vectors = self._check_vectors(vectors, "vectors")
        ids_arr = np.asarray(ids)
        if ids_arr.ndim != 1 or ids_arr.shape[0] != vectors.shape[0]:
            raise ValueError(
                f"ids must be 1-D with one id per vector ({vectors.shape[0]}), got {ids_arr.shape}"
            )
        if ids_arr.size and not np.issubdtype(ids_arr.dtype, np.integer):
            raise ValueError(f"ids must be integers, got dtype {ids_arr.dtype}")
        ids_arr = ids_arr.astype(np.int64)
        if np.unique(ids_arr).size != ids_arr.size:
            raise ValueError("ids repeat within this batch")
        clash = np.intersect1d(ids_arr, self._ids)
        if clash.size:
            raise ValueError(f"ids already in the index: {clash[:5].tolist()}")
        if vectors.shape[0] == 0:
            return
        if self._index is None:
            self._index = self._build(vectors)
        self._index.add(vectors)
        self._ids = np.concatenate([self._ids, ids_arr])

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k best vectors per query by inner product.

        Args:
            queries: ``(Q, D)`` float, or ``(D,)`` for one query.
            k: results per query, >= 1.

        Shapes:
            returns scores ``(Q, k')`` float32 (best first) and ids ``(Q, k')`` int64,
            ``k' = min(k, len(self))``; unfilled slots have id -1 and score -inf.
        """
        if not isinstance(k, int) or isinstance(k, bool) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        queries = np.asarray(queries)
        if queries.ndim == 1:
            queries = queries[None, :]
        queries = self._check_vectors(queries, "queries")
        k_eff = min(k, len(self))
        if k_eff == 0:
            return np.empty((queries.shape[0], 0), np.float32), np.empty((queries.shape[0], 0), np.int64)
        scores, positions = self._index.search(queries, k_eff)  # (Q, k'), (Q, k')
        found = positions >= 0
        ids = np.where(found, self._ids[np.clip(positions, 0, None)], -1)
        scores = np.where(found, scores, -np.inf).astype(np.float32)
        return scores, ids.astype(np.int64)

    def manifest(self) -> dict[str, Any]:
        return {
            "embedding_model_id": self.model_id,
            "dimension": self.dim,
            "index_kind": self.kind,
            "document_count": len(self),
            "created": self.created,
            "faiss_version": faiss.__version__,
            "params": self.params,
        }

    def save(self, directory: str | Path) -> Path:
        """Write ``index.faiss``, ``ids.npy`` and the manifest ``index.json`` into ``directory``."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        if self._index is not None:
            cpu_index = faiss.index_gpu_to_cpu(self._index) if self._on_gpu() else self._index
            faiss.write_index(cpu_index, str(directory / INDEX_FILE))
        np.save(directory / IDS_FILE, self._ids)
        (directory / MANIFEST).write_text(json.dumps(self.manifest(), indent=2, sort_keys=True) + "\n")
        return directory

    @classmethod
    def load(
        cls,
        directory: str | Path,
        *,
        embedder_model_id: str | None = None,
        dimension: int | None = None,
        use_gpu: bool | None = None,
    ) -> VectorIndex:
        """Read an index saved by ``save``, refusing one built by another embedding model.

        Args:
            directory: the folder given to ``save``.
            embedder_model_id: id of the embedder that will make query vectors; must match.
            dimension: width of those query vectors; must match.
        """
        directory = Path(directory)
        manifest_path = directory / MANIFEST
        if not manifest_path.is_file():
            raise FileNotFoundError(f"no index manifest {str(manifest_path)!r}")
        manifest = json.loads(manifest_path.read_text())
        built_id, built_dim = manifest.get("embedding_model_id"), manifest.get("dimension")
        if embedder_model_id is not None and built_id != embedder_model_id:
            raise ValueError(
                f"index in {str(directory)!r} was built with embedding model {built_id!r}, "
                f"but the embedder is {embedder_model_id!r}: rebuild the index with this model"
            )
        if dimension is not None and built_dim != dimension:
            raise ValueError(
                f"index in {str(directory)!r} holds {built_dim}-d vectors from {built_id!r}, "
                f"but the embedder makes {dimension}-d vectors: rebuild the index with this model"
            )
        index = cls(int(built_dim), manifest["index_kind"], model_id=built_id, use_gpu=use_gpu)
        index.params = dict(manifest.get("params", {}))
        index.created = manifest.get("created", index.created)
        index._ids = np.load(directory / IDS_FILE).astype(np.int64)
        if (directory / INDEX_FILE).is_file():
            cpu_index = faiss.read_index(str(directory / INDEX_FILE))
            index._tune(cpu_index)  # before the GPU copy, which takes nprobe from the CPU index
            index._index = index._to_device(cpu_index)
        if index._index is not None and index._index.ntotal != len(index._ids):
            raise ValueError(
                f"index in {str(directory)!r} is inconsistent: {index._index.ntotal} vectors, "
                f"{len(index._ids)} ids"
            )
        return index

    def _build(self, first: np.ndarray) -> Any:
        n = first.shape[0]
        if self.kind == "auto":
            self.kind = choose_kind(n)
        if self.kind == "flat":
            index = faiss.IndexFlatIP(self.dim)
            self.params = {}
        elif self.kind == "hnsw":
            index = faiss.IndexHNSWFlat(self.dim, self.hnsw_m, faiss.METRIC_INNER_PRODUCT)
            index.hnsw.efConstruction = self.ef_construction
            self.params = {
                "hnsw_m": self.hnsw_m,
                "ef_construction": self.ef_construction,
                "ef_search": self.ef_search,
            }
        else:
            p = ivfpq_params(n, self.dim)
            quantizer = faiss.IndexFlatIP(self.dim)
            index = faiss.IndexIVFPQ(
                quantizer, self.dim, p["nlist"], p["m"], p["nbits"], faiss.METRIC_INNER_PRODUCT
            )
            # ivfpq_params sized nlist/nbits to the data; FAISS would still warn about the few
            # smallest codebooks, which says nothing the choice of parameters did not.
            index.cp.min_points_per_centroid = 1
            index.pq.cp.min_points_per_centroid = 1
            index.train(first)
            self.params = {**p, "nprobe": self.nprobe or max(1, p["nlist"] // 4)}
        log.info("built %s index (dim %d) for %d vectors %s", self.kind, self.dim, n, self.params)
        self._tune(index)
        return self._to_device(index)

    def _tune(self, index: Any) -> None:
        if self.kind == "hnsw":
            faiss.downcast_index(index).hnsw.efSearch = int(self.params.get("ef_search", self.ef_search))
        elif self.kind == "ivfpq":
            faiss.extract_index_ivf(index).nprobe = int(self.params.get("nprobe", 1))

    def _to_device(self, index: Any) -> Any:
        if not self.use_gpu or self.kind == "hnsw" or not gpu_available():
            return index
        try:
            gpu_index = faiss.index_cpu_to_all_gpus(index)
        except RuntimeError as err:  # e.g. PQ code sizes the GPU kernels do not implement
            log.warning("keeping the %s index on the CPU: FAISS GPU refused it (%s)", self.kind, err)
            return index
        log.info("moved the %s index to %d GPU(s)", self.kind, faiss.get_num_gpus())
        return gpu_index

    def _on_gpu(self) -> bool:
        return self._index is not None and "Gpu" in type(self._index).__name__

    def _check_vectors(self, vectors: np.ndarray, name: str) -> np.ndarray:
        arr = np.asarray(vectors)
        if arr.ndim != 2 or arr.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (N, {self.dim}), got {arr.shape}")
        if not np.issubdtype(arr.dtype, np.number):
            raise ValueError(f"{name} must be numeric, got dtype {arr.dtype}")
        arr = np.ascontiguousarray(arr, dtype=np.float32)
        if not np.isfinite(arr).all():
            raise ValueError(f"{name} contain NaN or infinite values")
        return arr
