"""Type and layer gates on the installed layout: mypy (core, indexers) and import-linter.

Both tools resolve ``trident_search.core`` and friends from the file system, but in the repository
those packages are the top-level folders mapped in by setuptools ``package-dir`` (pyproject.toml),
which only an installed or editable copy knows about. So this copies the sources into a temporary
folder laid out as the wheel is (``trident_search/core/...``), runs the tools there, and prints their
findings with repository paths (``core/engine.py``). Exit status: non-zero when any gate fails.

    python .ci/gates.py [--only mypy|imports] [--keep DIR]
"""
from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
MYPY_TARGETS = ["-p", "trident_search.core", "-p", "trident_search.indexers",
                "-m", "trident_search", "-m", "trident_search.errors", "-m", "trident_search.settings"]


def package_dirs() -> dict[str, Path]:
    """``{"trident_search.core": REPO / "core", ...}`` from pyproject's ``package-dir``."""
    setup = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    return {name: REPO / folder for name, folder in setup["package-dir"].items()}


def stage(dest: Path) -> dict[Path, str]:
    """Copy every mapped package's .py files under ``dest``; returns staged folder -> repo folder."""
    back = {}
    for name, src in sorted(package_dirs().items(), key=lambda kv: kv[0].count(".")):
        target = dest.joinpath(*name.split("."))
        for path in src.rglob("*.py"):
            if "__pycache__" in path.parts:
                continue
            out = target / path.relative_to(src)
            if out.exists():  # a folder mapped separately (trident_search.core inside trident_search/)
                continue
            out.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, out)
        for marker in src.glob("py.typed"):
            shutil.copy2(marker, target / marker.name)
        back[target] = src.relative_to(REPO).as_posix()
    return back


def to_repo_paths(text: str, root: Path, back: dict[Path, str]) -> str:
    """``trident_search/core/engine.py`` -> ``core/engine.py`` (longest staged folder first)."""
    for staged, repo in sorted(back.items(), key=lambda kv: -len(str(kv[0]))):
        rel = staged.relative_to(root).as_posix() + "/"
        text = text.replace(str(staged) + "/", repo + "/")
        text = re.sub(rf"(?m)^{re.escape(rel)}", repo + "/", text)
    return text


def run(title: str, cmd: list[str], cwd: Path, back: dict[Path, str]) -> bool:
    print(f"== {title}: {' '.join(cmd)}", flush=True)
    env = {**os.environ, "PYTHONPATH": str(cwd)}
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    out = to_repo_paths(proc.stdout + proc.stderr, cwd, back)
    print(out.rstrip())
    print(f"== {title}: {'ok' if proc.returncode == 0 else 'FAILED'}", flush=True)
    return proc.returncode == 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=["mypy", "imports"])
    parser.add_argument("--keep", type=Path, help="stage into this folder and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="trident-gates-"))
    try:
        if args.keep:
            shutil.rmtree(root, ignore_errors=True)
        back = stage(root)
        ok = True
        if args.only in (None, "mypy"):
            cache = Path(os.environ.get("MYPY_CACHE_DIR") or REPO / ".mypy_cache")
            ok &= run("mypy", [str(BIN / "mypy"), "--config-file", str(REPO / "pyproject.toml"),
                               "--cache-dir", str(cache), *MYPY_TARGETS], root, back)
        if args.only in (None, "imports"):
            ok &= run("import-linter", [str(BIN / "lint-imports"), str(REPO / "pyproject.toml"),
                                        "--no-cache"], root, back)
        return 0 if ok else 1
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
