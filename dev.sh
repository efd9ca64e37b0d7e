#!/usr/bin/env bash
# Set up the workbench in .venv/ (created when missing) and then:
#   bash dev.sh lab    open JupyterLab on notebooks/
#   bash dev.sh test   run the whole test suite (what CI runs); with arguments, pytest ARGS
# Needs only Python >= 3.10 (3.11 recommended) and the package registries.
set -euo pipefail
cd "$(dirname "$0")"

python_bin() {
  for candidate in python3.11 python3 python; do
    if command -v "$candidate" >/dev/null 2>&1 &&
       "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 10))'; then
      echo "$candidate"; return
    fi
  done
  echo "dev.sh: no Python >= 3.10 found; install Python 3.11" >&2; exit 1
}

setup() {
  if [ ! -x .venv/bin/python ]; then
    echo "dev.sh: creating .venv/"
    "$(python_bin)" -m venv .venv
  fi
  # Reinstall only when what we install from has changed.
  stamp=$(cat pyproject.toml constraints.txt dev.sh scripts/install_browser.sh | sha256sum | cut -c1-16)
  if [ "$(cat .venv/.workbench-stamp 2>/dev/null)" != "$stamp" ]; then
    echo "dev.sh: installing the workbench and its dependencies into .venv/"
    .venv/bin/python -m pip install -q --upgrade pip
    .venv/bin/python -m pip install -q -c constraints.txt -e ".[dev]"
    bash scripts/install_browser.sh .venv
    echo "$stamp" > .venv/.workbench-stamp
  fi
}

case "${1:-}" in
  lab)
    setup
    shift
    extra=()
    [ "$(id -u)" = 0 ] && extra+=(--allow-root)
    exec .venv/bin/workbench lab "${extra[@]}" "$@"
    ;;
  test)
    setup
    shift
    if [ $# -gt 0 ]; then exec .venv/bin/python -m pytest "$@"; fi
    # The whole suite in two halves. The tests that neither run a notebook nor drive the
    # browser run on both cores, one torch thread each, a test file per worker at a time (a
    # model two files need is trained once: the second waits on its cache file's lock), and
    # threads that wait sleep rather than spin (a 2-thread training beside the other worker
    # would otherwise slow both down many times over). The notebooks and the browser come
    # after, one at a time: they assert time budgets, and read the models the first half
    # cached.
    status=0
    OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE .venv/bin/python -m pytest -n 2 --dist loadfile \
      -m "not notebook and not browser" || status=$?
    .venv/bin/python -m pytest -m "notebook or browser" || status=$?
    exit "$status"
    ;;
  *)
    echo "usage: bash dev.sh lab | test [pytest arguments]" >&2
    exit 2
    ;;
esac
