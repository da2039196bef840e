"""
Process control for everything the lab starts (salt daemons, novalab, helpers, tools in a
netns): each child runs in its own process group and is stopped as a group, so nothing it
forked is left behind. The one copy of "stop a process group" for harness/, bench/ and tests/.
"""

import os
import signal
import socket
import subprocess
import time


def spawn(argv, log_path=None, **popen_kwargs):
    """Start ``argv`` in a new process group; stdout+stderr appended to ``log_path`` if given."""
    popen_kwargs.setdefault("start_new_session", True)
    if log_path is None:
        return subprocess.Popen(argv, **popen_kwargs)  # pylint: disable=consider-using-with
    with open(log_path, "ab") as log:
        return subprocess.Popen(  # pylint: disable=consider-using-with
            argv, stdout=log, stderr=subprocess.STDOUT, **popen_kwargs
        )


def signal_group(pid, sig):
    """Send ``sig`` to process group ``pid`` (a ``start_new_session`` child leads its own). False if it is gone."""
    try:
        os.killpg(pid, sig)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def stop_groups(procs, grace=10.0, reap=10.0):
    """
    SIGTERM every process group at once (SIGCONT first: a paused group could not act on it),
    wait up to ``grace`` s for the leaders, then SIGKILL each group, leader gone or not:
    a clean leader exit can still leave children behind. All at once because a salt-minion
    takes 10-20 s to act on SIGTERM: one after the other would take minutes.
    """
    procs = [p for p in procs if p is not None]
    for proc in procs:
        if proc.poll() is None:
            signal_group(proc.pid, signal.SIGCONT)
            signal_group(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    for proc in procs:
        try:
            proc.wait(max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for proc in procs:
        signal_group(proc.pid, signal.SIGKILL)
        try:
            proc.wait(reap)
        except subprocess.TimeoutExpired:
            pass


def stop_group(proc, grace=10.0, reap=10.0):
    """:func:`stop_groups` for one process; returns its exit code (None if it could not be reaped)."""
    if proc is None:
        return None
    stop_groups([proc], grace, reap)
    return proc.returncode


def free_port():
    """A TCP port free on 127.0.0.1 now (for daemons started side by side)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
