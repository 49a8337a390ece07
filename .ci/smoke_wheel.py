"""Smoke test of the installed wheel, run by .ci/wheel_smoke.sh with a fresh venv's python from a
folder outside the checkout (``python -I``, so neither the checkout nor PYTHONPATH is on sys.path).

1. The distribution puts only ``trident_search`` and its dist-info at the top of site-packages
   (plus the ``trident`` script): no ``service``, ``eval``, ``encoders``, ``indexers``, ``cluster``
   or ``core``.
2. ``import trident_search`` comes from site-packages, and its layers import.
3. The README's three lines run: build a small index from the first documents of the demo corpus with
   ``trident_search.build_index`` and search it with ``trident_search.Searcher``.
4. The ``trident`` console script answers ``--version``.

    python -I smoke_wheel.py --corpus data/demo/scifact-demo [--docs 40] [--retrievers bm25,sparse,dense]
"""
from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import itertools
import json
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

DIST = "trident-search"
PACKAGE = "trident_search"
GENERIC = ("service", "eval", "encoders", "indexers", "cluster", "core")
LAYERS = ("core", "indexers", "encoders", "service", "eval")  # cluster needs the ray extra
QUERY = "vitamin D and bone density"


def step(title: str) -> None:
    print(f"-- {title}", flush=True)


def check_layout() -> None:
    step("site-packages holds only trident_search from this distribution")
    dist = md.distribution(DIST)
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    top = {Path(str(f)).parts[0] for f in dist.files or []}
    dist_info = f"{PACKAGE}-{dist.version}.dist-info"
    extra = top - {PACKAGE, dist_info, ".."}  # ".." is the console script under bin/
    assert not extra, f"{DIST} installs more than {PACKAGE} at the top of site-packages: {sorted(extra)}"
    for name in GENERIC:
        found = [p.name for p in (site / name, site / f"{name}.py") if p.exists()]
        assert not found, f"site-packages has a top-level {found} (from {DIST} or a dependency)"
    assert (site / PACKAGE / "py.typed").exists(), "py.typed is missing from the wheel"
    print(f"   {sorted(top)} in {site}")


def check_imports() -> None:
    step("import trident_search and its layers from site-packages")
    import trident_search

    where = Path(trident_search.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    assert site in where.parents, f"trident_search comes from {where}, not from {site}"
    assert trident_search.__version__ == md.version(DIST), trident_search.__version__
    for layer in LAYERS:
        module = importlib.import_module(f"{PACKAGE}.{layer}")
        assert site in Path(module.__path__[0]).resolve().parents, f"{module.__name__} from {module.__path__}"
    for name in trident_search.__all__:  # every lazily exported name resolves
        getattr(trident_search, name)
    print(f"   {where.parent} (version {trident_search.__version__})")


def check_build_and_search(corpus_dir: Path, docs: int, retrievers: tuple[str, ...], work: Path) -> None:
    from trident_search import BuildConfig, Searcher, build_index

    step(f"build_index: {docs} demo documents, retrievers {','.join(retrievers)}")
    corpus = work / "corpus.jsonl"
    with (corpus_dir / "corpus.jsonl").open() as src:
        corpus.write_text("".join(itertools.islice(src, docs)))
    ids = {json.loads(line)["_id"] for line in corpus.read_text().splitlines()}
    start = time.monotonic()
    manifest = build_index(corpus, work / "index", BuildConfig(retrievers=retrievers, device="cpu"))
    assert manifest.doc_count == docs, manifest.doc_count
    print(f"   built in {time.monotonic() - start:.1f} s")

    mode = "hybrid" if len(retrievers) > 1 else retrievers[0]
    step(f"Searcher.open(...).search({QUERY!r}, k=10, mode={mode!r})")
    start = time.monotonic()
    with Searcher.open(work / "index") as s:
        hits = s.search(QUERY, k=10, mode=mode)
    assert hits, "no hits"
    assert len(hits) <= 10 and {h.id for h in hits} <= ids, [h.id for h in hits]
    assert all(a.score >= b.score for a, b in itertools.pairwise(hits)), "hits are not sorted"
    print(f"   {len(hits)} hits in {time.monotonic() - start:.1f} s (open included), top {hits[0].id}")


def check_script() -> None:
    step("trident --version")
    exe = shutil.which("trident", path=str(Path(sys.executable).parent))
    assert exe, "the trident console script is not installed"
    out = subprocess.run([exe, "--version"], capture_output=True, text=True, timeout=300, check=True).stdout
    assert md.version(DIST) in out, out
    print(f"   {out.strip()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, required=True, help="a BEIR folder with corpus.jsonl")
    parser.add_argument("--docs", type=int, default=40)
    parser.add_argument("--retrievers", default="bm25,sparse,dense")
    args = parser.parse_args()
    checkout = Path(__file__).resolve().parent.parent
    assert str(checkout) not in sys.path and "" not in sys.path, f"the checkout is on sys.path: {sys.path}"
    check_layout()
    check_imports()
    with tempfile.TemporaryDirectory(prefix="trident-smoke-") as work:
        check_build_and_search(args.corpus.resolve(), args.docs, tuple(args.retrievers.split(",")), Path(work))
    check_script()
    print("wheel smoke test passed", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
