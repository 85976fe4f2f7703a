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

# Run a command, showing its output only if it fails (pip's build backends are chatty on success).
quietly() {
  local output
  if ! output=$("$@" 2>&1); then
    echo "$output" >&2
    echo "error: failed: $*" >&2
    return 1
  fi
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
    quietly "$VENV/bin/python" -m pip install --upgrade pip
    quietly "$VENV/bin/python" -m pip install -e ".$extras"
    touch "$VENV/.installed"
  else
    # The dependencies are in place; point the editable install at this checkout.
    quietly "$VENV/bin/python" -m pip install --no-deps -e .
  fi
  export PATH="$VENV/bin:$PATH"
  export VENV
}
