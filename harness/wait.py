"""
Waiting on conditions, never on fixed sleeps: the one ``wait_for`` for harness/, bench/ and tests/.
Deadlines are generous on purpose (a loaded 2-core box).
"""

import time


def poll(fn, timeout=60, interval=0.3):
    """Call ``fn`` until it returns something truthy or ``timeout`` s pass; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        value = fn()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(interval)


def wait_for(fn, timeout=60, interval=0.5, what="condition", proc=None):
    """
    Poll ``fn`` until it returns something truthy; return that, or raise TimeoutError naming
    ``what``. With ``proc`` (a Popen), raise RuntimeError as soon as that process has exited.
    """

    def check():
        value = fn()
        if not value and proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.pid} exited with {proc.returncode} while waiting for {what}")
        return value

    value = poll(check, timeout, interval)
    if not value:
        raise TimeoutError(f"timed out after {timeout}s waiting for {what}")
    return value
