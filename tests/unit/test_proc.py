"""
``harness/proc.py`` with real processes: a stopped group leaves nothing behind, neither a
leader that ignores SIGTERM nor a child a cleanly exiting leader left running.
"""

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest

from harness.proc import spawn, stop_group, stop_groups
from harness.wait import wait_for

# a leader that ignores SIGTERM and forks a child that ignores it too; the child prints its pid
STUBBORN = (
    "import os, signal, sys, time\n"
    "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
    "pid = os.fork()\n"
    "if pid == 0:\n"
    "    time.sleep(600)\n"
    "print(pid, flush=True)\n"
    "time.sleep(600 if sys.argv[1] == 'stay' else 0)\n"
)


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    with open(f"/proc/{pid}/stat") as stat:  # a zombie child of init counts as gone
        return stat.read().rsplit(")", 1)[1].split()[0] != "Z"


@pytest.fixture
def started():
    """Start the stubborn pair; whatever the test found, kill the child afterwards (by pid)."""
    children = []

    def start(mode):
        proc, child = _start(mode)
        children.append(child)
        return proc, child

    yield start
    for child in children:
        with contextlib.suppress(ProcessLookupError):
            os.kill(child, signal.SIGKILL)


def _start(mode):
    proc = spawn([sys.executable, "-c", STUBBORN, mode], stdout=subprocess.PIPE, text=True)
    child = int(proc.stdout.readline())
    assert os.getpgid(child) == proc.pid  # the child is in the leader's own group
    return proc, child


def test_a_leader_ignoring_sigterm_is_killed_with_its_group_after_the_grace(started):
    proc, child = started("stay")
    started = time.monotonic()
    assert stop_group(proc, grace=1) == -signal.SIGKILL
    assert time.monotonic() - started >= 1
    wait_for(lambda: not _alive(child), 10, 0.05, "the child to die")


def test_a_child_left_by_a_clean_leader_exit_is_killed_too(started):
    proc, child = started("go")
    proc.wait(10)
    assert _alive(child)
    stop_groups([proc], grace=1)
    wait_for(lambda: not _alive(child), 10, 0.05, "the orphaned child to die")


def test_stopping_a_gone_process_is_harmless():
    proc = spawn([sys.executable, "-c", "pass"])
    proc.wait(10)
    assert stop_group(proc) == 0
    assert stop_group(None) is None
