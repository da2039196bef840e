#!/usr/bin/env bash
# `make test`: every tier. The integration tier (real masters, mostly waiting on daemons) runs in one pytest and
# the other tiers in a second one beside it: on 2 cores the run takes the longer of the two, not their sum.
# The README lab test (its own lab, no shared fixture) goes with the second: the two halves then take about as long.
# The second pytest gets its own TMPDIR: salt-factories names its daemons' dirs after their ids under it.
# With arguments (`make test T=...`): one pytest with exactly those.
set -uo pipefail
py=$1
shift
if [ $# -gt 0 ]; then
  exec "$py" -m pytest "$@"
fi
second_tmp=$(mktemp -d /tmp/deskfleet-tests-b.XXXXXX)
chmod 1777 "$second_tmp"  # as /tmp: daemons that drop root (PostgreSQL's initdb) make their dirs in it
logs=$(mktemp -d /tmp/deskfleet-test-logs.XXXXXX)
trap 'kill 0 2>/dev/null' INT TERM
started=$(date +%s)
readme=tests/integration/test_readme_examples.py
( "$py" -m pytest tests/integration --ignore="$readme" 2>&1 | sed -u 's/^/[integration] /' | tee "$logs/first"
  exit "${PIPESTATUS[0]}" ) &
first=$!
( TMPDIR=$second_tmp "$py" -m pytest tests/unit tests/functional tests/cloud tests/lab "$readme" 2>&1 \
    | sed -u 's/^/[unit functional cloud lab readme] /' | tee "$logs/second"; exit "${PIPESTATUS[0]}" ) &
second=$!
wait "$first"; rc_first=$?
wait "$second"; rc_second=$?
rm -rf "$second_tmp"
# the halves interleave and the first to end scrolls away: repeat both summaries last, where a log's tail shows them
echo "make test: summary of both halves"
for half in first second; do
  grep -E '^\[[^]]*\] ((FAILED|ERROR) tests/|SKIPPED \[|XPASS |=+ .*(passed|failed|error|skipped|no tests).* =+$)' \
    "$logs/$half" || true  # not captured log lines ("ERROR    salt.crypt: ...")
  # where the time goes (pytest prints the slowest first): what to shorten when CI nears its budget
  grep -E '^\[[^]]*\] [0-9.]+s (setup|call|teardown) +tests/' "$logs/$half" | head -8 || true
done
rm -rf "$logs"
echo "make test: integration exit $rc_first; unit functional cloud lab readme exit $rc_second; $(( $(date +%s) - started )) s"
[ "$rc_first" -eq 0 ] && [ "$rc_second" -eq 0 ]
