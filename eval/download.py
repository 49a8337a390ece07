"""Resolve ``--dataset``: a BEIR folder on disk, or a BEIR name fetched from the official mirror.

Downloads are checked against the md5 sums published in the BEIR README, extracted into a
temporary sibling folder and renamed into place, so an interrupted download never leaves a
half-extracted dataset that a later run would trust. With no network the error says to pass a
path instead.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from pathlib import Path

from tqdm import tqdm

from trident_search.errors import TridentError

log = logging.getLogger(__name__)

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{name}.zip"

# name -> md5 of the zip, from https://github.com/beir-cellar/beir (README, "Available Datasets").
BEIR_MD5: dict[str, str] = {
    "msmarco": "444067daf65d982533ea17ebd59501e4",
    "trec-covid": "ce62140cb23feb9becf6270d0d1fe6d1",
    "nfcorpus": "a89dba18a62ef92f7d323ec890a0d38d",
    "nq": "d4d3d2e48787a744b6f6e691ff534307",
    "hotpotqa": "f412724f78b0d91183a0e86805e16114",
    "fiqa": "17918ed23cd04fb15047f73e6c3bd9d9",
    "arguana": "8ad3e3c2a5867cdced806d6503f29b99",
    "webis-touche2020": "46f650ba5a527fc69e0a6521c5a23563",
    "cqadupstack": "4e41456d7df8ee7760a7f866133bda78",
    "quora": "18fb154900ba42a600f84b839c173167",
    "dbpedia-entity": "c2a39eb420a3164af735795df012ac2c",
    "scidocs": "38121350fc3a4d2f48850f6aff52e4a9",
    "fever": "5a818580227bfb4b35bb6fa46d9b6c03",
    "climate-fever": "8b66f0a9126c521bae2bde127b4dc99d",
    "scifact": "5f7d1de60b170fc8027bb7898e2efca1",
}

_CHUNK = 1 << 20


class DownloadError(TridentError, RuntimeError):
    """A dataset that could not be fetched or verified; the message says what to do instead."""


def default_cache_dir() -> Path:
    """``$TRIDENT_CACHE`` (the one cache setting, as for ONNX graphs) or ``~/.cache/trident``;
    datasets go under ``beir/<name>``."""
    from trident_search.settings import CacheSettings

    return CacheSettings().root


def resolve_dataset(spec: str, cache_dir: Path | None = None, *, url: str | None = None) -> Path:
    """Return the folder of a dataset given as a path or as a BEIR name (downloaded once).

    ``url`` overrides the mirror (a test serves a zip locally this way).
    """
    path = Path(spec).expanduser()
    if path.exists():
        return path
    if spec not in BEIR_MD5:
        looks_like_path = os.sep in spec or spec.startswith(".")
        what = f"folder {path} does not exist" if looks_like_path else f"{spec!r} is not a BEIR name"
        raise DownloadError(
            f"{what}; pass a BEIR folder (corpus.jsonl, queries.jsonl, qrels/) "
            f"or one of: {', '.join(sorted(BEIR_MD5))}"
        )
    target = (cache_dir or default_cache_dir()) / "beir" / spec
    if (target / "queries.jsonl").is_file():
        log.info("using cached %s at %s", spec, target)
        return target
    download(spec, target, url=url or BEIR_URL.format(name=spec))
    return target


def download(name: str, target: Path, *, url: str) -> None:
    """Fetch ``url``, check its md5 against ``BEIR_MD5[name]`` and extract it to ``target``."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=f".{name}-") as tmp:
        archive = Path(tmp) / f"{name}.zip"
        digest = _fetch(url, archive)
        if digest != BEIR_MD5[name]:
            raise DownloadError(
                f"checksum mismatch for {url}: md5 {digest}, expected {BEIR_MD5[name]}; "
                "the download is corrupt or the mirror changed: retry, or pass a local folder"
            )
        extracted = Path(tmp) / "extracted"
        _extract(archive, extracted)
        # BEIR zips hold one top-level folder named after the dataset.
        inner = extracted / name if (extracted / name).is_dir() else extracted
        if target.exists():
            shutil.rmtree(target)
        inner.rename(target)
    log.info("downloaded %s to %s", name, target)


def _fetch(url: str, dest: Path) -> str:
    md5 = hashlib.md5()  # noqa: S324 - BEIR publishes md5; integrity check, not security
    try:
        with urllib.request.urlopen(url, timeout=30) as resp, dest.open("wb") as out:
            total = int(resp.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=dest.name) as bar:
                while chunk := resp.read(_CHUNK):
                    out.write(chunk)
                    md5.update(chunk)
                    bar.update(len(chunk))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise DownloadError(
            f"could not download {url} ({reason}). This machine may have no network: fetch the "
            "zip elsewhere, unzip it, and pass the folder with --dataset PATH"
        ) from None
    return md5.hexdigest()


def _extract(archive: Path, dest: Path) -> None:
    """Unzip, refusing members that would land outside ``dest``."""
    root = dest.resolve()
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            if not (root / member).resolve().is_relative_to(root):
                raise DownloadError(f"{archive} holds an unsafe path {member!r}; refusing to unzip")
        zf.extractall(root)
