# Shared by gpu/smoke.sh and gpu/suite.sh (sourced, not run): the Python to use, the dependency folders, the
# environment check and the card's description. Each function prints at most one error line and returns 2.

GPU_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(dirname "$GPU_DIR")
PROG="gpu/$(basename "$0")"

die() {  # one error line on stderr, exit 2
  echo "$PROG: error: $*" >&2
  exit 2
}

abspath() {  # an absolute path for a path given relative to the caller's folder
  case "$1" in /*) printf '%s\n' "$1" ;; *) printf '%s/%s\n' "$PWD" "$1" ;; esac
}

usage() {  # the comment block at the top of the script
  sed -n '2,/^[^#]/{/^#/s/^# \{0,1\}//p}' "$0"
}

# The Python: --python, else $PYTHON, else the repository's .venv, else python3 on PATH. The package runs from src/,
# so it need not be installed.
default_python() {
  if [ -n "${PYTHON:-}" ]; then echo "$PYTHON"
  elif [ -x "$ROOT/.venv/bin/python" ]; then echo "$ROOT/.venv/bin/python"
  else echo python3; fi
}

# PYTHONPATH: src/, then each --deps folder and the wheels in it (a pure-Python wheel imports from the .whl file),
# then whatever PYTHONPATH held already.
set_pythonpath() {  # set_pythonpath DEPS_DIR...
  local path="$ROOT/src" dir whl
  for dir in "$@"; do
    [ -d "$dir" ] || die "--deps $dir: no such folder (make one with: bash gpu/deps.sh $dir)"
    path="$path:$dir"
    for whl in "$dir"/*.whl; do
      [ -f "$whl" ] && path="$path:$whl"
    done
  done
  export PYTHONPATH="$path${PYTHONPATH:+:$PYTHONPATH}"
}

# Every module the scripts import must import; prints one line of versions (and the card), or one error line and
# returns 2. check_env CPU MODULE... (CPU: 1 when --cpu was given; else a CUDA device is required.)
check_env() {
  command -v "$PY" > /dev/null || die "no Python '$PY' (pass --python PATH or set PYTHON)"
  "$PY" - "$PROG" "$@" <<'PY'
import importlib
import sys

prog, cpu, modules = sys.argv[1], sys.argv[2] == "1", sys.argv[3:]
missing, broken = [], []
for m in modules:
    try:
        importlib.import_module(m)
    except ModuleNotFoundError as e:
        (missing if e.name == m or (e.name or "").split(".")[0] == m else broken).append((m, e))
    except Exception as e:  # noqa: BLE001 - e.g. a torch build that does not load
        broken.append((m, e))
pip = {"yaml": "pyyaml"}
if broken:
    m, e = broken[0]
    first = (str(e).splitlines() or [""])[0]
    print(f"{prog}: error: {sys.executable} cannot import {m} ({type(e).__name__}: {first})", file=sys.stderr)
    sys.exit(2)
if missing:
    names = " ".join(m for m, _ in missing)
    print(f"{prog}: error: {sys.executable} lacks {', '.join(m for m, _ in missing)}: install "
          f"{'it' if len(missing) == 1 else 'them'} (pip install {' '.join(pip.get(m, m) for m, _ in missing)}) or "
          f"pass --deps DIR, a folder that holds {'it' if len(missing) == 1 else 'them'} (bash gpu/deps.sh DIR "
          f"{names} makes one from a Python that has {'it' if len(missing) == 1 else 'them'})", file=sys.stderr)
    sys.exit(2)
import accelerate  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

cuda = torch.cuda.is_available()
card = torch.cuda.get_device_name(0) if cuda else "none"
print(f"# python {sys.version.split()[0]} ({sys.executable}), torch {torch.__version__}, transformers "
      f"{transformers.__version__}, accelerate {accelerate.__version__}, cuda {cuda}, card {card!r}", flush=True)
if not cpu and not cuda:
    print(f"{prog}: error: torch {torch.__version__} sees no CUDA device (CUDA build: {torch.version.cuda}): "
          "pass --cpu to run on the CPU", file=sys.stderr)
    sys.exit(2)
PY
}

write_card() {  # write_card OUT: OUT/gpu.csv, the card as nvidia-smi names it (nothing without nvidia-smi)
  if command -v nvidia-smi > /dev/null; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$1/gpu.csv" 2> /dev/null \
      || rm -f "$1/gpu.csv"
  fi
}
