"""The sharded build: one corpus -> N complete index directories under one atomically published root.

Stages (each timed into the top-level manifest):

1. **partition** (driver, one streamed pass): validates the corpus exactly as a single-node build
   does (same errors, same ``--skip-invalid``, same fingerprint), assigns every document to
   ``shard_of(_id, N)`` and writes the shard's records, in corpus order, to ``parts/``.
2. **encode** (Ray Data): reads the documents' texts and runs ``map_batches`` over a pool of
   :class:`DocumentEncoder` actors, one model load per actor, on CPU or GPU. Output is Parquet
   with plain Arrow list columns, one partition per shard.
3. **shards** (one Ray task per shard): ``trident_search.indexers.build.build_index`` over the shard's records,
   taking the encodings from stage 2, so each shard is exactly a single-node index directory.
   A task that dies (worker or node lost, pre-emption) is retried, and resumes from the shard's
   own checkpoints.
4. **publish**: the top-level manifest is written last and the whole tree is renamed into place
   with the same swap as a single-node build, so readers see the old index or the new one.

Every node must see ``out`` at the same path (shared filesystem). On one machine that is free; on
a real cluster put the index on NFS or a mounted bucket.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from trident_search.cluster.layout import ASSIGNMENT_RULE, ShardedManifest, shard_name, shard_of
from trident_search.cluster.runtime import connect
from trident_search.indexers.build import (
    BuildConfig,
    BuildError,
    Encoded,
    _swap_in,
    build_index,
    claimed_target,
    make_encoder,
    work_dir,
)
from trident_search.indexers.corpus import CorpusReport, iter_corpus

log = logging.getLogger(__name__)

ENCODE_KINDS = ("sparse", "dense")
TASK_RETRIES = 3


def build_sharded(
    corpus: str | Path,
    out: str | Path,
    config: BuildConfig | None = None,
    *,
    shards: int,
    address: str = "local",
    encode_workers: int = 2,
    worker_cpus: float = 0.5,
    worker_gpus: float = 0.0,
    skip_invalid: bool = False,
) -> ShardedManifest:
    """Build a sharded index of ``corpus`` at ``out`` on the Ray cluster at ``address``.

    ``worker_cpus`` is fractional on purpose: Ray Data stalls when its actors hold every CPU of a
    small machine (ray-project/ray#44687), and encoders here are single-threaded anyway.
    """
    config = config or BuildConfig()
    if shards < 1:
        raise BuildError(f"--shards must be >= 1, got {shards}")
    with claimed_target(out, corpus) as (out, source):
        work = work_dir(out)
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        stages: dict[str, dict[str, float]] = {}

        t0 = time.perf_counter()
        report = CorpusReport()
        counts = _partition(source, work, shards, skip_invalid, report)
        _stage(stages, "partition", report.valid, t0)

        ray = connect(address)
        kinds = [k for k in ENCODE_KINDS if k in config.retrievers]
        models: dict[str, dict[str, Any]] = {}
        if kinds:
            t0 = time.perf_counter()
            models = _encode(work, shards, config, kinds, encode_workers, worker_cpus, worker_gpus)
            _stage(stages, "encode", report.valid, t0)

        t0 = time.perf_counter()
        task = ray.remote(_build_shard).options(
            num_cpus=worker_cpus, max_retries=TASK_RETRIES, retry_exceptions=False
        )
        refs = [
            task.remote(str(work), i, config, models, skip_invalid) for i in range(shards)
        ]
        shard_manifests = ray.get(refs)
        _stage(stages, "shards", report.valid, t0)

        for sub in ("parts", "encoded"):
            shutil.rmtree(work / sub, ignore_errors=True)
        manifest = ShardedManifest(
            created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
            doc_count=report.valid,
            corpus={"path": str(source), "fingerprint": report.fingerprint, "skipped": report.skipped},
            n_shards=shards,
            assignment={"rule": ASSIGNMENT_RULE, "n_shards": shards},
            shards=[
                {"name": shard_name(i), "doc_count": m["doc_count"], "fingerprint": m["corpus"]["fingerprint"]}
                for i, m in enumerate(shard_manifests)
            ],
            params={**config.to_dict(), "skip_invalid": skip_invalid, "encode_workers": encode_workers},
            stages=stages,
        )
        if sum(counts) != report.valid or [s["doc_count"] for s in manifest.shards] != counts:
            raise BuildError(f"shard document counts {manifest.shards} do not add up to {report.valid}")
        manifest.write(work)
        _swap_in(work, out)
    log.info("sharded index ready at %s: %d documents in %d shards", out, report.valid, shards)
    return manifest


def build_sharded_cli(
    corpus: Path, out: Path, config: BuildConfig, shards: int, address: str, resume: bool, skip_invalid: bool
) -> ShardedManifest:
    """``trident index build --ray-address``: :func:`build_sharded` with the CLI's error types."""
    from trident_search.cluster.runtime import RayUnavailableError

    if resume:
        raise BuildError("--resume is for single-node builds; in a sharded build Ray retries failed "
                         "shard tasks, which resume from their own checkpoints")
    try:
        return build_sharded(corpus, out, config, shards=shards, address=address, skip_invalid=skip_invalid)
    except RayUnavailableError as exc:
        raise BuildError(str(exc)) from None


def _stage(stages: dict[str, dict[str, float]], name: str, docs: int, t0: float) -> None:
    seconds = time.perf_counter() - t0
    stages[name] = {"docs": docs, "seconds": seconds, "docs_per_s": docs / seconds if seconds else 0.0}
    log.info("stage %s: %d docs in %.1f s", name, docs, seconds)


# -- 1. partition -----------------------------------------------------------------------------------
def _partition(source: Path, work: Path, n: int, skip_invalid: bool, report: CorpusReport) -> list[int]:
    """Write each shard's valid records (corpus order) and its encoder input; return shard sizes."""
    from trident_search.encoders.text import document_text

    parts = work / "parts"
    parts.mkdir()
    counts = [0] * n
    files = [(parts / f"{shard_name(i)}.jsonl").open("w", encoding="utf-8") for i in range(n)]
    texts = [(parts / f"{shard_name(i)}.text.jsonl").open("w", encoding="utf-8") for i in range(n)]
    try:
        for doc in iter_corpus(source, skip_invalid=skip_invalid, report=report):
            i = shard_of(doc.id, n)
            record = {"_id": doc.id, "title": doc.title, "text": doc.text, "metadata": doc.metadata}
            files[i].write(json.dumps(record, ensure_ascii=False) + "\n")
            row = {"shard": i, "pos": counts[i], "text": document_text(doc.title, doc.text)}
            texts[i].write(json.dumps(row, ensure_ascii=False) + "\n")
            counts[i] += 1
    finally:
        for fh in files + texts:
            fh.close()
    if report.valid == 0:
        raise BuildError(f"{source} holds no valid documents")
    empty = [shard_name(i) for i, c in enumerate(counts) if c == 0]
    if empty:
        raise BuildError(
            f"{len(empty)} of {n} shards would be empty ({report.valid} documents); use fewer --shards"
        )
    log.info("partitioned %d documents into %d shards: %s", report.valid, n, counts)
    return counts


# -- 2. encode --------------------------------------------------------------------------------------
class DocumentEncoder:
    """A Ray Data actor: loads the configured encoders once, then encodes batches of texts."""

    def __init__(self, config: BuildConfig, kinds: list[str]) -> None:
        self.kinds = kinds
        self.encoders = {kind: make_encoder(config, kind)[0] for kind in kinds}

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        texts = [str(t) for t in batch["text"]]
        columns: dict[str, Any] = {
            "shard": pa.array(batch["shard"], pa.int32()),
            "pos": pa.array(batch["pos"], pa.int64()),
        }
        if "sparse" in self.kinds:
            csr = self.encoders["sparse"].encode_documents(texts)
            offsets = pa.array(csr.indptr.astype(np.int32))
            columns["sparse_indices"] = pa.ListArray.from_arrays(offsets, pa.array(csr.indices.astype(np.int32)))
            columns["sparse_values"] = pa.ListArray.from_arrays(offsets, pa.array(csr.data.astype(np.float32)))
        if "dense" in self.kinds:
            vectors = np.ascontiguousarray(self.encoders["dense"].encode_documents(texts), dtype=np.float32)
            offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
            columns["dense"] = pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel()))
        # A plain pyarrow Table: numpy columns would be written as Ray's Arrow extension types.
        return pa.table(columns)


def _encode(
    work: Path,
    n: int,
    config: BuildConfig,
    kinds: list[str],
    workers: int,
    worker_cpus: float,
    worker_gpus: float,
) -> dict[str, dict[str, Any]]:
    """Encode every document on the cluster; returns the model info the manifests record.

    The driver loads each model once first: a bad model name fails here, before the cluster works.
    """
    import ray.data

    models = {kind: make_encoder(config, kind)[1] for kind in kinds}
    paths = [str(work / "parts" / f"{shard_name(i)}.text.jsonl") for i in range(n)]
    ds = ray.data.read_json(paths, lines=True)
    ds = ds.map_batches(
        DocumentEncoder,
        fn_constructor_kwargs={"config": config, "kinds": kinds},
        batch_size=max(config.batch_size * 4, 64),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=worker_cpus,
        num_gpus=worker_gpus or None,
    )
    ds.write_parquet(str(work / "encoded"), partition_cols=["shard"])
    return models


# -- 3. shards --------------------------------------------------------------------------------------
def _build_shard(
    work: str, i: int, config: BuildConfig, models: dict[str, dict[str, Any]], skip_invalid: bool
) -> dict[str, Any]:
    """Build shard ``i`` as a single-node index from its records and the cluster's encodings.

    Runs as a retried Ray task; ``resume=True`` lets a retry continue from the shard's checkpoints.
    """
    root = Path(work)
    name = shard_name(i)
    encoded = {
        kind: Encoded(model=info, blocks=lambda kind=kind, info=info: _blocks(root / "encoded", i, kind, info))
        for kind, info in models.items()
    }
    manifest = build_index(root / "parts" / f"{name}.jsonl", root / name, config, resume=True, encoded=encoded)
    return manifest.to_dict()


def _blocks(encoded: Path, shard: int, kind: str, info: dict[str, Any]) -> Iterator[np.ndarray | sp.csr_matrix]:
    """Shard ``shard``'s encodings from the Parquet partition, as one block in shard order."""
    import pyarrow.parquet as pq

    columns = ["pos", "sparse_indices", "sparse_values"] if kind == "sparse" else ["pos", "dense"]
    table = pq.read_table(encoded / f"shard={shard}", columns=columns)
    table = table.sort_by("pos")
    pos = table.column("pos").to_numpy()
    if not np.array_equal(pos, np.arange(len(pos))):
        raise BuildError(f"{shard_name(shard)}: the encoded rows do not cover positions 0..{len(pos) - 1}")
    if kind == "dense":
        flat = table.column("dense").combine_chunks()
        yield flat.flatten().to_numpy().astype(np.float32).reshape(len(pos), int(info["dim"]))
        return
    indices = table.column("sparse_indices").combine_chunks()
    values = table.column("sparse_values").combine_chunks()
    indptr = indices.offsets.to_numpy().astype(np.int64)
    indptr -= indptr[0]
    yield sp.csr_matrix(
        (values.flatten().to_numpy().astype(np.float32), indices.flatten().to_numpy(), indptr),
        shape=(len(pos), int(info["vocab_size"])),
    )
