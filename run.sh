#!/usr/bin/env bash
# The two commands of the README; each does all of its own set-up on a fresh machine.
#   bash run.sh demo [ARGS...]   install, then run the main job on the embedded default
#   bash run.sh test             install, then run every check CI runs (CI's .ci/run calls exactly this)
# The environment is a virtual env cached under ~/.cache/ssm_explore/venvs/<hash of requirements-lock.txt>
# (override with SSM_EXPLORE_VENV); it is never created inside the repository.
set -euo pipefail
cd "$(dirname "$0")"
ROOT=$(pwd)
PY=${PYTHON:-python3}

say()  { printf '\n\033[1m==> %s\033[0m\n' "$*"; }
fail() { printf '\n\033[1;31mFAILED: %s\033[0m\n' "$*" >&2; exit 1; }

# pip on these machines warns about missing local mirror folders for every package; keep real messages only
quiet_pip() { grep -v "is ignored: it is neither a file nor a directory" || true; }

setup_env() {
  # the key: the lock and the Python that runs it (PYTHON=python3.13 bash run.sh test gets its own environment)
  local pyver; pyver=$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])') || fail "no Python at PYTHON=$PY"
  local key; key=$({ cat requirements-lock.txt; echo "python $pyver"; } | sha256sum | cut -c1-16)
  VENV=${SSM_EXPLORE_VENV:-$HOME/.cache/ssm_explore/venvs/$key}
  if [ ! -f "$VENV/.complete" ]; then
    say "creating the environment in $VENV (first run only, a few minutes)"
    rm -rf "$VENV"; mkdir -p "$(dirname "$VENV")"
    "$PY" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q --upgrade pip setuptools wheel 2>&1 | quiet_pip
    # --no-deps: the lock is the whole environment; imgaug 0.4.0's metadata asks for the GUI opencv-python,
    # which would shadow the headless build the lock pins
    "$VENV/bin/python" -m pip install -q --no-deps -r requirements-lock.txt 2>&1 | quiet_pip; [ "${PIPESTATUS[0]}" -eq 0 ] || fail "installing requirements-lock.txt on Python $pyver"
    touch "$VENV/.complete"
  fi
  # the package itself, editable, against the pinned environment (fails if settings.ini asks for more than the lock)
  "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e . >/dev/null 2>&1 \
    || "$VENV/bin/python" -m pip install --no-deps --no-build-isolation -e . || fail "installing the ssm_explore package"
  # every requirement met, except the one the lock leaves out on purpose (opencv-python-headless provides cv2)
  local problems; problems=$("$VENV/bin/python" -m pip check 2>&1 | grep -v -E '^(No broken requirements found\.|imgaug 0\.4\.0 requires opencv-python, which is not installed\.)$' || true)
  [ -z "$problems" ] || { echo "$problems"; fail "the environment does not satisfy settings.ini (update requirements-lock.txt)"; }
  export PATH="$VENV/bin:$PATH"
  export MPLBACKEND=Agg PYTHONHASHSEED=0
}

cmd_demo() {
  setup_env
  ssm-explore demo "$@"
}

cmd_test() {
  setup_env
  local t0=$SECONDS log; log=$(mktemp)
  say "1/7 notebooks are clean (nbdev_clean changes nothing)"
  python -m ssm_explore.commands.dev clean || fail "notebooks are not clean (see above)"
  say "2/7 the library is what nbdev_export makes"
  python -m ssm_explore.commands.dev export || fail "the library differs from the notebooks (see above)"
  say "3/7 README.md is what nbs/index.ipynb makes; every notebook has its Colab link and install cell"
  python -m ssm_explore.commands.dev readme-check || fail "README.md is stale (see above)"
  python -m ssm_explore.commands.dev colab-check || fail "a notebook lacks its Colab cells (see above)"
  say "4/7 nbdev_test on every notebook (flags slow, cuda skipped)"
  OMP_NUM_THREADS=1 nbdev_test --n_workers 2 --timing 2>&1 | tee "$log"; [ "${PIPESTATUS[0]}" -eq 0 ] || fail "nbdev_test: a notebook failed (named above)"
  say "5/7 pytest tests/"
  set +e; python -m pytest tests/ -q -p no:cacheprovider 2>&1 | tee "$log"; local rc=${PIPESTATUS[0]}; set -e
  [ "$rc" -eq 0 ] || fail "pytest tests/ (exit $rc)"
  local summary; summary=$(grep -E '[0-9]+ (passed|failed|error)' "$log" | tail -1 || true)
  say "6/7 docs build (Quarto when present, else nbdev preprocessing + nbconvert) and page/figure checks"
  if command -v quarto >/dev/null 2>&1; then
    nbdev_docs || fail "nbdev_docs (Quarto)"
  fi
  python -m ssm_explore.commands.dev docs || fail "the docs build or its checks (see above)"
  if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    say "installing Debian's chromium for the browser test"
    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) || fail "apt-get install chromium"
  fi
  if command -v chromium >/dev/null 2>&1; then
    python -m ssm_explore.commands.dev browser || fail "the browser test (screenshots in _docs/_screenshots)"
  elif [ -n "${CI:-}" ]; then fail "CI needs chromium for the browser test"
  else say "skipping the browser test: chromium is not installed (apt-get install chromium)"; fi
  say "7/7 all checks passed in $((SECONDS - t0)) s"
  echo "$summary"
}

case "${1:-}" in
  demo) shift; cmd_demo "$@" ;;
  test) shift; cmd_test "$@" ;;
  *) echo "usage: bash run.sh demo [ARGS...] | bash run.sh test" >&2; exit 2 ;;
esac
