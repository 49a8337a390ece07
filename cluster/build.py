"""The sharded build: one corpus -> N complete index directories under one atomically published root.

Stages (each timed into the top-level manifest):

1. **partition** (driver, one streamed pass): validates the corpus exactly as a single-node build
   does (same errors, same ``--skip-invalid``, same fingerprint), assigns every document to
   ``shard_of(_id, N)`` and writes the shard's records, in corpus order, to ``parts/``.
2. **encode** (Ray Data): reads the documents and runs ``map_batches`` over a pool of
   :class:`EncodeActor` actors, each holding the ``document_encoder`` of every registered retriever
   that has one (one model load per actor, on CPU or GPU). Output is Parquet with plain Arrow list
   columns per retriever, one partition per shard.
3. **shards** (one Ray task per shard): ``trident_search.indexers.build.build_index`` over the shard's records,
   taking the encodings from stage 2, so each shard is exactly a single-node index directory.
   A task that dies (worker or node lost, pre-emption) is retried, and resumes from the shard's
   own checkpoints.
4. **publish**: the top-level manifest is written last and the whole tree is published with the
   same swap as a single-node build (:mod:`trident_search.indexers.publish`), so readers see the
   old index or the new one.

Every node must see ``out`` at the same path (shared filesystem). On one machine that is free; on
a real cluster put the index on NFS or a mounted bucket.
"""
from __future__ import annotations

import json
import logging
import shutil
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from trident_search.cluster.layout import ASSIGNMENT_RULE, ShardedManifest, shard_name, shard_of
from trident_search.cluster.runtime import connect
from trident_search.indexers.build import BuildConfig, Encoded, build_index
from trident_search.indexers.corpus import CorpusReport, Document, iter_corpus
from trident_search.indexers.publish import BuildError, claimed_target, swap_in, work_dir
from trident_search.indexers.retriever import DocumentEncoder, registered

log = logging.getLogger(__name__)

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
        # The driver loads each model once first: a bad model name fails here, before the cluster works.
        models = _model_infos(config, report.valid)
        if models:
            t0 = time.perf_counter()
            _encode(work, shards, config, list(models), encode_workers, worker_cpus, worker_gpus)
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
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
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
        swap_in(work, out)
    log.info("sharded index ready at %s: %d documents in %d shards", out, report.valid, shards)
    return manifest


def _stage(stages: dict[str, dict[str, float]], name: str, docs: int, t0: float) -> None:
    seconds = time.perf_counter() - t0
    stages[name] = {"docs": docs, "seconds": seconds, "docs_per_s": docs / seconds if seconds else 0.0}
    log.info("stage %s: %d docs in %.1f s", name, docs, seconds)


# -- 1. partition -----------------------------------------------------------------------------------
def _partition(source: Path, work: Path, n: int, skip_invalid: bool, report: CorpusReport) -> list[int]:
    """Write each shard's valid records (corpus order) and its encoder input; return shard sizes."""
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
            row = {"shard": i, "pos": counts[i], "id": doc.id, "title": doc.title, "text": doc.text}
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
def _model_infos(config: BuildConfig, n_docs: int) -> dict[str, dict[str, Any]]:
    """``model_info()`` of every chosen retriever that encodes documents, by name (registry order)."""
    infos = {}
    for name, retriever in registered().items():
        if name in config.retrievers:
            encoder = retriever.document_encoder(config.context(name, n_docs))
            if encoder is not None:
                infos[name] = encoder.model_info()
                del encoder
    return infos


class EncodeActor:
    """A Ray Data actor: loads the retrievers' document encoders once, then encodes batches.

    Each retriever's chunk becomes Arrow list columns named after it: ``<name>__dense`` for a dense
    array; ``<name>__indices``, ``<name>__values`` and ``<name>__width`` for a sparse matrix.
    """

    def __init__(self, config: BuildConfig, names: list[str]) -> None:
        known = registered()
        self.encoders: dict[str, DocumentEncoder] = {}
        for name in names:
            encoder = known[name].document_encoder(config.context(name, 0))
            assert encoder is not None, name
            self.encoders[name] = encoder

    def __call__(self, batch: dict[str, np.ndarray]) -> Any:
        import pyarrow as pa

        rows = zip(batch["id"], batch["title"], batch["text"], strict=True)
        docs = [Document(str(i), str(t), str(x)) for i, t, x in rows]
        columns: dict[str, Any] = {
            "shard": pa.array(batch["shard"], pa.int32()),
            "pos": pa.array(batch["pos"], pa.int64()),
        }
        for name, encoder in self.encoders.items():
            chunk = encoder.encode(docs)
            if sp.issparse(chunk):
                csr = sp.csr_matrix(chunk)
                offsets = pa.array(csr.indptr.astype(np.int32))
                columns[f"{name}__indices"] = pa.ListArray.from_arrays(offsets, pa.array(csr.indices.astype(np.int32)))
                columns[f"{name}__values"] = pa.ListArray.from_arrays(offsets, pa.array(csr.data.astype(np.float32)))
                columns[f"{name}__width"] = pa.array(np.full(len(docs), csr.shape[1], np.int64))
            else:
                vectors = np.ascontiguousarray(chunk, dtype=np.float32)
                offsets = pa.array(np.arange(0, vectors.size + 1, vectors.shape[1], dtype=np.int32))
                columns[f"{name}__dense"] = pa.ListArray.from_arrays(offsets, pa.array(vectors.ravel()))
        # A plain pyarrow Table: numpy columns would be written as Ray's Arrow extension types.
        return pa.table(columns)


def _encode(
    work: Path,
    n: int,
    config: BuildConfig,
    names: list[str],
    workers: int,
    worker_cpus: float,
    worker_gpus: float,
) -> None:
    """Encode every document on the cluster, for every retriever in ``names``."""
    import ray.data

    paths = [str(work / "parts" / f"{shard_name(i)}.text.jsonl") for i in range(n)]
    ds = ray.data.read_json(paths, lines=True)
    ds = ds.map_batches(
        EncodeActor,
        fn_constructor_kwargs={"config": config, "names": names},
        batch_size=max(config.batch_size * 4, 64),
        batch_format="numpy",
        compute=ray.data.ActorPoolStrategy(size=workers),
        num_cpus=worker_cpus,
        num_gpus=worker_gpus or None,
    )
    ds.write_parquet(str(work / "encoded"), partition_cols=["shard"])


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
        name: Encoded(model=info, blocks=lambda name=name: _blocks(root / "encoded", i, name))
        for name, info in models.items()
    }
    manifest = build_index(root / "parts" / f"{name}.jsonl", root / name, config, resume=True, encoded=encoded)
    return manifest.to_dict()


def _blocks(encoded: Path, shard: int, name: str) -> Iterator[np.ndarray | sp.csr_matrix]:
    """Retriever ``name``'s encodings of shard ``shard`` from the Parquet partition, as one block in
    shard order (see :class:`EncodeActor` for the columns)."""
    import pyarrow.dataset as pads
    import pyarrow.parquet as pq

    folder = encoded / f"shard={shard}"
    present = set(pads.dataset(folder, format="parquet").schema.names)
    dense = f"{name}__dense" in present
    columns = ["pos", f"{name}__dense"] if dense else ["pos", f"{name}__indices", f"{name}__values", f"{name}__width"]
    table = pq.read_table(folder, columns=columns).sort_by("pos")
    pos = table.column("pos").to_numpy()
    if not np.array_equal(pos, np.arange(len(pos))):
        raise BuildError(f"{shard_name(shard)}: the encoded rows do not cover positions 0..{len(pos) - 1}")
    if dense:
        flat = table.column(f"{name}__dense").combine_chunks()
        yield flat.flatten().to_numpy().astype(np.float32).reshape(len(pos), -1)
        return
    indices = table.column(f"{name}__indices").combine_chunks()
    values = table.column(f"{name}__values").combine_chunks()
    width = int(table.column(f"{name}__width")[0].as_py())
    indptr = indices.offsets.to_numpy().astype(np.int64)
    indptr -= indptr[0]
    yield sp.csr_matrix(
        (values.flatten().to_numpy().astype(np.float32), indices.flatten().to_numpy(), indptr),
        shape=(len(pos), width),
    )
