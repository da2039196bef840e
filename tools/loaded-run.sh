#!/usr/bin/env bash
# Run a pytest selection N times in a row while every core is busy: one busy loop per core at nice 0 (a
# competing workload, not a polite one), stopped when the runs end. Stops at the first failing run.
# Usage: tools/loaded-run.sh [-n RUNS] [-j HOGS] <pytest args...>
#   tools/loaded-run.sh -n 2 tests/integration/test_tc_inventory.py tests/integration/test_two_masters.py
# Uses the Makefile's venv (run `make setup` first) unless PYTHON is set.
set -euo pipefail
runs=1
hogs=$(nproc)
while getopts n:j: opt; do
  case $opt in n) runs=$OPTARG ;; j) hogs=$OPTARG ;; *) exit 2 ;; esac
done
shift $((OPTIND - 1))
[ $# -gt 0 ] || { echo "usage: $0 [-n RUNS] [-j HOGS] <pytest args...>" >&2; exit 2; }
cd "$(dirname "$0")/.."
python=${PYTHON:-$HOME/.cache/deskfleet/venv-$(sha256sum requirements.lock | cut -c1-12)/bin/python}
[ -x "$python" ] || { echo "no venv at $python: run make setup" >&2; exit 1; }

hog_pids=()
stop_hogs() {
  for p in "${hog_pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait "${hog_pids[@]}" 2>/dev/null || true
}
trap stop_hogs EXIT
for ((i = 0; i < hogs; i++)); do
  nice -n 0 bash -c 'while :; do :; done' &
  hog_pids+=($!)
done
echo "loaded-run: $hogs busy loops (pids ${hog_pids[*]}), load: $(cut -d' ' -f1-3 /proc/loadavg)"

for ((run = 1; run <= runs; run++)); do
  start=$SECONDS
  rc=0
  "$python" -m pytest "$@" || rc=$?
  echo "loaded-run: run $run/$runs rc=$rc in $((SECONDS - start))s, load: $(cut -d' ' -f1-3 /proc/loadavg)"
  [ "$rc" -eq 0 ] || exit "$rc"
done
