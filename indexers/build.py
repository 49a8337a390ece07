"""The batch job that turns a corpus into one index directory, atomically and resumably.

Layout of the result (DESIGN.md section 2): ``docs.sqlite``, ``bm25/``, ``sparse/``, ``dense/`` and
``manifest.json``. Everything is written into ``<out>.building`` first; ``manifest.json`` is written
last, and only then is the directory renamed into place (the previous index is renamed aside first
and deleted after), so a crash or Ctrl-C never leaves a half-written index at ``<out>``. A crash
between the two renames is repaired by the next build.

Stages run in order, each streaming the corpus again (parsing is cheap next to encoding), so memory
stays bounded: docstore -> bm25 -> sparse encode -> sparse index -> dense encode -> dense index.
Encoders write numbered shards of ``shard_size`` documents atomically under ``checkpoints/``; with
``resume=True`` a killed build keeps every finished stage and shard and continues after them.
Because each shard is one unit of encoding (same documents, same batches) and the index builds are
seeded or single-threaded, a resumed build writes the same bytes as an uninterrupted one, except
for the Lucene index, whose segment files carry random ids and timestamps (a bm25 stage that
finished before the crash is kept as it is).
"""
from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from datetime import datetime, timezone
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from trident_search.errors import TridentError
from trident_search.indexers.checkpoint import ShardStore, fsync_dir, write_atomic
from trident_search.indexers.corpus import CorpusReport, Document, corpus_file, iter_corpus
from trident_search.indexers.dense import DenseIndex, default_factory
from trident_search.indexers.docstore import DocStore
from trident_search.indexers.manifest import MANIFEST, Manifest, file_table
from trident_search.indexers.progress import Progress, StageTicker

log = logging.getLogger(__name__)

RETRIEVERS = ("bm25", "sparse", "dense")
DOCSTORE = "docs.sqlite"
STATE = "build-state.json"
CHECKPOINTS = "checkpoints"
DEMO_CORPUS = Path(__file__).resolve().parent.parent / "data" / "demo" / "scifact-demo"


class BuildError(TridentError, RuntimeError):
    """A build that cannot start or continue; the message says what to change."""


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """Every build parameter; all of it is recorded in the manifest.

    ``shard_size`` documents form one encoding checkpoint. ``dense_factory=None`` picks ``Flat`` up
    to 200k documents and ``HNSW32`` beyond. ``sparse_params`` are ``SparseParams`` fields.
    """

    retrievers: tuple[str, ...] = RETRIEVERS
    device: str = "auto"
    batch_size: int = 32
    max_length: int = 256
    shard_size: int = 4096
    encoder_threads: int | None = None
    bm25_fields: str = "flat"
    bm25_threads: int = 2
    sparse_model: str | None = None
    sparse_doc_top_k: int | None = None
    sparse_params: dict[str, Any] = field(default_factory=dict)
    dense_model: str | None = None
    dense_factory: str | None = None
    dense_ef_construction: int | None = None

    def __post_init__(self) -> None:
        unknown = [r for r in self.retrievers if r not in RETRIEVERS]
        if unknown or not self.retrievers:
            raise BuildError(
                f"retrievers must be a non-empty subset of {', '.join(RETRIEVERS)}; got "
                f"{', '.join(self.retrievers) or 'none'}"
            )
        for name in ("batch_size", "max_length", "shard_size", "bm25_threads"):
            if getattr(self, name) < 1:
                raise BuildError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise BuildError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        if "sparse" in self.retrievers:
            self.sparse_index_params()  # fail before any work on a bad sparse parameter

    def sparse_index_params(self) -> Any:
        """``SparseParams`` from ``sparse_params``; unknown names are an error listing the valid ones."""
        from trident_search.indexers.sparse import SparseIndexError, SparseParams

        valid = [f.name for f in fields(SparseParams)]
        unknown = sorted(set(self.sparse_params) - set(valid))
        if unknown:
            raise BuildError(f"unknown sparse parameters {unknown}; valid: {', '.join(valid)}")
        try:
            return SparseParams(**self.sparse_params)
        except (SparseIndexError, TypeError) as exc:
            raise BuildError(str(exc)) from None

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["retrievers"] = list(self.retrievers)
        return data


@dataclass(frozen=True, slots=True)
class Encoded:
    """Document encodings made outside this job (the sharded build's Ray Data workers).

    ``blocks`` yields row blocks (dense arrays or CSR) in corpus order; ``model`` is what the
    manifest records for the encoder (name, revision, dim | vocab_size).
    """

    model: dict[str, Any]
    blocks: Callable[[], Iterable[np.ndarray | sp.csr_matrix]]


def make_encoder(cfg: BuildConfig, kind: str) -> tuple[Any, dict[str, Any]]:
    """The document encoder ``cfg`` asks for, and the model info the manifest records for it."""
    common = dict(
        device=cfg.device, max_length=cfg.max_length, batch_size=cfg.batch_size, threads=cfg.encoder_threads
    )
    if kind == "sparse":
        from trident_search.encoders.sparse import SparseEncoder

        enc = SparseEncoder(cfg.sparse_model, doc_top_k=cfg.sparse_doc_top_k, **common)
        return enc, {"name": enc.name, "revision": enc.revision, "vocab_size": enc.vocab_size}
    from trident_search.encoders.dense import DenseEncoder

    enc = DenseEncoder(cfg.dense_model, **common)
    return enc, {"name": enc.name, "revision": enc.revision, "dim": enc.dim}


# -- the job ---------------------------------------------------------------------------------------
def build_index(
    corpus: str | Path,
    out: str | Path,
    config: BuildConfig | None = None,
    *,
    resume: bool = False,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    encoded: dict[str, Encoded] | None = None,
) -> Manifest:
    """Build the index directory ``out`` from ``corpus`` (BEIR folder or JSONL[.gz]).

    Without ``resume`` an unfinished build left at ``<out>.building`` is discarded; with it, the
    build continues there, provided it was started with the same corpus and settings.
    ``encoded`` supplies ready encodings per retriever ("sparse", "dense") instead of encoding here.
    """
    config = config or BuildConfig()
    progress = progress or Progress()
    with claimed_target(out, corpus) as (out, source):
        job = _Job(source, out, config, skip_invalid, progress, encoded or {})
        job.open(resume)
        manifest = job.run()
        _swap_in(job.work, out)
    log.info("index ready at %s: %d documents, retrievers %s", out, manifest.doc_count, manifest.retrievers)
    return manifest


def build_demo_index(out: str | Path = "indexes/demo", **kwargs: Any) -> Manifest:
    """Build the shipped 500-document scifact demo with default settings (``make demo-index``)."""
    return build_index(DEMO_CORPUS, out, **kwargs)


def work_dir(out: Path) -> Path:
    return out.with_name(out.name + ".building")


def old_dir(out: Path) -> Path:
    return out.with_name(out.name + ".old")


class _Job:
    """One build in its work directory; ``state`` persists what is done, for ``resume``."""

    def __init__(
        self,
        source: Path,
        out: Path,
        config: BuildConfig,
        skip_invalid: bool,
        progress: Progress,
        encoded: dict[str, Encoded],
    ) -> None:
        self.source = source
        self.config = config
        self.skip_invalid = skip_invalid
        self.progress = progress
        self.encoded = encoded
        self.work = work_dir(out)
        self.state: dict[str, Any] = {}

    # -- state ---------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {
            "corpus": str(self.source),
            "skip_invalid": self.skip_invalid,
            "config": self.config.to_dict(),
        }

    def open(self, resume: bool) -> None:
        state_file = self.work / STATE
        if self.work.exists() and resume:
            if (self.work / MANIFEST).is_file():
                log.info("resuming: %s is complete, installing it", self.work)
                return
            if state_file.is_file():
                state = json.loads(state_file.read_text())
                if state.get("identity") != self._identity():
                    raise BuildError(
                        f"the unfinished build in {self.work} was started with another corpus or "
                        "other settings; rerun with the same ones, or without --resume to start over"
                    )
                self.state = state
                log.info("resuming the build in %s (done: %s)", self.work, ", ".join(state["done"]) or "nothing")
                return
        if self.work.exists():
            log.warning("discarding the unfinished build in %s (use --resume to continue one)", self.work)
            shutil.rmtree(self.work)
        elif resume:
            log.info("nothing to resume at %s; starting a new build", self.work)
        self.work.mkdir(parents=True)
        self.state = {"identity": self._identity(), "done": [], "stages": {}, "models": {}}
        self._save_state()

    def _save_state(self) -> None:
        write_atomic(self.work / STATE, json.dumps(self.state, indent=2, sort_keys=True).encode())

    def _done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def _mark(self, stage: str) -> None:
        self.state["done"].append(stage)
        self.state["stages"].update(self.progress.stages)
        self._save_state()

    # -- stages --------------------------------------------------------------------------------
    def run(self) -> Manifest:
        if (self.work / MANIFEST).is_file():
            manifest = Manifest.load(self.work)
        else:
            self._docstore()
            retrievers = self.config.retrievers
            if "bm25" in retrievers:
                self._bm25()
            if "sparse" in retrievers:
                self._encode("sparse")
                self._sparse_index()
            if "dense" in retrievers:
                self._encode("dense")
                self._dense_index()
            manifest = self._manifest()
        shutil.rmtree(self.work / CHECKPOINTS, ignore_errors=True)
        (self.work / STATE).unlink(missing_ok=True)
        return manifest

    def docs(self, *, quiet: bool = True, report: CorpusReport | None = None) -> Iterator[Document]:
        """Stream the corpus again; records skipped by the first pass are not logged again."""
        with _quiet_corpus(quiet):
            yield from iter_corpus(self.source, skip_invalid=self.skip_invalid, report=report)

    @property
    def n_docs(self) -> int:
        return int(self.state["doc_count"])

    def _docstore(self) -> None:
        if self._done("docstore"):
            self._check_corpus_unchanged()
            return
        path = self.work / DOCSTORE
        for p in (path, path.with_name(DOCSTORE + "-wal"), path.with_name(DOCSTORE + "-shm")):
            p.unlink(missing_ok=True)
        report = CorpusReport()
        with self.progress.stage("docstore") as tick:
            with DocStore.create(path) as store:
                store.add(_ticking(self.docs(quiet=False, report=report), tick))
        if report.valid == 0:
            raise BuildError(f"{self.source} holds no valid documents")
        if report.skipped:
            log.warning("skipped %d invalid records (first: %s)", report.skipped, report.errors[0])
        self.state.update(
            doc_count=report.valid,
            fingerprint=report.fingerprint,
            skipped=report.skipped,
            skipped_examples=report.errors[:5],
        )
        self._mark("docstore")

    def _check_corpus_unchanged(self) -> None:
        report = CorpusReport()
        with self.progress.stage("verify corpus", total=self.n_docs) as tick:
            for _ in _ticking(self.docs(report=report), tick):
                pass
        if report.fingerprint != self.state["fingerprint"]:
            raise BuildError(
                f"{self.source} changed since the unfinished build began; rerun without --resume"
            )

    def _bm25(self) -> None:
        if self._done("bm25"):
            return
        from trident_search.indexers.bm25 import BM25Index

        partial, final = self.work / "bm25.partial", self.work / "bm25"
        for p in (partial, final):
            shutil.rmtree(p, ignore_errors=True)
        with self.progress.stage("bm25", total=self.n_docs) as tick:
            BM25Index.build(
                _ticking(self.docs(), tick),
                partial,
                fields=self.config.bm25_fields,
                threads=self.config.bm25_threads,
            )
        os.replace(partial, final)
        self._mark("bm25")

    def _encode(self, kind: str) -> None:
        """Encode every document into shards, skipping the shards a killed run already wrote."""
        stage = f"{kind} encode"
        if self._done(stage):
            return
        from trident_search.encoders.text import document_text

        shards = ShardStore(self.work / CHECKPOINTS / kind, kind)
        if kind in self.encoded:
            self._adopt(kind, shards)
            return
        size = self.config.shard_size
        n_shards = math.ceil(self.n_docs / size)
        first = shards.complete()
        # Timings of shards written by earlier (killed) runs, so the manifest reports the whole stage.
        earlier = self.state.setdefault("partial", {}).get(stage, {})
        if first < n_shards:
            encoder = self._encoder(kind)
            encode = encoder.encode_documents
            chunk = max(self.config.batch_size * 4, 64)
            with self.progress.stage(stage, total=self.n_docs - first * size) as tick:
                docs = islice(self.docs(), first * size, None)
                for i in range(first, n_shards):
                    texts = [document_text(d.title, d.text) for d in islice(docs, size)]
                    shards.write(i, _encode_by_length(encode, texts, chunk, kind, tick))
                    self.state["partial"][stage] = _add_timings(earlier, tick.timings())
                    self._save_state()
        elif kind not in self.state["models"]:
            self._encoder(kind)  # all shards exist but the model info was not saved: record it
        self.progress.stages[stage] = _add_timings(earlier, self.progress.stages.get(stage, {}))
        self._mark(stage)

    def _adopt(self, kind: str, shards: ShardStore) -> None:
        """Checkpoint encodings supplied by the caller as if this job had encoded them."""
        given = self.encoded[kind]
        with self.progress.stage(f"{kind} encode", total=self.n_docs) as tick:
            for i, block in enumerate(given.blocks()):
                shards.write(i, block)
                tick.update(block.shape[0])
        self.state["models"][kind] = dict(given.model)
        self._mark(f"{kind} encode")

    def _encoder(self, kind: str) -> Any:
        enc, info = make_encoder(self.config, kind)
        self.state["models"][kind] = info
        self._save_state()
        return enc

    def _sparse_index(self) -> None:
        if self._done("sparse index"):
            return
        from trident_search.indexers.sparse import SparseIndex

        params = self.config.sparse_index_params()
        shards = ShardStore(self.work / CHECKPOINTS / "sparse", "sparse")
        partial, final = self.work / "sparse.partial", self.work / "sparse"
        for p in (partial, final):
            shutil.rmtree(p, ignore_errors=True)
        with self.progress.stage("sparse index", total=self.n_docs) as tick:
            matrix = sp.vstack(list(shards), format="csr")
            _check_rows(matrix.shape[0], self.n_docs, "sparse")
            SparseIndex.build(matrix, params).save(partial)
            tick.update(matrix.shape[0])
        os.replace(partial, final)
        self.state["sparse_params"] = asdict(params)
        self._mark("sparse index")

    def _dense_index(self) -> None:
        if self._done("dense index"):
            return
        factory = self.config.dense_factory or default_factory(self.n_docs)
        shards = ShardStore(self.work / CHECKPOINTS / "dense", "dense")
        partial, final = self.work / "dense.partial", self.work / "dense"
        for p in (partial, final):
            shutil.rmtree(p, ignore_errors=True)
        dim = int(self.state["models"]["dense"]["dim"])
        with self.progress.stage("dense index", total=self.n_docs) as tick:
            # One thread: HNSW insertion order, hence the graph, is then reproducible.
            index = DenseIndex.build(
                _ticking_rows(shards, tick),
                dim,
                factory,
                ef_construction=self.config.dense_ef_construction,
                threads=1 if "HNSW" in factory else None,
            )
            _check_rows(len(index), self.n_docs, "dense")
            index.save(partial)
        os.replace(partial, final)
        self.state["dense_factory"] = factory
        self._mark("dense index")

    def _manifest(self) -> Manifest:
        retrievers = [r for r in RETRIEVERS if r in self.config.retrievers]
        params = self.config.to_dict()
        params["skip_invalid"] = self.skip_invalid
        if "sparse" in retrievers:
            params["sparse_params"] = self.state["sparse_params"]
        if "dense" in retrievers:
            params["dense_factory"] = self.state["dense_factory"]
        manifest = Manifest(
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            doc_count=self.n_docs,
            corpus={
                "path": str(self.source),
                "fingerprint": self.state["fingerprint"],
                "skipped": self.state["skipped"],
            },
            retrievers=retrievers,
            models={k: v for k, v in self.state["models"].items() if k in retrievers},
            params=params,
            files=file_table(self.work, [DOCSTORE, *retrievers]),
            stages=self.state["stages"],
        )
        manifest.write(self.work)
        return manifest


# -- encoding helpers ------------------------------------------------------------------------------
def _encode_by_length(
    encode: Callable[[list[str]], Any], texts: list[str], chunk: int, kind: str, tick: StageTicker
) -> np.ndarray | sp.csr_matrix:
    """Encode one shard in chunks of similar length (less padding), returned in corpus order.

    The chunks depend only on the shard's texts, so a resumed build encodes exactly the same
    batches as an uninterrupted one.
    """
    order = np.argsort([-len(t) for t in texts], kind="stable")
    parts = []
    for start in range(0, len(texts), chunk):
        idx = order[start : start + chunk]
        batch = [texts[j] for j in idx]
        began = time.perf_counter()
        parts.append(encode(batch))
        tick.model_seconds += time.perf_counter() - began
        tick.update(len(idx))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    if kind == "sparse":
        return sp.vstack(parts, format="csr")[inverse]
    return np.concatenate(parts)[inverse]


def _add_timings(a: dict[str, float], b: dict[str, float]) -> dict[str, float]:
    """Stage timings of two runs added up (docs, seconds, model_seconds), with docs/s recomputed."""
    total = {k: round(a.get(k, 0) + b.get(k, 0), 3) for k in ("docs", "seconds", "model_seconds")}
    total["docs_per_s"] = round(total["docs"] / total["seconds"], 1) if total["seconds"] > 0 else 0.0
    return total


def _ticking(docs: Iterable[Document], tick: StageTicker) -> Iterator[Document]:
    for doc in docs:
        yield doc
        tick.update(1)


def _ticking_rows(blocks: Iterable[np.ndarray], tick: StageTicker) -> Iterator[np.ndarray]:
    for block in blocks:
        yield block
        tick.update(len(block))


def _check_rows(got: int, want: int, what: str) -> None:
    if got != want:
        raise BuildError(f"{what}: {got} encoded documents but the docstore holds {want}; rebuild without --resume")


@contextmanager
def _quiet_corpus(quiet: bool) -> Iterator[None]:
    """Silence per-record skip warnings on passes after the first (they were logged once)."""
    logger = logging.getLogger("trident_search.indexers.corpus")
    before = logger.level
    if quiet:
        logger.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logger.setLevel(before)


# -- the directory swap ----------------------------------------------------------------------------
@contextmanager
def claimed_target(out: str | Path, corpus: str | Path) -> Iterator[tuple[Path, Path]]:
    """Resolve ``out`` and the corpus file, then hold ``out``'s build lock with any half-finished
    swap repaired and a non-index folder refused: what every build (single or sharded) starts with."""
    target = Path(out).resolve()
    source = corpus_file(corpus).resolve()
    target.parent.mkdir(parents=True, exist_ok=True)
    with _locked(target):
        recover(target)
        _check_target(target)
        yield target, source


@contextmanager
def _locked(out: Path) -> Iterator[None]:
    """One build per output directory at a time."""
    lock_path = out.with_name(f".{out.name}.lock")
    with open(lock_path, "w") as fh:
        try:
            fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BuildError(f"another build of {out} is running (lock {lock_path})") from None
        yield


def _check_target(out: Path) -> None:
    """Refuse to replace something that is not a Trident index (a user's folder, a file)."""
    if not out.exists():
        return
    if out.is_dir() and ((out / MANIFEST).is_file() or not any(out.iterdir())):
        return
    raise BuildError(f"{out} exists and is not a Trident index; remove it or choose another --out")


def _swap_in(work: Path, out: Path) -> None:
    """Rename the finished build into place; the previous index is renamed aside, then deleted."""
    old = old_dir(out)
    if out.exists():
        os.rename(out, old)
    os.rename(work, out)
    fsync_dir(out.parent)
    if old.exists():
        shutil.rmtree(old)


def recover(out: str | Path) -> None:
    """Repair a swap interrupted by a crash: finish it if the new index is whole, else undo it."""
    out = Path(out)
    old, work = old_dir(out), work_dir(out)
    if not old.exists():
        return
    if out.exists():
        log.info("removing the previous index left at %s", old)
    elif (work / MANIFEST).is_file():
        log.warning("finishing an interrupted swap: installing %s", work)
        os.rename(work, out)
    else:
        log.warning("restoring the previous index from %s", old)
        os.rename(old, out)
        return
    fsync_dir(out.parent)
    shutil.rmtree(old)

