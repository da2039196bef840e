"""
What the ingest bench reads about a running master: the store's ``accepted`` counter, and
CPU seconds per process group from /proc (the master, its engine, reactor, bus publisher).
"""

import os
import pathlib
import re
import sqlite3
import sys
import time

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]


class Store:
    """Read-only view of a master's deskfleet store: the ``accepted`` counter."""

    def __init__(self, master):
        sys.path.insert(0, str(CHECKOUT / "_utils"))
        import deskfleet_store  # pylint: disable=import-outside-toplevel

        self.path = deskfleet_store.default_path(master.opts, "tc")
        self.conn = None
        self.why = None

    def counters(self):
        if self.conn is None:
            if not os.path.exists(self.path):
                return {}
            self.conn = sqlite3.connect(f"file:{self.path}?mode=ro", uri=True, timeout=5)
        try:
            return dict(self.conn.execute("SELECT name, value FROM ingest_counters").fetchall())
        except sqlite3.OperationalError:  # table not there yet
            return {}

    def accepted(self):
        return self.counters().get("accepted", 0)

    def seats(self):
        if self.conn is None:
            return 0
        try:
            return self.conn.execute("SELECT COUNT(*) FROM seats").fetchone()[0]
        except sqlite3.OperationalError:
            return 0

    def wait(self, target, stall, cap, busy=lambda: False, interval=0.05):
        """
        Poll until ``accepted >= target``, or no progress for ``stall`` s (while
        ``busy()`` is false), or ``cap`` s. Returns ``(accepted, t_reached)`` where
        ``t_reached`` is when the last increase was seen; ``self.why`` says which
        of ``target``, ``stall``, ``cap`` ended the wait.
        """
        start = time.time()
        last_value, last_change = self.accepted(), time.time()
        while True:
            value = self.accepted()
            now = time.time()
            if value != last_value:
                last_value, last_change = value, now
            for why, hit in (
                ("target", value >= target),
                ("stall", now - last_change > stall and not busy()),
                ("cap", now - start > cap),
            ):
                if hit:
                    self.why = why
                    return value, last_change
            time.sleep(interval)

    def close(self):
        if self.conn is not None:
            self.conn.close()


def _group_procs(pgid):
    """``(pid, command line)`` of the live processes in process group ``pgid``."""
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        yield int(pid), cmd


def group_cpu(pgid, match=None):
    """CPU seconds (user+sys) of the live processes in process group ``pgid`` (optionally: cmdline contains ``match``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid, cmd in _group_procs(pgid):
        if match and match not in cmd:
            continue
        try:
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_snapshot(master, minions):
    return {
        "master": group_cpu(master.proc.pid),
        "reactor": group_cpu(master.proc.pid, "engines.reactor"),
        "engine": group_cpu(master.proc.pid, "engines.tc_ingest"),
        "bus publisher": group_cpu(master.proc.pid, "EventPublisher"),
        "minions": sum(group_cpu(m.proc.pid) for m in minions),
    }


def cpu_text(cpu):
    return ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items() if v or k in ("master", "minions"))


def engine_pid(master):
    """The tc_ingest engine process of ``master`` (same process group, named by Salt)."""
    return next((pid for pid, cmd in _group_procs(master.proc.pid) if "engines.tc_ingest" in cmd), None)


def foreign_salt(base):
    """How many salt-* processes not started by this bench run on the box (they share the cores)."""
    count = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if re.search(r"/salt-(master|minion|run|call)\b|\bsalt \S", cmd) and str(base) not in cmd:
            count += 1
    return count
