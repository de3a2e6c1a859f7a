# Shared setup for scripts/test and scripts/quickstart (sourced, not run).
# Idempotent: a second run reuses the venv, the engine and the cached images.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
VENV="${ENVPIN_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
say() { printf '\033[1m[envpin]\033[0m %s\n' "$*" >&2; }

if [ ! -x "$PY" ]; then
  say "creating virtualenv $VENV"
  python3 -m venv "$VENV"
fi
EXTRAS="${1:-test}"
STAMP="$VENV/.envpin-installed-$EXTRAS"
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ]; then
  say "installing envpin[$EXTRAS] and its dependencies into $VENV"
  # (the grep drops a harmless pip warning some machines print for every package)
  "$PY" -m pip install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2) >/dev/null
  "$PY" -m pip install -q -e ".[$EXTRAS]" 2> >(grep -v "is ignored: it is neither" >&2)
  touch "$STAMP"
fi
if [ "$EXTRAS" != docs ]; then  # the documentation needs no engine
  say "checking the Docker engine"
  "$PY" -m tools.docker_engine
fi
if [ "$EXTRAS" = test ]; then
  say "checking the Ray releases the compat test imports (fetched once into .cache/ray-compat)"
  "$PY" -m tools.ray_versions 2> >(grep -v "is ignored: it is neither" >&2)
fi
