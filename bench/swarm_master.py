"""
The swarm bench's tc master: started from the shipped ``salt_tc/master.d`` (harness.lab,
paths rewritten, temp dir), its seats' keys accepted up front; what the bench reads
about it: CPU seconds and memory of its process tree, ``salt/auth`` events per seat
(the master fires one per processed sign-in: ``auth_events: True`` is shipped), the
inventory store; and the publication that follows a restart.
"""

import collections
import pathlib
import sqlite3
import sys
import threading
import time

import psutil

from bench import swarm_keys

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
RETIRED = "tc-swarm-retired"


class SwarmMaster:
    """A tc master of the shipped config in ``base``; restartable with the same keys and store."""

    def __init__(self, lab, name, key_dirs, overrides=None):
        from harness import saltconf  # pylint: disable=import-outside-toplevel
        from harness.lab import Master  # pylint: disable=import-outside-toplevel

        conf = saltconf.lab_master_config("tc", lab.base / "etc")
        for key, value in (overrides or {}).items():  # None: Salt's own value (the shipped key removed)
            if value is None:
                conf.pop(key, None)
            else:
                conf[key] = value
        self.master = Master(lab, name, conf)
        lab.daemons.append(self.master)
        swarm_keys.accept(self.master.opts["pki_dir"], key_dirs)
        # one key no seat uses: ``salt-key -d`` of it is the AES rotation phase's trigger (a retired seat)
        if key_dirs:
            first = key_dirs[min(key_dirs)]
            swarm_keys.accept(self.master.opts["pki_dir"], {RETIRED: first})
        self.auth = None

    @property
    def opts(self):
        return self.master.opts

    def start(self, timeout=180):
        self.master.start()
        self.master.wait_ready(timeout)
        self.auth = AuthCounter(self.opts)
        self.settled = self.wait_quiet()
        return self

    def wait_quiet(self, share=0.15, window=3.0, cap=180.0):
        """
        Seconds until the master's tree uses under ``share`` of a core over ``window`` s (cap ``cap``):
        a starting master loads engines, workers and the fileserver for tens of seconds on a loaded
        box, and a phase measured on top of that would measure the start.
        """
        t0 = time.time()
        while time.time() - t0 < cap:
            before = self.usage()["cpu_s"]
            time.sleep(window)
            if (self.usage()["cpu_s"] - before) / window < share:
                break
        return round(time.time() - t0, 1)

    def restart(self):
        from harness.lab import stop_daemons  # pylint: disable=import-outside-toplevel

        if self.auth:
            self.auth.stop()
        stop_daemons([self.master], timeout=20)
        return self.start()

    def rotate_aes(self, timeout=None):
        """
        ``salt-key -d`` one accepted key (as ``seat.retire`` does); seconds until the
        maintenance loop took the drop file, i.e. made the new AES key.
        """
        import subprocess  # pylint: disable=import-outside-toplevel

        dfn = pathlib.Path(self.opts["cachedir"]) / ".dfn"
        t0 = time.time()
        subprocess.run([str(pathlib.Path(sys.executable).parent / "salt-key"), "-c", str(self.master.conf_dir),
                        "-y", "-d", RETIRED], capture_output=True, check=True, timeout=120)  # fmt: skip
        if not dfn.exists():
            raise RuntimeError(f"salt-key -d {RETIRED} left no {dfn} (rotate_aes_key off?)")
        deadline = t0 + (timeout or self.opts["loop_interval"] + 60)
        while dfn.exists():
            if time.time() > deadline:
                raise RuntimeError(f"{dfn} still there after {time.time() - t0:.0f} s: no AES rotation")
            time.sleep(0.5)
        return round(time.time() - t0, 1)

    def stop(self):
        if self.auth:
            self.auth.stop()

    def _tree(self):
        """The master's processes (none if it is gone)."""
        try:
            procs = [psutil.Process(self.master.proc.pid)]
            return procs + procs[0].children(recursive=True)
        except psutil.Error:
            return []

    def usage(self):
        """CPU seconds (user+system) and memory (RSS and PSS sums, MB) of the master's whole process tree."""
        cpu = rss = pss = 0.0
        procs = self._tree()
        for proc in procs:
            try:
                times = proc.cpu_times()
                mem = proc.memory_full_info()
            except psutil.Error:
                continue
            cpu += times.user + times.system
            rss += mem.rss
            pss += getattr(mem, "pss", mem.rss)
        return {"cpu_s": cpu, "rss_mb": rss / 2**20, "pss_mb": pss / 2**20, "procs": len(procs)}

    def descriptors(self):
        """
        ``(most descriptors one master process holds, that process's limit)``: a seat holds two connections
        and a sign-in opens a third, all on the request router. Cheap (no smaps read): polled during storms.
        """
        most = (0, 0)
        for proc in self._tree():
            try:
                most = max(most, (proc.num_fds(), proc.rlimit(psutil.RLIMIT_NOFILE)[0]))
            except psutil.Error:
                continue
        return most

    def publish(self, target):
        """
        One publication (``test.ping`` to one seat; with zmq_filtering off every seat
        receives it): ``(publish return, time it was sent)``.
        """
        import salt.client  # pylint: disable=import-outside-toplevel
        import salt.exceptions  # pylint: disable=import-outside-toplevel

        deadline = time.time() + 120
        while True:  # a master just restarted answers the publish request once its workers are up
            client = salt.client.LocalClient(c_path=str(self.master.conf_dir / "master"))
            try:
                sent_at = time.time()
                return client.run_job([target], "test.ping", tgt_type="list", timeout=30), sent_at
            except salt.exceptions.SaltClientError:
                if time.time() > deadline:
                    raise
                time.sleep(1)
            finally:
                client.destroy()


class AuthCounter:
    """``salt/auth`` events on the master bus, per seat, in a thread."""

    def __init__(self, opts):
        import salt.utils.event  # pylint: disable=import-outside-toplevel

        self.by_seat = collections.defaultdict(list)
        self._stop = threading.Event()
        self.bus = salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True)
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self._stop.is_set():
            try:
                event = self.bus.get_event(wait=0.5, tag="salt/auth", full=True)
            except Exception:  # pylint: disable=broad-except
                time.sleep(0.2)
                continue
            if event and isinstance(event.get("data"), dict):
                self.by_seat[event["data"].get("id")].append(time.time())

    def since(self, mark):
        return {seat: sum(1 for t in times if t >= mark) for seat, times in list(self.by_seat.items())}

    def stop(self):
        self._stop.set()
        self.thread.join(5)
        self.bus.destroy()


def store_rows(opts):
    """``{seat: (epoch, seq, missed)}`` and the ingest counters from the master's inventory store."""
    sys.path.insert(0, str(CHECKOUT / "_utils"))
    import deskfleet_store  # pylint: disable=import-outside-toplevel

    path = deskfleet_store.default_path(opts, "tc")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
    try:
        rows = {s: (e, q, m) for s, e, q, m in conn.execute("SELECT seat, epoch, seq, missed FROM ingest_seq")}
        counters = dict(conn.execute("SELECT name, value FROM ingest_counters"))
        seats = conn.execute("SELECT COUNT(*) FROM seats").fetchone()[0]
    finally:
        conn.close()
    return rows, counters, seats
