"""Nearest neighbours in an output folder (or a :class:`~.vectors.VectorSet`): cosine similarity.

>>> for r in search("out/", ["out-photo.jpg", "/new/query.png", vector], k=5):
...     print(r.query, [(h.rank, h.path, round(h.score, 3)) for h in r.results])

A query is

- a **vector** (1-d array of the output's width, or a row of a 2-d array of queries);
- a **path the output holds** (as given or made absolute, the form outputs store): its stored
  vector is used, nothing is decoded;
- any other **image** (a file, bytes, a PIL image): embedded with the output's own model
  (:func:`~imgbeddings.analysis.query.embedder_for`, or ``embedder=``, checked to make vectors
  comparable with the output's; :class:`~imgbeddings.errors.ModelMismatch` otherwise).

A query that cannot be read (missing file, undecodable image) gets a result with ``error`` set
(an :class:`~imgbeddings.errors.InputError`) and no hits; the others are answered.

Scores are cosines (vectors are L2-normalised before comparing). Hits are ordered by score,
highest first, then by path, so equal scores always come out in the same order; exact search
also picks by path among equal scores at the k-th place. An output's index
(:mod:`imgbeddings.analysis.index`) is used when it is current; otherwise the search is exact,
with memory that does not grow with the output: its shards are read one at a time (or a current
``embeddings.npy`` is memory-mapped) and scored in blocks of at most ~:data:`BLOCK_BYTES`, keeping
a running top-k (:class:`TopK`).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..errors import ImageNotFound, InputError, ModelMismatch, OptionError, OutputError, describe
from ..shards import NPY, Changed
from .vectors import VectorSet, l2_rows

if TYPE_CHECKING:
    from ..embedder import Embedder
    from .index import Index, OutputRows

#: Bytes of stored rows plus scores that exact search holds at once.
BLOCK_BYTES = 64 << 20


@dataclass(frozen=True)
class Hit:
    """One neighbour: ``rank`` (1 = most similar), its ``path``, and the cosine ``score``."""

    rank: int
    path: str
    score: float


@dataclass(frozen=True)
class SearchResult:
    """The neighbours of one query.

    Attributes:
        query: the query as given (a path), or a short description of a vector or image object.
        results: the hits, best first (empty when the query failed, or the output is empty).
        error: why the query could not be read (an :class:`InputError`), else None.
        source: how the query was read: ``"stored"`` (a path the output holds: its stored
            vector), ``"image"`` (embedded now), or ``"vector"``.
        method: ``"exact"``, or the kind of index that answered (``flat``, ``hnsw``, ``ivf-flat``,
            ``ivf-pq``).
    """

    query: str
    results: list[Hit] = field(default_factory=list)
    error: InputError | None = None
    source: str = "vector"
    method: str = "exact"

    @property
    def ok(self) -> bool:
        return self.error is None

    def to_json(self) -> dict[str, Any]:
        """A JSON-ready dict: ``{"query": ..., "results": [{"rank": 1, "path": ..., "score": 0.97},
        ...]}``, plus ``"error": {"type": ..., "message": ...}`` for a query that failed.
        Scores are rounded to 6 decimals."""
        data: dict[str, Any] = {
            "query": self.query,
            "results": [{"rank": h.rank, "path": h.path, "score": round(h.score, 6)} for h in self.results],
        }
        if self.error is not None:
            data["error"] = {"type": type(self.error).__name__, "message": self.error.reason}
        return data


class TopK:
    """The running ``k`` best rows for a batch of unit query vectors, fed block by block.

    Order: score descending, then a tie key: ``ranks()[id]`` when ``ranks`` is given (e.g. the
    rank of each row's path, so equal scores are picked by path), else the id. ``ranks`` is called
    only if two candidates tie at the k-th place, which real vectors almost never do.
    """

    def __init__(self, queries: np.ndarray, k: int, ranks: Callable[[], np.ndarray] | None = None) -> None:
        self.queries = np.ascontiguousarray(queries, dtype=np.float32)
        self.k = k
        self._ranks_of = ranks
        self._ranks: np.ndarray | None = None
        n = len(self.queries)
        self.scores = np.empty((n, 0), np.float32)
        self.ids = np.empty((n, 0), np.int64)

    def _keys(self, ids: np.ndarray, *, need: bool = False) -> np.ndarray:
        if need and self._ranks is None and self._ranks_of is not None:
            self._ranks = self._ranks_of()
        return ids if self._ranks is None else self._ranks[ids]

    def _best(self, scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
        """Positions of the k best of each row of (scores, ids), in order."""
        order = np.lexsort((self._keys(ids), -scores), axis=1)
        ranked = np.take_along_axis(scores, order, 1)
        if order.shape[1] > k and np.any(ranked[:, k - 1] == ranked[:, k]):
            order = np.lexsort((self._keys(ids, need=True), -scores), axis=1)  # a tie at the cut
        return order[:, :k]

    def add(self, rows: np.ndarray, ids: np.ndarray) -> None:
        """Score a block of unit rows (their ``ids``) against every query and keep the best."""
        if not len(rows) or not len(self.queries) or self.k < 1:
            return
        ids = np.asarray(ids, np.int64)
        scores = self.queries @ np.asarray(rows, np.float32).T
        n, width = scores.shape
        k = min(self.k, width)
        if k < width:
            part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
            kth = np.take_along_axis(scores, part, 1).min(axis=1)
            kept = (np.take_along_axis(scores, part, 1) == kth[:, None]).sum(1)
            ties = (scores == kth[:, None]).sum(1) > kept
            for q in np.nonzero(ties)[0]:  # rows tied with the k-th left out: choose among them by key
                cand = np.nonzero(scores[q] >= kth[q])[0]
                keys = self._keys(ids[cand], need=True)
                part[q] = cand[np.lexsort((keys, -scores[q, cand]))[:k]]
        else:
            part = np.broadcast_to(np.arange(width), (n, width))
        merged_scores = np.concatenate([self.scores, np.take_along_axis(scores, part, 1)], 1)
        merged_ids = np.concatenate([self.ids, ids[part]], 1)
        best = self._best(merged_scores, merged_ids, self.k)
        self.scores = np.take_along_axis(merged_scores, best, 1)
        self.ids = np.take_along_axis(merged_ids, best, 1)


def path_ranks(paths: Sequence[str]) -> np.ndarray:
    """Each path's position in sorted order (the tie key for equal scores)."""
    ranks = np.empty(len(paths), np.int64)
    ranks[sorted(range(len(paths)), key=paths.__getitem__)] = np.arange(len(paths))
    return ranks


def exact_search(
    queries: np.ndarray, vectors: np.ndarray, k: int, paths: Sequence[str] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` rows of ``vectors`` most similar (cosine) to each query, exactly: (scores, rows),
    each (len(queries), min(k, N)), best first; equal scores ordered by ``paths`` (else by row).
    ``vectors`` is read in blocks of about :data:`BLOCK_BYTES` (L2-normalised block by block), so
    a memory-mapped matrix is never loaded whole."""
    unit = l2_rows(np.atleast_2d(queries))
    n, dim = vectors.shape
    top = TopK(unit, min(k, n), (lambda: path_ranks(paths)) if paths is not None else None)
    step = max(256, BLOCK_BYTES // (4 * (dim + max(len(unit), 1))))
    for start in range(0, n, step):
        top.add(l2_rows(vectors[start : start + step]), np.arange(start, min(start + step, n)))
    return top.scores, top.ids


# --- queries ----------------------------------------------------------------------------------


@dataclass
class _Query:
    label: str
    source: str
    item: Any = None  # what to embed (source "image") or the stored path (source "stored")
    vector: np.ndarray | None = None
    error: InputError | None = None


def _as_list(queries: Any) -> list[Any]:
    if isinstance(queries, np.ndarray):
        return list(queries) if queries.ndim == 2 else [queries]
    if isinstance(queries, (str, bytes, os.PathLike)) or not isinstance(queries, (list, tuple)):
        return [queries]
    return list(queries)


def _is_vector(item: Any) -> bool:
    if isinstance(item, np.ndarray):
        return item.ndim == 1 and item.dtype.kind in "fiu"
    numbers = isinstance(item, (list, tuple)) and all(isinstance(x, (int, float)) for x in item)
    return numbers and len(item) > 0


def _classify(items: list[Any], dim: int, holds: Callable[[str], str | None]) -> list[_Query]:
    """Each query as a vector, a stored path, or an image to embed (``holds(path)`` gives the
    stored form of a path the output holds, else None)."""
    from ..inputs import canonical_path

    found = []
    for i, item in enumerate(items):
        if _is_vector(item):
            vector = np.asarray(item, np.float32)
            if vector.shape != (dim,):
                raise OptionError(f"query #{i} is a {vector.shape[0]}-d vector, the vectors searched {dim}-d")
            if not np.all(np.isfinite(vector)):
                raise OptionError(f"query #{i} has NaN or infinite values")
            found.append(_Query(f"<vector #{i}>", "vector", vector=vector))
        elif isinstance(item, (str, os.PathLike)):
            text = os.fspath(item)
            if isinstance(text, bytes):
                text = os.fsdecode(text)
            stored = holds(text) or holds(canonical_path(text))
            if stored is not None:
                found.append(_Query(text, "stored", item=stored))
            elif os.path.lexists(text):
                found.append(_Query(text, "image", item=text))
            else:
                reason = "not in the output, and no such file"
                found.append(_Query(text, "image", error=ImageNotFound(text, reason, i)))
        else:
            found.append(_Query(describe(item), "image", item=item))
    return found


def _check_embedder(embedder: Embedder, manifest: dict[str, Any], where: str) -> None:
    """Refuse an embedder whose vectors are not comparable with the searched ones."""
    from ..shards import identity_of
    from ..store import describe_mismatch

    if manifest.get("fingerprint") is None:
        return
    theirs = identity_of(manifest)
    if embedder.identity() != theirs:
        message = describe_mismatch(where, theirs, embedder.identity())  # type: ignore[arg-type]
        raise ModelMismatch(message + " Pass the model (and PCA) the output was made with.")


def _embed(queries: list[_Query], embedder: Embedder) -> None:
    """Embed the image queries in place: a vector, or an InputError, for each."""
    todo = [q for q in queries if q.source == "image" and q.error is None]
    if not todo:
        return
    batch = embedder.embed_with_failures([q.item for q in todo])
    failures = {f.index: f for f in batch.failures}
    for i, q in enumerate(todo):
        if batch.ok[i]:
            q.vector = batch.vectors[i]
        else:
            failure = failures.get(i)
            q.error = failure.to_error() if failure else InputError(q.label, "could not be embedded")


# --- search -----------------------------------------------------------------------------------


def _results(
    queries: list[_Query], hits: list[list[tuple[str, float]]], k: int, exclude_self: bool, method: str
) -> list[SearchResult]:
    out = []
    answered = iter(hits)
    for q in queries:
        if q.error is not None:
            out.append(SearchResult(q.label, [], q.error, q.source, method))
            continue
        found = next(answered)
        if exclude_self and q.source == "stored":
            found = [(p, s) for p, s in found if p != q.item]
        found = sorted(found, key=lambda h: (-h[1], h[0]))[:k]
        ranked = [Hit(r, p, float(s)) for r, (p, s) in enumerate(found, 1)]
        out.append(SearchResult(q.label, ranked, None, q.source, method))
    return out


class _InMemory:
    """Exact search over a VectorSet (its matrix may be a memory map: read block by block)."""

    method = "exact"

    def __init__(self, vs: VectorSet) -> None:
        self.vs, self.manifest, self.dim = vs, vs.manifest, vs.dim
        self._rows = vs.index_of()

    def __contains__(self, path: object) -> bool:
        return path in self._rows

    def vectors_of(self, paths: list[str]) -> np.ndarray:
        return l2_rows(np.asarray(self.vs.vectors[[self._rows[p] for p in paths]], np.float32))

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        scores, rows = exact_search(queries, self.vs.vectors, k, self.vs.paths)
        paths = self.vs.paths
        return [
            [(paths[r], s) for r, s in zip(rr, ss, strict=True)]
            for rr, ss in zip(rows.tolist(), scores.tolist(), strict=True)
        ]


class _Streamed:
    """Exact search over an output's shards, one shard at a time (memory: one shard's vectors,
    the paths, and the running top-k), as listed when the search started."""

    method = "exact"

    def __init__(self, rows: OutputRows) -> None:
        self.rows, self.manifest, self.dim = rows, rows.manifest, rows.dim
        self._where = {
            key[0]: (i, row)
            for i, (rows_, keys) in enumerate(zip(rows.rows, rows.keys, strict=True))
            for row, key in zip(rows_, keys, strict=True)
        }

    def __contains__(self, path: object) -> bool:
        return path in self._where

    def _changed(self) -> OutputError:
        return OutputError(
            f"{self.rows.out} changed while being searched (a run is writing it): search again"
        )

    def vectors_of(self, paths: list[str]) -> np.ndarray:
        found = np.zeros((len(paths), self.dim), np.float32)
        by_shard: dict[int, list[int]] = {}
        for i, p in enumerate(paths):
            by_shard.setdefault(self._where[p][0], []).append(i)
        for shard, wanted in by_shard.items():
            try:
                found[wanted] = self.rows.vectors(shard, [self._where[paths[i]][1] for i in wanted])
            except Changed:
                raise self._changed() from None
        return found

    def search(self, queries: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
        paths = self.rows.paths()
        top = TopK(queries, min(k, len(paths)), lambda: path_ranks(paths))
        start = 0
        for shard, rows in enumerate(self.rows.rows):
            if rows:
                try:
                    top.add(self.rows.vectors(shard), np.arange(start, start + len(rows)))
                except Changed:
                    raise self._changed() from None
            start += len(rows)
        return [
            [(paths[r], s) for r, s in zip(rr, ss, strict=True)]
            for rr, ss in zip(top.ids.tolist(), top.scores.tolist(), strict=True)
        ]


def search(
    target: VectorSet | str | os.PathLike[str],
    queries: Any,
    k: int = 10,
    *,
    exclude_self: bool = False,
    index: Index | bool | None = None,
    embedder: Embedder | None = None,
) -> list[SearchResult]:
    """The ``k`` nearest stored vectors of each query (see the module doc for what a query may be).

    Args:
        target: an output folder, or a :class:`VectorSet`.
        queries: one query, a list of them, or a 2-d array of query vectors.
        k: hits per query (fewer when fewer vectors are stored).
        exclude_self: leave a stored-path query's own row out of its hits.
        index: None: use the output's index when it is current, else search exactly; False: always
            exact; True: the index must be current (raises :class:`OutputError` otherwise); or an
            :class:`~imgbeddings.analysis.index.Index` from ``open_index``.
        embedder: embeds image queries (default: the output's own model, via ``embedder_for``;
            required for image queries against a VectorSet). Must match the output's identity.

    Exact search on an output folder reads its shards one at a time (or memory-maps a current
    ``embeddings.npy``), so memory does not grow with the output.

    Raises :class:`OptionError` for a bad ``k`` or a vector query of the wrong width, and
    :class:`~imgbeddings.errors.ModelMismatch` for an embedder that does not fit the output.
    """
    if k < 1:
        raise OptionError(f"k must be >= 1, got {k}")
    out = None if isinstance(target, VectorSet) else target
    backend = _backend(target, index)
    queries_ = _classify(_as_list(queries), backend.dim, lambda p: p if p in backend else None)
    where = str(out) if out is not None else "the vectors searched"
    if embedder is not None:  # checked even when no query needs it: a wrong one is a mistake
        _check_embedder(embedder, backend.manifest, where)
    if any(q.source == "image" and q.error is None for q in queries_):
        if embedder is None:
            if out is None:
                raise OptionError("image queries against a VectorSet need embedder= (or search the output)")
            from .query import embedder_for

            embedder = embedder_for(out)
            _check_embedder(embedder, backend.manifest, where)
        _embed(queries_, embedder)
    stored = [q for q in queries_ if q.source == "stored"]
    if stored:
        for q, vector in zip(stored, backend.vectors_of([q.item for q in stored]), strict=True):
            q.vector = vector
    live = [q for q in queries_ if q.error is None]
    matrix = np.stack([q.vector for q in live]) if live else np.empty((0, backend.dim), np.float32)
    hits = backend.search(l2_rows(matrix), k + (1 if exclude_self else 0)) if live else []
    return _results(queries_, hits, k, exclude_self, backend.method)


def _backend(target: VectorSet | str | os.PathLike[str], index: Index | bool | None) -> Any:
    """What answers: the output's index, the VectorSet, or the output's shards streamed."""
    if isinstance(target, VectorSet):
        if index is True:
            raise OptionError("index=True needs an output folder, not a VectorSet")
        return _InMemory(target)
    if index is not None and index is not True and index is not False:
        return index
    from .index import check_index, open_index, read_rows

    if index is not False:
        try:
            found = open_index(target)
        except ImportError:  # an index but no faiss here: exact search still works
            found = None
        if found is not None:
            return found
        if index is True:
            raise OutputError(f"{target}: no current index ({check_index(target).reason})")
    if (Path(target) / NPY).is_file():  # memory-mapped when current
        return _InMemory(VectorSet.from_output(target))
    return _Streamed(read_rows(target))


def search_text(
    target: VectorSet | str | os.PathLike[str],
    texts: str | Sequence[str],
    k: int = 10,
    *,
    text_model: Any = None,
    index: Index | bool | None = None,
) -> list[SearchResult]:
    """The ``k`` stored images nearest to each text (``"a dog on a beach"``): text -> image search.

    Args:
        target: an output folder, or a :class:`VectorSet` (then ``text_model`` is required).
        texts: one string or a list of them.
        text_model: a :class:`~imgbeddings.text.embedder.TextEmbedder` or where to load one (an
            export folder, text card, ``text_model.onnx`` or Hub repo); default: the text tower
            exported beside the output's image model
            (:func:`~imgbeddings.text.embedder.text_model_for`).
        index: as for :func:`search`.

    Results have ``source="text"`` and the text as ``query``. Raises
    :class:`~imgbeddings.errors.ModelMismatch` when the output's image model is not the text
    model's pair, :class:`~imgbeddings.errors.ModelNotFound` when there is no text model.
    """
    from ..text.embedder import TextEmbedder, text_model_for

    items = [texts] if isinstance(texts, str) else list(texts)
    if k < 1:
        raise OptionError(f"k must be >= 1, got {k}")
    if isinstance(target, VectorSet):
        if text_model is None:
            raise OptionError("text search of a VectorSet needs text_model= (or search the output folder)")
        manifest, where = target.manifest, target.origin or "the vectors searched"
    else:
        from ..store import read_manifest

        manifest, where = read_manifest(target), str(target)
        if text_model is None:
            text_model = text_model_for(target)
    if not isinstance(text_model, TextEmbedder):
        text_model = TextEmbedder(text_model)
    if manifest:
        text_model.check_pair(manifest, where)
    if not items:
        return []
    results = search(target, text_model.embed(items), k, index=index)
    return [
        SearchResult(text, r.results, r.error, "text", r.method)
        for text, r in zip(items, results, strict=True)
    ]
