# Sourced by scripts/test and scripts/demo: find Python >= 3.11, make the virtualenv (outside the
# repository, keyed by the dependency list so a change of dependencies gets a fresh one), install tidings.
# Afterwards $VENV/bin is first on PATH.

pick_python() {
  for candidate in "${PYTHON:-}" python3 python3.13 python3.12 python3.11; do
    [ -n "$candidate" ] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  echo "error: tidings needs Python 3.11 or newer (set PYTHON=/path/to/python3.11)" >&2
  return 1
}

make_venv() {
  local extras="$1" python key
  python=$(pick_python)
  key=$( (cat pyproject.toml; "$python" -c 'import sys; print(sys.version)'; echo "$extras") | sha256sum | cut -c1-12)
  VENV="${TIDINGS_VENV:-${XDG_CACHE_HOME:-$HOME/.cache}/tidings/venvs/$key}"
  if [ ! -f "$VENV/.installed" ]; then
    echo "==> creating virtualenv $VENV" >&2
    rm -rf "$VENV"
    "$python" -m venv "$VENV"
    "$VENV/bin/python" -m pip install --quiet --upgrade pip
    "$VENV/bin/python" -m pip install --quiet -e ".$extras"
    touch "$VENV/.installed"
  else
    # The dependencies are in place; point the editable install at this checkout.
    "$VENV/bin/python" -m pip install --quiet --no-deps --no-build-isolation -e . 2>/dev/null \
      || "$VENV/bin/python" -m pip install --quiet --no-deps -e .
  fi
  export PATH="$VENV/bin:$PATH"
  export VENV
}
