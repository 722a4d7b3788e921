#!/usr/bin/env bash
# A dependency folder for a GPU machine whose Python lacks some packages and cannot install them (no network, no
# rights): copies pure-Python packages from a Python that has them (this machine's .venv by default) into DIR. Take
# DIR to the GPU machine and pass it with --deps DIR to gpu/smoke.sh and gpu/suite.sh, which put it on PYTHONPATH.
#
#   bash gpu/deps.sh DIR [MODULE...]     (MODULE: omegaconf when none is named)
#
# Options:
#   --python PY   the Python to copy from (default $PYTHON, else .venv/bin/python, else python3)
#   -h, --help    this text
#
# Packages with compiled parts (torch, tokenizers, safetensors, ...) only work on the same platform and Python
# version: install those with the machine's own package manager. A folder of pure-Python wheels works with --deps
# too, e.g. from `pip download --no-deps --only-binary=:all: -d DIR omegaconf` on a machine with network.
set -uo pipefail
source "$(dirname "$0")/lib.sh"

PY=$(default_python) dir="" modules=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) [ $# -ge 2 ] || die "--python needs a path"; PY=$2; shift 2 ;;
    --python=*) PY=${1#*=}; shift ;;
    -h|--help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) if [ -z "$dir" ]; then dir=$(abspath "$1"); else modules+=("$1"); fi; shift ;;
  esac
done
[ -n "$dir" ] || die "name the folder to fill: bash gpu/deps.sh DIR [MODULE...]"
[ ${#modules[@]} -gt 0 ] || modules=(omegaconf)
command -v "$PY" > /dev/null || die "no Python '$PY' (pass --python PATH or set PYTHON)"
mkdir -p "$dir" || die "cannot create $dir"
"$PY" - "$PROG" "$dir" "${modules[@]}" <<'PY'
import importlib.util
import shutil
import sys
from pathlib import Path

prog, dest, modules = sys.argv[1], Path(sys.argv[2]), sys.argv[3:]
for m in modules:
    spec = importlib.util.find_spec(m) if "." not in m else None
    if spec is None or not (spec.submodule_search_locations or spec.origin and Path(spec.origin).is_file()):
        print(f"{prog}: error: {sys.executable} cannot import {m}: nothing to copy (give a top-level module that "
              "this Python has)", file=sys.stderr)
        sys.exit(2)
    if spec.submodule_search_locations:  # a package: its folder
        src = Path(list(spec.submodule_search_locations)[0])
        shutil.rmtree(dest / src.name, ignore_errors=True)
        shutil.copytree(src, dest / src.name, ignore=shutil.ignore_patterns("__pycache__"))
    else:  # one file
        src = Path(spec.origin)
        shutil.copy2(src, dest / src.name)
    compiled = [p.name for p in (src.rglob("*") if src.is_dir() else [src]) if p.suffix in (".so", ".pyd")]
    note = f" (compiled parts, for this platform and Python only: {', '.join(compiled[:3])})" if compiled else ""
    print(f"{dest / src.name}: {m} from {src.parent}{note}")
PY
status=$?
[ "$status" -eq 0 ] || exit "$status"
echo "$dir: $(du -sh "$dir" | cut -f1); use it with: bash gpu/smoke.sh --deps $dir, bash gpu/suite.sh --deps $dir"
