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
# Installing envpin builds its JupyterLab extension (jupyterlab_ext/, TypeScript) with npm.
if ! command -v npm >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's nodejs and npm (envpin's JupyterLab extension is built with them)"
    apt-get update -qq && apt-get install -y -qq nodejs npm >/dev/null
  else
    say "npm is missing: install Node.js >= 18 and npm (as root: apt-get install nodejs npm), then run this again"
    exit 1
  fi
fi
# Reinstall when the package's metadata or the extension's sources changed since the last install.
if [ ! -f "$STAMP" ] || [ pyproject.toml -nt "$STAMP" ] \
   || [ -n "$(find jupyterlab_ext/src jupyterlab_ext/style jupyterlab_ext/package.json -newer "$STAMP" 2>/dev/null | head -1)" ]; then
  say "installing envpin[$EXTRAS] and its dependencies into $VENV"
  # (the grep drops a harmless pip warning some machines print for every package)
  "$PY" -m pip install -q --upgrade pip 2> >(grep -v "is ignored: it is neither" >&2) >/dev/null
  "$PY" -m pip install -q -e ".[$EXTRAS]" 2> >(grep -v "is ignored: it is neither" >&2)
  touch "$STAMP"
fi
if [ "$EXTRAS" = test ]; then
  # The lowest version of each library whose internals envpin uses (envpin/internals.py), for
  # tests/test_library_internals.py, and the Ray releases the compat test imports: fetched once into
  # .cache/, never during a test.
  say "checking the library versions the compatibility tests import"
  "$PY" -m tools.library_versions
  "$PY" -m tools.ray_versions 2> >(grep -v "is ignored: it is neither" >&2)
fi
if [ "$EXTRAS" != docs ]; then  # the documentation needs no engine
  say "checking the Docker engine"
  "$PY" -m tools.docker_engine
fi
