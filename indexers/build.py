"""The batch job that turns a corpus into one index directory, atomically and resumably.

Layout of the result: ``docs.sqlite``, one folder per retriever (``bm25/``, ``sparse/``,
``dense/``, or any registered retriever's name) and ``manifest.json``. The list of retrievers and
how each one encodes and writes its part come from the registry
(:func:`trident_search.indexers.retriever.registered`); this job only orders, checkpoints and
records. Everything is written into ``<out>.building`` first; ``manifest.json`` is written last,
and only then is the directory published at ``<out>`` (:mod:`trident_search.indexers.publish`), so
a crash or Ctrl-C never leaves a half-written index at ``<out>``.

Stages run in order, each streaming the corpus again (parsing is cheap next to encoding), so memory
stays bounded: docstore, then for each retriever ``<name> encode`` (when it has a document encoder)
and ``<name> index`` (its :meth:`~trident_search.indexers.retriever.Retriever.write`). Encodings
are written as numbered shards of ``shard_size`` documents atomically under ``checkpoints/<name>/``;
with ``resume=True`` a killed build keeps every finished stage and shard and continues after them.
Because each shard is one unit of encoding (same documents, same batches) and the index builds are
seeded or single-threaded, a resumed build writes the same bytes as an uninterrupted one, except
for the Lucene index, whose segment files carry random ids and timestamps.

When the filesystem fails (full disk, read-only, permission), the job ends with a one-line
:class:`BuildError` and leaves nothing in ``<out>.building`` but the encoding checkpoints that
``--resume`` needs (none at all when nothing was encoded).
"""
from __future__ import annotations

import copy
import hashlib
import json
import logging
import math
import os
import shutil
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import islice
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from trident_search.indexers.checkpoint import ShardStore, write_atomic
from trident_search.indexers.corpus import CorpusError, CorpusReport, Document, iter_corpus
from trident_search.indexers.docstore import DocStore
from trident_search.indexers.manifest import MANIFEST, Manifest, file_table
from trident_search.indexers.progress import Progress, StageTicker
from trident_search.indexers.publish import (
    BuildError,
    claimed_target,
    describe_os_error,
    swap_in,
    work_dir,
)
from trident_search.indexers.retriever import BuildContext, DocumentEncoder, Retriever, registered

__all__ = ["DEFAULT_RETRIEVERS", "BuildConfig", "BuildError", "Encoded", "build_index"]

log = logging.getLogger(__name__)

DEFAULT_RETRIEVERS = ("bm25", "sparse", "dense")
DOCSTORE = "docs.sqlite"
STATE = "build-state.json"
CHECKPOINTS = "checkpoints"
IDENTITY_KEY = "build_identity"  # manifest key: which build (corpus, settings) made this index


@dataclass(frozen=True, slots=True)
class BuildConfig:
    """Every build parameter; all of it is recorded in the manifest.

    The common fields apply to every retriever; ``params`` holds each retriever's own, by name, as
    its :meth:`~trident_search.indexers.retriever.Retriever.write` and ``document_encoder`` read
    them, e.g. ``{"sparse": {"model": ..., "doc_top_k": 64, "index": {<SparseParams fields>}},
    "dense": {"model": ..., "factory": "HNSW32", "ef_construction": 200}, "bm25": {"fields":
    "flat", "threads": 2}}``. ``shard_size`` documents form one encoding checkpoint.
    """

    retrievers: tuple[str, ...] = DEFAULT_RETRIEVERS
    device: str = "auto"
    batch_size: int = 32
    max_length: int = 256
    shard_size: int = 4096
    encoder_threads: int | None = None
    params: dict[str, dict[str, Any]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "retrievers", tuple(self.retrievers))
        known = registered()
        unknown = [r for r in self.retrievers if r not in known]
        if unknown or not self.retrievers:
            raise BuildError(
                f"unknown retriever(s) {', '.join(unknown) or '(none given)'}; registered: {', '.join(known)}"
            )
        if len(set(self.retrievers)) != len(self.retrievers):
            raise BuildError(f"retrievers listed twice: {', '.join(self.retrievers)}")
        clash = set(self.retrievers) & _COMMON_KEYS
        if clash:
            raise BuildError(f"retriever name(s) {sorted(clash)} clash with build parameters; rename the retriever")
        for name, value in self.params.items():
            if name not in known:
                raise BuildError(f"parameters for unknown retriever {name!r}; registered: {', '.join(known)}")
            if not isinstance(value, dict):
                raise BuildError(f"parameters of {name} must be a mapping, got {type(value).__name__}")
        for name in ("batch_size", "max_length", "shard_size"):
            value = getattr(self, name)
            if not isinstance(value, int) or value < 1:
                raise BuildError(f"{name} must be >= 1, got {value}")
        if self.encoder_threads is not None and self.encoder_threads < 1:
            raise BuildError(f"encoder_threads must be >= 1, got {self.encoder_threads}")
        if self.device not in ("auto", "cpu", "cuda") and not self.device.startswith("cuda:"):
            raise BuildError(f"device must be auto, cpu, cuda or cuda:N; got {self.device!r}")
        for name in self.retrievers:  # fail before any work on a parameter the retriever rejects
            try:
                known[name].check_params(self.params_of(name))
            except (ValueError, TypeError) as exc:
                raise BuildError(f"{name}: {exc}") from None

    def params_of(self, name: str) -> dict[str, Any]:
        """Retriever ``name``'s own parameters (a copy)."""
        return copy.deepcopy(self.params.get(name, {}))

    def context(self, name: str, n_docs: int) -> BuildContext:
        """What retriever ``name`` is given to encode and write."""
        return BuildContext(
            params=self.params_of(name), device=self.device, batch_size=self.batch_size,
            max_length=self.max_length, threads=self.encoder_threads, n_docs=n_docs,
        )

    def to_dict(self) -> dict[str, Any]:
        return {
            "retrievers": list(self.retrievers),
            "device": self.device,
            "batch_size": self.batch_size,
            "max_length": self.max_length,
            "shard_size": self.shard_size,
            "encoder_threads": self.encoder_threads,
            "params": copy.deepcopy(self.params),
        }


_COMMON_KEYS = {"retrievers", "device", "batch_size", "max_length", "shard_size", "encoder_threads",
                "params", "skip_invalid"}


@dataclass(frozen=True, slots=True)
class Encoded:
    """Document encodings made outside this job (the sharded build's Ray Data workers).

    ``blocks`` yields row blocks (dense arrays or CSR) in corpus order; ``model`` is what the
    manifest records for the encoder (its ``model_info()``).
    """

    model: dict[str, Any]
    blocks: Callable[[], Iterable[np.ndarray | sp.csr_matrix]]


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
    build continues there, provided it was started with the same corpus and settings (and when the
    index at ``out`` is already this build's, nothing is redone). ``encoded`` supplies ready
    encodings per retriever name instead of encoding here.
    """
    config = config or BuildConfig()
    progress = progress or Progress()
    with claimed_target(out, corpus) as (out, source):
        job = _Job(source, out, config, skip_invalid, progress, encoded or {})
        if resume and job.already_published():
            log.info("%s already holds this build; nothing to do", out)
            return Manifest.load(out)
        try:
            job.open(resume)
            manifest = job.run()
        except OSError as exc:
            kept = job.prune()
            raise BuildError(describe_os_error(exc, out=out) + "; " + kept) from exc
        except BaseException:
            job.discard_if_empty()
            raise
        try:
            swap_in(job.work, out)
        except OSError as exc:
            raise BuildError(
                f"{describe_os_error(exc, out=out)}; the finished index is kept in {job.work}: "
                "rerun with --resume to publish it"
            ) from exc
    log.info("index ready at %s: %d documents, retrievers %s", out, manifest.doc_count, manifest.retrievers)
    return manifest


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
        self.out = out
        self.config = config
        self.skip_invalid = skip_invalid
        self.progress = progress
        self.encoded = encoded
        self.work = work_dir(out)
        self.state: dict[str, Any] = {}
        known = registered()
        self.retrievers: dict[str, Retriever] = {n: known[n] for n in known if n in config.retrievers}

    # -- state ---------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {
            "corpus": str(self.source),
            "skip_invalid": self.skip_invalid,
            "config": self.config.to_dict(),
        }

    def _identity_digest(self) -> str:
        text = json.dumps(self._identity(), sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()

    def already_published(self) -> bool:
        """True when ``out`` is this very build (same corpus content and settings), complete."""
        if self.work.exists() or not (self.out / MANIFEST).is_file():
            return False
        try:
            manifest = Manifest.load(self.out)
        except Exception:  # noqa: BLE001 - any unreadable manifest just means "rebuild"
            return False
        if manifest.extra.get(IDENTITY_KEY) != self._identity_digest():
            return False
        report = CorpusReport()
        for _ in self.docs(report=report):
            pass
        return report.fingerprint == manifest.corpus.get("fingerprint")

    def open(self, resume: bool) -> None:
        state_file = self.work / STATE
        if self.work.exists() and resume:
            if (self.work / MANIFEST).is_file():
                made_by = Manifest.load(self.work).extra.get(IDENTITY_KEY)
                if made_by != self._identity_digest():
                    raise BuildError(
                        f"the finished build in {self.work} was made from another corpus or with other "
                        "settings; rerun with the same ones, or without --resume to start over"
                    )
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
        self.state = {"identity": self._identity(), "done": [], "stages": {}, "models": {}, "params": {},
                      "encodes": {}}
        self._save_state()

    def _save_state(self) -> None:
        write_atomic(self.work / STATE, json.dumps(self.state, indent=2, sort_keys=True).encode())

    def _done(self, stage: str) -> bool:
        return stage in self.state["done"]

    def _mark(self, stage: str) -> None:
        self.state["done"].append(stage)
        self.state["stages"].update(self.progress.stages)
        self._save_state()

    # -- after a failure -----------------------------------------------------------------------
    def _shards_kept(self) -> tuple[int, int]:
        """(number, bytes) of encoding checkpoint shards in the work directory."""
        root = self.work / CHECKPOINTS
        if not root.is_dir():
            return 0, 0
        n = size = 0
        for sub in root.iterdir():
            if sub.is_dir():
                store = ShardStore(sub)
                n += store.complete()
                size += store.nbytes()
        return n, size

    def prune(self) -> str:
        """After a filesystem error: keep only what ``--resume`` needs (the encoding checkpoints),
        free the rest, and say what was kept."""
        if not self.work.exists():
            return "nothing was left behind"
        if (self.work / MANIFEST).is_file():
            return f"the finished index is kept in {self.work}: rerun with --resume to publish it"
        n, size = self._shards_kept()
        if n == 0 or not self.state:
            shutil.rmtree(self.work, ignore_errors=True)
            return f"nothing was left behind ({self.work} removed)"
        try:
            for entry in self.work.iterdir():
                if entry.name in (CHECKPOINTS, STATE):
                    continue
                if entry.is_dir():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
            for sub in (self.work / CHECKPOINTS).iterdir():  # half-written shard files
                for tmp in sub.glob(".*.tmp") if sub.is_dir() else ():
                    tmp.unlink()
            # Only the encode stages survive; the rest are redone from the checkpoints.
            self.state["done"] = [s for s in self.state["done"] if s.endswith(" encode")]
            self.state["params"] = {}
            self._save_state()
        except OSError:
            shutil.rmtree(self.work, ignore_errors=True)
            return f"nothing was left behind ({self.work} removed)"
        return (f"{n} encoding checkpoint shards ({size / 1e6:.1f} MB) are kept in {self.work} for "
                "--resume (rerun with --resume to continue; delete that folder to drop them)")

    def discard_if_empty(self) -> None:
        """After any other failure: keep the work directory only if it holds work worth resuming."""
        if not self.work.exists() or (self.work / MANIFEST).is_file():
            return
        if not self.state or (not self.state.get("done") and self._shards_kept()[0] == 0):
            shutil.rmtree(self.work, ignore_errors=True)

    # -- stages --------------------------------------------------------------------------------
    def run(self) -> Manifest:
        if (self.work / MANIFEST).is_file():
            manifest = Manifest.load(self.work)
        else:
            self._docstore()
            for name, retriever in self.retrievers.items():
                ctx = self.config.context(name, self.n_docs)
                encodes = self._encode(name, retriever, ctx)
                self._write(name, retriever, ctx, encodes)
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
        if "fingerprint" in self.state and report.fingerprint != self.state["fingerprint"]:
            raise BuildError(f"{self.source} changed since the unfinished build began; rerun without --resume")
        if report.skipped:
            log.warning("skipped %d invalid records (first: %s)", report.skipped, report.errors[0])
        if report.empty:
            log.warning(
                "%d documents have an empty title and text (first: %s); they are indexed, and found "
                "only by id or metadata filters", report.empty, ", ".join(report.empty_examples),
            )
        self.state.update(
            doc_count=report.valid,
            fingerprint=report.fingerprint,
            skipped=report.skipped,
            skipped_examples=report.errors[:5],
            empty=report.empty,
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

    def _shards(self, name: str) -> ShardStore:
        return ShardStore(self.work / CHECKPOINTS / name)

    def _encode(self, name: str, retriever: Retriever, ctx: BuildContext) -> bool:
        """Encode every document into checkpoint shards, skipping those a killed run already wrote.

        Returns whether this retriever has encodings (False: it writes from the text alone).
        """
        stage = f"{name} encode"
        if self._done(stage):
            return True
        if name in self.encoded:
            self._adopt(name)
            return True
        if self.state["encodes"].get(name) is False:
            return False
        shards = self._shards(name)
        size = self.config.shard_size
        n_shards = math.ceil(self.n_docs / size)
        first = shards.complete()
        encoder: DocumentEncoder | None = None
        if first < n_shards or name not in self.state["models"]:
            encoder = retriever.document_encoder(ctx)
            if encoder is None:
                shutil.rmtree(shards.dir, ignore_errors=True)
                self.state["encodes"][name] = False
                self._save_state()
                return False
            self.state["encodes"][name] = True
            self.state["models"][name] = encoder.model_info()
            self._save_state()
        # Timings of shards written by earlier (killed) runs, so the manifest reports the whole stage.
        earlier = self.state.setdefault("partial", {}).get(stage, {})
        if first < n_shards:
            assert encoder is not None
            chunk = max(self.config.batch_size * 4, 64)
            with self.progress.stage(stage, total=self.n_docs - first * size) as tick:
                docs = islice(self.docs(), first * size, None)
                for i in range(first, n_shards):
                    batch = list(islice(docs, size))
                    shards.write(i, _encode_by_length(encoder.encode, batch, chunk, tick))
                    self.state["partial"][stage] = _add_timings(earlier, tick.timings())
                    self._save_state()
        self.progress.stages[stage] = _add_timings(earlier, self.progress.stages.get(stage, {}))
        self._mark(stage)
        return True

    def _adopt(self, name: str) -> None:
        """Checkpoint encodings supplied by the caller as if this job had encoded them."""
        given = self.encoded[name]
        shards = self._shards(name)
        with self.progress.stage(f"{name} encode", total=self.n_docs) as tick:
            for i, block in enumerate(given.blocks()):
                shards.write(i, block)
                tick.update(block.shape[0])
        self.state["models"][name] = dict(given.model)
        self.state["encodes"][name] = True
        self._mark(f"{name} encode")

    def _write(self, name: str, retriever: Retriever, ctx: BuildContext, encodes: bool) -> None:
        stage = f"{name} index"
        if self._done(stage):
            return
        partial, final = self.work / f"{name}.partial", self.work / name
        for p in (partial, final):
            shutil.rmtree(p, ignore_errors=True)
        partial.mkdir()
        with self.progress.stage(stage, total=self.n_docs) as tick:
            # Progress counts the encodings read when there are any, else the documents.
            chunks: Callable[[], Iterator[Any]] | None = None
            if encodes:
                store = self._shards(name)
                docs: Callable[[], Iterator[Document]] = self.docs
                chunks = lambda: _ticking_rows(store, tick)  # noqa: E731
            else:
                docs = lambda: _ticking(self.docs(), tick)  # noqa: E731
            try:
                params = retriever.write(partial, ctx, docs=docs, chunks=chunks)
            except CorpusError:
                raise
            except ValueError as exc:
                raise BuildError(f"{name} index: {exc}") from exc
        os.replace(partial, final)
        self.state["params"][name] = params if params is not None else {}
        self._mark(stage)

    def _manifest(self) -> Manifest:
        retrievers = list(self.retrievers)
        params: dict[str, Any] = {k: v for k, v in self.config.to_dict().items() if k != "params"}
        params["skip_invalid"] = self.skip_invalid
        for name in retrievers:
            params[name] = self.state["params"][name]
        manifest = Manifest(
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
            doc_count=self.n_docs,
            corpus={
                "path": str(self.source),
                "fingerprint": self.state["fingerprint"],
                "skipped": self.state["skipped"],
                "empty": self.state.get("empty", 0),
            },
            retrievers=retrievers,
            models={k: v for k, v in self.state["models"].items() if k in retrievers},
            params=params,
            files=file_table(self.work, [DOCSTORE, *retrievers]),
            stages=self.state["stages"],
            extra={IDENTITY_KEY: self._identity_digest()},
        )
        manifest.write(self.work)
        return manifest


# -- encoding helpers ------------------------------------------------------------------------------
def _encode_by_length(
    encode: Callable[[Sequence[Document]], Any], docs: list[Document], chunk: int, tick: StageTicker
) -> np.ndarray | sp.csr_matrix:
    """Encode one shard in chunks of similar length (less padding), returned in corpus order.

    The chunks depend only on the shard's documents, so a resumed build encodes exactly the same
    batches as an uninterrupted one.
    """
    from trident_search.encoders.text import document_text

    order = np.argsort([-len(document_text(d.title, d.text)) for d in docs], kind="stable")
    parts = []
    for start in range(0, len(docs), chunk):
        idx = order[start : start + chunk]
        batch = [docs[j] for j in idx]
        began = time.perf_counter()
        parts.append(encode(batch))
        tick.model_seconds += time.perf_counter() - began
        tick.update(len(idx))
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    if sp.issparse(parts[0]):
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


def _ticking_rows(blocks: Iterable[Any], tick: StageTicker) -> Iterator[Any]:
    for block in blocks:
        yield block
        tick.update(block.shape[0])


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
