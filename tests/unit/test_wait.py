"""``harness/wait.py``: waits return the value, name what timed out, stop early on a dead process."""

import subprocess
import sys
import time

import pytest

from harness.wait import poll, wait_for


def test_wait_for_returns_the_first_truthy_value():
    values = iter([0, None, "", {"ready": 1}])
    assert wait_for(lambda: next(values), 5, 0.01) == {"ready": 1}


def test_wait_for_names_what_timed_out():
    with pytest.raises(TimeoutError, match="the port file"):
        wait_for(lambda: False, 0.2, 0.05, "the port file")


def test_wait_for_fails_at_once_when_the_process_exits():
    proc = subprocess.Popen([sys.executable, "-c", "raise SystemExit(3)"])  # pylint: disable=consider-using-with
    proc.wait(10)
    started = time.monotonic()
    with pytest.raises(RuntimeError, match="exited with 3"):
        wait_for(lambda: False, 30, 0.05, "the server", proc=proc)
    assert time.monotonic() - started < 5


def test_poll_returns_the_last_value_without_raising():
    assert poll(lambda: [], 0.1, 0.02) == []
