"""
``make bench-ingest`` / ``python -m bench.ingest``: thin-client asset ingestion
on the tc master, four paths side by side in one run, on this box, with the
same firehose (``bench/_modules/tc_firehose.py``: real salt-minions sending
signed ``tc_status`` beacon events, one event per request, as the beacon does).

1. bus ceiling  - a master WITHOUT the tc_ingest engine; a bare listener on the
                  master event bus counts the events. Nothing stores anything.
2. naive        - reactor -> runner per event (``bench/reactor/tc_naive.sls`` ->
                  ``bench/_runners/tc_naive.py``), same store and validation.
3. deskfleet    - the shipped config: the tc_ingest engine, batches by size/time.
                  Plus a tail probe: a partial batch with nothing after it must
                  be stored on the engine's own timer.
4. store only   - signed events fired straight onto the deskfleet master's bus
                  (no minion transport): how fast the engine validates and stores.
                  Compared with the same firehose counted by the bare listener on
                  the engine-less master (direct-fire bus ceiling), and with the
                  engine draining a queued backlog (engine paused while firing).

Bus and deskfleet run in interleaved rounds (both masters up, idle one waits),
the median of each is reported; then store only; then naive on its own master.
On the storing paths the path's consumer is the only one on the bus (no probe
listener): the start is the first send by a minion, the end the last increase
of the store's ``accepted`` counter. Every daemon is stopped on exit. The last
line of output is one JSON object.
"""

import argparse
import faulthandler
import json
import math
import os
import pathlib
import re
import shutil
import signal
import statistics
import sqlite3
import subprocess
import sys
import tempfile
import time

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
BENCH = CHECKOUT / "bench"
TAG_RE = re.compile(r"^salt/beacon/([^/]+)/tc_status/status$")
HEARTBEAT_S = 300
HEADROOM = 0.5
TARGETS = {"vs_ceiling": 0.9, "vs_naive": 8.0, "store_only_eps": 2000.0}

_CHILDREN = []  # helper processes (bus listeners, direct firers) to reap on the way out


def say(text=""):
    print(text, flush=True)


# ---- helper processes ---------------------------------------------------------------


def _spawn(args, log_path):
    log = open(log_path, "ab")  # pylint: disable=consider-using-with
    proc = subprocess.Popen(  # pylint: disable=consider-using-with
        args, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, cwd=str(CHECKOUT)
    )
    log.close()
    _CHILDREN.append(proc)
    return proc


def _reap(proc, timeout=10):
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)
        except ProcessLookupError:
            pass
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def stop_all(daemons, timeout=12):
    """
    SIGTERM every daemon's process group at once, then wait; SIGKILL what is left
    after ``timeout``. A salt-minion here notices SIGTERM only ~10 s later (and
    sometimes > 20 s), so ``Lab.stop`` one daemon after the other takes minutes.
    ``Daemon.stop`` then finds them gone.
    """
    live = [d for d in daemons if d.proc is not None and d.proc.poll() is None]
    for daemon in live:
        try:
            os.killpg(daemon.proc.pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.time() + timeout
    for daemon in live:
        try:
            daemon.proc.wait(max(0.1, deadline - time.time()))
        except subprocess.TimeoutExpired:
            pass
    for daemon in live:
        try:
            os.killpg(daemon.proc.pid, signal.SIGKILL)  # the group: children left behind by a clean exit too
        except ProcessLookupError:
            pass
    for daemon in daemons:
        daemon.stop()


def reap_all():
    for proc in list(_CHILDREN):
        _reap(proc)


def _wait_file(path, proc, timeout, what):
    deadline = time.time() + timeout
    while not path.exists():
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited early ({proc.returncode}); see {path.parent}")
        if time.time() > deadline:
            raise TimeoutError(f"timed out waiting for {what}")
        time.sleep(0.05)


class Listener:
    """A bare bus listener in its own process (``_listen`` below); results as JSON."""

    def __init__(self, master, work, name, expect, returns=0, idle=8.0, deadline=300.0):
        self.out = work / f"{name}.listen.json"
        ready = work / f"{name}.listen.ready"
        self.proc = _spawn(
            [
                sys.executable, "-m", "bench.ingest", "_listen",
                "--master-conf", str(master.conf_dir / "master"),
                "--out", str(self.out), "--ready", str(ready),
                "--expect", str(expect), "--returns", str(returns),
                "--idle", str(idle), "--deadline", str(deadline),
            ],
            work / f"{name}.listen.log",
        )
        _wait_file(ready, self.proc, 60, f"the {name} bus listener")

    def result(self, timeout=600):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        _reap(self.proc)
        return json.loads(self.out.read_text()) if self.out.exists() else {}


def trigger(master, target, fun, *args):
    """``salt --async target fun args`` → jid (returns are collected by a listener)."""
    cmd = [str(_bin("salt")), "-c", str(master.conf_dir), "--async", target, fun, *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    match = re.search(r"job ID: (\d+)", out.stdout)
    if not match:
        raise RuntimeError(f"{' '.join(cmd[3:])}: no job id ({out.returncode}): {out.stdout[-400:]} {out.stderr[-400:]}")
    return match.group(1)


def _bin(tool):
    return pathlib.Path(sys.executable).parent / tool


# ---- the store ------------------------------------------------------------------------


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


# ---- lab -------------------------------------------------------------------------------


class Bench:
    def __init__(self, base, minions, per_minion, naive_per_minion, store_events, naive_cap, firers=3, rounds=3):
        from harness import saltconf  # pylint: disable=import-outside-toplevel
        from harness.lab import Lab  # pylint: disable=import-outside-toplevel

        self.saltconf = saltconf
        self.base = base
        self.work = base / "work"
        self.work.mkdir(parents=True)
        (base / "pillar-empty").mkdir()
        self.lab = Lab(base)
        self.n_minions = minions
        self.per_minion = per_minion
        self.naive_per_minion = naive_per_minion
        self.store_events = store_events
        self.naive_cap = naive_cap
        self.firers = firers
        self.rounds = rounds
        self.naive_opts = {}
        self.results = {}

    # -- daemons
    def master_config(self, path):
        conf = self.saltconf.lab_master_config("tc", self.base / "etc")
        # The bench's events come from the firehose only: no pillar, so no real
        # tc_status beacon on the bench minions adding start/heartbeat events.
        conf["pillar_roots"] = {"base": [str(self.base / "pillar-empty")]}
        if path in ("bus", "naive"):
            conf.pop("engines", None)
        for engine in conf.get("engines", []):  # a firehose of a few seats: measure throughput, not the per-seat limit
            engine.get("tc_ingest", {}).update(rate_limit=10**9)
        if path == "naive":
            conf["runner_dirs"] = list(conf.get("runner_dirs", [])) + [str(BENCH / "_runners")]
            conf["reactor"] = [{"salt/beacon/*/tc_status/*": [str(BENCH / "reactor" / "tc_naive.sls")]}]
            conf.update(self.naive_opts)
        return conf

    def start(self, path):
        from harness import tcroot  # pylint: disable=import-outside-toplevel
        from harness.lab import Master  # pylint: disable=import-outside-toplevel

        t0 = time.time()
        master = Master(self.lab, f"{path}-master", self.master_config(path))
        self.lab.daemons.append(master)
        master.start()
        minions = []
        for i in range(self.n_minions):
            seat = f"{path}-tc{i}"
            root = tcroot.make(self.base / "roots" / seat, i + 1, session=(f"desk-{i:04d}", "connected"))
            conf = self.saltconf.tc_minion_config(root)
            conf["module_dirs"] = [str(BENCH / "_modules")]
            minion = self.lab.minion(seat, master, **conf)
            # the bench measures ingest, not enrollment: keys accepted up front, as salt-cloud seeds them
            self.saltconf.preseed_key(master.opts, seat, minion.root / "etc/salt/pki/minion")
            minions.append(minion)
        master.wait_ready()
        for minion in minions:
            minion.start()
        master.wait_minions([m.name for m in minions], timeout=180)
        say(f"   {master.name} + {len(minions)} minions up in {time.time() - t0:.1f} s")
        return master, minions

    def stop(self, master, minions):
        t0 = time.time()
        stop_all([*minions, master])
        say(f"   {master.name} + {len(minions)} minions stopped in {time.time() - t0:.1f} s")

    # -- one minion firehose
    def firehose(self, master, minions, per_minion, name, store=None, stall=15.0, cap=120.0, seq0=1):
        """
        Fire ``per_minion`` events from every minion at once (``salt --async '*' tc_firehose.fire``).

        Without a store (bus ceiling) a bare listener is the only consumer and counts them.
        With a store (naive, deskfleet) the path's own consumer is the only one on the bus:
        no probe listener; the start is the first send by a minion (from the job returns,
        read afterwards from the master's job cache) and the end is the last increase of
        the store's ``accepted`` counter.
        """
        expect = per_minion * len(minions)
        base = store.accepted() if store else 0
        listener = None if store else Listener(master, self.work, name, expect, returns=len(minions), deadline=cap + 120)
        cpu0 = cpu_snapshot(master, minions)
        jid = trigger(master, "*", "tc_firehose.fire", f"n={per_minion}", f"start_seq={seq0}")
        res = {"jid": jid, "requested": expect}
        if store is not None:
            stored, t_stored = store.wait(base + expect, stall=stall, cap=cap)
            res.update(stored=stored - base, t_stored=t_stored, wait_ended_by=store.why)
            cpu1 = cpu_snapshot(master, minions)
            rets = self._job_returns(master, jid, len(minions))
        else:
            bus = listener.result(timeout=cap + 60)
            cpu1 = cpu_snapshot(master, minions)
            rets = bus.get("returns", {})
            res.update(
                bus_count=bus.get("count", 0),
                bus_distinct=bus.get("distinct", 0),
                bus_first=bus.get("first"),
                bus_last=bus.get("last"),
                payload_bytes=bus.get("payload_bytes"),
            )
        if len(rets) != len(minions):
            say(f"   WARNING: {len(rets)}/{len(minions)} minion returns seen; 'fired' assumed to be the {expect} requested")
        res.update(
            fired=sum(r.get("sent", 0) for r in rets.values()) if len(rets) == len(minions) else expect,
            send_errors=sum(r.get("errors", 0) for r in rets.values()),
            minion_returns=len(rets),
            first_sent=min((r["first"] for r in rets.values() if r.get("first")), default=None),
            last_sent=max((r["last"] for r in rets.values() if r.get("last")), default=None),
            # CPU ms per event, by process group (live processes), while the firehose ran
            cpu_ms_per_event={k: round((cpu1[k] - cpu0[k]) * 1000 / max(1, expect), 3) for k in cpu0},
            minion_send_eps=[round(r["sent"] / r["send_s"], 1) for r in rets.values() if r.get("send_s")],
        )
        return res

    @staticmethod
    def _job_returns(master, jid, count, timeout=60):
        """The tc_firehose returns of job ``jid`` from the master's job cache."""
        deadline = time.time() + timeout
        while True:
            got = master.run("jobs.lookup_jid", jid) or {}
            rets = {m: r for m, r in got.items() if isinstance(r, dict) and "sent" in r}
            if len(rets) >= count or time.time() > deadline:
                return rets
            time.sleep(1)

    # -- paths
    def run(self, only):
        """bus and deskfleet interleaved round by round (both masters up), then store only, then naive."""
        labs = {}
        try:
            if only & {"bus", "deskfleet"}:
                say(f"\n== 1+3. bus ceiling and deskfleet, interleaved: {self.rounds} rounds of "
                    f"{self.per_minion * self.n_minions} events each, alternating which goes first")
                say("   bus: a master WITHOUT the tc_ingest engine, a bare listener counts on the bus (first seen -> last counted)")
                say("   deskfleet: the shipped config (tc_ingest engine, batch 500 / flush 0.5 s), the engine the only bus "
                    "consumer (first sent -> last stored)")
            for path in ("bus", "deskfleet"):
                if path in only:
                    labs[path] = self.start(path)
            store = Store(labs["deskfleet"][0]) if "deskfleet" in labs else None
            order = [p for p in ("bus", "deskfleet") if p in labs]
            for rnd in range(self.rounds if labs else 0):
                for path in order if rnd % 2 == 0 else order[::-1]:
                    master, minions = labs[path]
                    seq0 = rnd * self.per_minion + 1
                    if path == "bus":
                        self.round_bus(master, minions, rnd, seq0)
                    else:
                        self.round_deskfleet(master, minions, store, rnd, seq0)
            self.results["bus"] = self._median("bus")
            self.results["deskfleet"] = self._median("deskfleet")
            if "bus" in labs:
                master, minions = labs["bus"]
                keys = {m.name: self._minion_key(m) for m in minions}
                self.results["direct_bus"] = self.direct_bus(master, keys, self.rounds * self.per_minion + 1)
                self.stop(*labs.pop("bus"))
            if "deskfleet" in labs:
                master, minions = labs["deskfleet"]
                keys = {m.name: self._minion_key(m) for m in minions}
                seq0 = self.rounds * self.per_minion + 1
                self.results["tail"] = self.tail_probe(master, store, keys, seq0)
                self.results["store"] = self.store_only(master, store, keys, seq0 + 100)
                self.results["deskfleet_counters"] = store.counters()
                store.close()
                self.stop(*labs.pop("deskfleet"))
        finally:
            for master, minions in labs.values():
                self.stop(master, minions)
        if "naive" in only:
            self.path_naive()

    def _median(self, path):
        rounds = self.results.get(f"{path}_rounds", [])
        if not rounds:
            return {}
        eps = sorted(r["eps"] for r in rounds)
        res = {
            "eps": statistics.median(eps),
            "eps_rounds": [round(e, 1) for e in eps],
            "fired": sum(r["fired"] for r in rounds),
            "lost": sum(r["lost"] for r in rounds),
        }
        if path == "deskfleet":
            res["stored"] = sum(r["stored"] for r in rounds)
            res["max_last_sent_to_stored_s"] = max(r["last_sent_to_stored_s"] for r in rounds)
        return res

    def round_bus(self, master, minions, rnd, seq0):
        r = self.firehose(master, minions, self.per_minion, f"bus{rnd}", seq0=seq0)
        span = (r["bus_last"] or 0) - (r["bus_first"] or 0)
        r["eps"] = r["bus_distinct"] / span if span > 0 else 0.0
        r["lost"] = r["fired"] - r["bus_distinct"]
        say(f"   round {rnd + 1} bus:       fired {r['fired']} (send errors {r['send_errors']}), counted {r['bus_count']} "
            f"({r['bus_distinct']} distinct) in {span:.2f} s first->last: {r['eps']:6.1f} events/s | "
            f"CPU/event {_cpu_text(r['cpu_ms_per_event'])}")
        if rnd == 0:
            say(f"     (per-minion send rates {r['minion_send_eps']} ev/s; payload ~{r['payload_bytes']} bytes on the bus)")
        self.results.setdefault("bus_rounds", []).append(r)

    def round_deskfleet(self, master, minions, store, rnd, seq0):
        r = self.firehose(master, minions, self.per_minion, f"deskfleet{rnd}", store=store, stall=10.0, cap=120.0, seq0=seq0)
        span = (r["t_stored"] or 0) - (r["first_sent"] or 0)
        r["eps"] = r["stored"] / span if span > 0 else 0.0
        r["lost"] = r["fired"] - r["stored"]
        r["last_sent_to_stored_s"] = round((r["t_stored"] or 0) - (r["last_sent"] or 0), 3)
        say(f"   round {rnd + 1} deskfleet: fired {r['fired']} (send errors {r['send_errors']}), stored {r['stored']} "
            f"in {span:.2f} s first sent->last stored: {r['eps']:6.1f} events/s; lost {r['lost']}; "
            f"last sent->stored {r['last_sent_to_stored_s']} s | CPU/event {_cpu_text(r['cpu_ms_per_event'])}")
        self.results.setdefault("deskfleet_rounds", []).append(r)

    def path_naive(self):
        say(f"\n== 2. naive: {self.naive_per_minion * self.n_minions} events, reactor -> runner tc_naive.store per event (same store, same validation)")
        master, minions = self.start("naive")
        store = Store(master)
        try:
            r = self.firehose(master, minions, self.naive_per_minion, "naive", store=store, stall=20.0, cap=self.naive_cap)
            r["seats"] = store.seats()
            r["counters"] = store.counters()
            log = pathlib.Path(master.opts["log_file"]).read_text(errors="replace")
        finally:
            store.close()
            self.stop(master, minions)
        span = (r["t_stored"] or 0) - (r["first_sent"] or 0)
        r["eps"] = r["stored"] / span if span > 0 else 0.0
        r["lost"] = r["fired"] - r["stored"]
        # rows still arriving when the cap hit are a backlog, not (yet) a loss
        r["unfinished_at_cap"] = r["wait_ended_by"] == "cap"
        errors = [line for line in log.splitlines() if "[ERROR" in line or "[CRITICAL" in line]
        r["error_lines"] = len(errors)
        r["taskpool_full"] = sum("TaskPool queue is full" in line for line in errors)
        r["slow_subscriber_discards"] = log.count("Publisher discarding slow subscriber")
        # known noise (FACTS.md): asyncio "Task was destroyed but it is pending"
        other = [line for line in errors if "Task was destroyed but it is pending" not in line]
        r["error_lines_not_noise"] = len(other)
        r["error_samples"] = sorted({re.sub(r"^\S+ \S+ ", "", line)[:160] for line in other})[:3]
        say(f"   fired {r['fired']} (send errors {r['send_errors']}) in {r['last_sent'] - r['first_sent']:.1f} s, "
            f"stored (accepted) {r['stored']} in {span:.1f} s from first sent to last stored: {r['eps']:.1f} events/s")
        say(f"   CPU per event: {_cpu_text(r['cpu_ms_per_event'])}")
        if r["unfinished_at_cap"]:
            say(f"   NOTE: still storing when the {self.naive_cap:.0f} s cap hit: 'lost' includes a backlog not yet stored")
        say(f"   lost {r['lost']} ({r['lost'] / max(1, r['fired']):.1%}); master log: {r['error_lines']} ERROR lines "
            f"({r['error_lines'] - r['error_lines_not_noise']} asyncio noise), "
            f"{r['taskpool_full']} 'TaskPool queue is full' (reactor_worker_hwm {master.opts['reactor_worker_hwm']}, "
            f"{master.opts['reactor_worker_threads']} threads), {r['slow_subscriber_discards']} slow bus subscribers discarded")
        for sample in r["error_samples"]:
            say(f"     ERROR: {sample}")
        self.results["naive"] = r

    @staticmethod
    def _minion_key(minion):
        import salt.config  # pylint: disable=import-outside-toplevel

        return os.path.join(salt.config.minion_config(str(minion.conf_dir / "minion"))["pki_dir"], "minion.pem")

    def _fire_direct(self, master, keys, n, seq0, name, go=None):
        out, ready = self.work / f"{name}.fire.json", self.work / f"{name}.fire.ready"
        proc = _spawn(
            [
                sys.executable, "-m", "bench.ingest", "_fire",
                "--master-conf", str(master.conf_dir / "master"),
                "--out", str(out), "--ready", str(ready), "--count", str(n), "--start-seq", str(seq0),
                *([f"--go={go}"] if go else []),
                *[f"--key={seat}={pem}" for seat, pem in keys.items()],
            ],
            self.work / f"{name}.fire.log",
        )
        return proc, out, ready

    def _fire_parallel(self, master, keys, n, seq0, name):
        """``self.firers`` processes sign their share of ``n`` events, then fire together on a go signal."""
        go = self.work / f"{name}.go"
        share = -(-n // self.firers)
        firers = [
            self._fire_direct(master, keys, min(share, n - j * share), seq0 + j * share, f"{name}{j}", go=go)
            for j in range(self.firers)
            if n - j * share > 0
        ]
        for proc, _, ready in firers:
            _wait_file(ready, proc, 120, "a direct firer to sign its events")
        return firers, go

    @staticmethod
    def _collect(firers):
        outs = []
        for proc, out, _ in firers:
            proc.wait(120)
            _reap(proc)
            outs.append(json.loads(out.read_text()))
        return {
            "fired": sum(o["fired"] for o in outs),
            "first": min(o["first"] for o in outs),
            "last": max(o["last"] for o in outs),
            "sign_s": max(o["sign_s"] for o in outs),
        }

    def tail_probe(self, master, store, keys, seq0, n=7):
        say(f"\n   tail probe: {n} events (< batch_size 500) straight onto the bus, then nothing at all")
        time.sleep(1.0)  # let the previous run's last flush settle
        base = store.accepted()
        listener = Listener(master, self.work, "tail", expect=10**9, idle=4.0, deadline=30)
        proc, out, _ = self._fire_direct(master, dict(list(keys.items())[:1]), n, seq0, "tail")
        proc.wait(60)
        _reap(proc)
        fire = json.loads(out.read_text())
        got, t_got = store.wait(base + n, stall=5.0, cap=10.0)
        bus = listener.result(timeout=40)
        later = [e for e in bus.get("all_after_last_tc", []) if e[1] < t_got]
        ok = got - base == n and bus.get("count") == n and not later
        res = {
            "events": n,
            "stored": got - base,
            "fired_to_stored_s": round(t_got - fire["last"], 3),
            "bus_events_between": len(later),
            "ok": ok,
        }
        say(f"   tail probe: stored {res['stored']}/{n} {res['fired_to_stored_s']} s after the last was fired, "
            f"with {res['bus_events_between']} bus events in between -> {'flushed on time' if ok else 'NOT flushed'}")
        return res

    def store_only(self, master, store, keys, seq0):
        n = self.store_events
        say(f"\n== 4. store only: {self.rounds} rounds of {n} signed events fired straight onto the deskfleet master's bus "
            f"(get_master_event().fire_event from {self.firers} processes, no minions)")
        rounds = []
        for rnd in range(self.rounds):
            time.sleep(1.0)  # previous flush settles
            base = store.accepted()
            firers, go = self._fire_parallel(master, keys, n, seq0, f"store{rnd}")
            seq0 += n
            cpu0 = _group_cpu(master.proc.pid, "engines.tc_ingest")
            pub0 = _group_cpu(master.proc.pid, "EventPublisher")
            go.write_text("go")
            got, t_got = store.wait(
                base + n, stall=10.0, cap=120.0, busy=lambda: any(p.poll() is None for p, _, _ in firers), interval=0.01
            )
            engine_ms = (_group_cpu(master.proc.pid, "engines.tc_ingest") - cpu0) * 1000 / max(1, n)
            pub_ms = (_group_cpu(master.proc.pid, "EventPublisher") - pub0) * 1000 / max(1, n)
            fire = self._collect(firers)
            stored = got - base
            span = t_got - fire["first"]
            r = {
                "fired": fire["fired"],
                "stored": stored,
                "lost": fire["fired"] - stored,
                "sign_s": fire["sign_s"],
                "fire_eps": round(fire["fired"] / max(1e-9, fire["last"] - fire["first"]), 1),
                "last_fired_to_stored_s": round(t_got - fire["last"], 3),
                "engine_cpu_ms_per_event": round(engine_ms, 3),
                "publisher_cpu_ms_per_event": round(pub_ms, 3),
                "eps": stored / span if span > 0 else 0.0,
            }
            say(f"   round {rnd + 1}: fired {r['fired']} in {fire['last'] - fire['first']:.2f} s ({r['fire_eps']:.0f}/s onto the bus), "
                f"stored {stored} in {span:.2f} s first fired->last stored: {r['eps']:6.0f} events/s; lost {r['lost']}; "
                f"last fired->stored {r['last_fired_to_stored_s']} s; CPU/event engine {engine_ms * 1000:.0f} us, "
                f"bus publisher {pub_ms * 1000:.0f} us")
            rounds.append(r)
        eps = sorted(r["eps"] for r in rounds)
        cpu = statistics.median(r["engine_cpu_ms_per_event"] for r in rounds)
        res = {
            "eps": statistics.median(eps),
            "eps_rounds": [round(e, 1) for e in eps],
            "fire_eps": statistics.median(r["fire_eps"] for r in rounds),
            "lost": sum(r["lost"] for r in rounds),
            "engine_cpu_ms_per_event": cpu,
            "rounds": rounds,
        }
        say(f"   median {res['eps']:.0f} events/s; the engine spends ~{cpu * 1000:.0f} us CPU per event "
            f"(~{1000 / max(1e-9, cpu):.0f} events/s if it had a core to itself)")
        res["drain"] = self.engine_drain(master, store, keys, seq0)
        return res

    def direct_bus(self, master, keys, seq0):
        """The store-only firehose on the bus master (no engine): how fast the bus itself carries it."""
        n = self.store_events
        say(f"\n   direct-fire bus ceiling (the store-only firehose, counted by the bare listener on the engine-less bus master)")
        rounds = []
        for rnd in range(self.rounds):
            listener = Listener(master, self.work, f"direct{rnd}", expect=n, idle=5.0, deadline=120)
            firers, go = self._fire_parallel(master, keys, n, seq0, f"direct{rnd}")
            seq0 += n
            cpu0 = _group_cpu(master.proc.pid, "EventPublisher")
            go.write_text("go")
            fire = self._collect(firers)
            bus = listener.result(timeout=150)
            pub_ms = (_group_cpu(master.proc.pid, "EventPublisher") - cpu0) * 1000 / max(1, n)
            span = (bus.get("last") or 0) - fire["first"]
            r = {
                "fired": fire["fired"],
                "counted": bus.get("distinct", 0),
                "fire_eps": round(fire["fired"] / max(1e-9, fire["last"] - fire["first"]), 1),
                "eps": bus.get("distinct", 0) / span if span > 0 else 0.0,
                "publisher_cpu_ms_per_event": round(pub_ms, 3),
            }
            say(f"   round {rnd + 1}: fired {r['fired']} ({r['fire_eps']:.0f}/s), counted {r['counted']} on the bus, "
                f"first fired->last counted {span:.2f} s: {r['eps']:6.0f} events/s; bus publisher CPU {pub_ms * 1000:.0f} us/event")
            rounds.append(r)
        return {"eps": statistics.median(r["eps"] for r in rounds), "eps_rounds": sorted(round(r["eps"], 1) for r in rounds), "rounds": rounds}

    def engine_drain(self, master, store, keys, seq0):
        """
        Diagnostic: the engine alone, without the feeders' pace. The engine
        process is paused (SIGSTOP) while the events are fired, so they queue
        in its bus socket; then it is resumed and timed until all are stored.
        """
        n = self.store_events
        pid = _engine_pid(master)
        if pid is None:
            say("   engine drain: tc_ingest engine process not found; skipped")
            return {}
        time.sleep(1.0)
        base = store.accepted()
        firers, go = self._fire_parallel(master, keys, n, seq0, "drain")
        os.kill(pid, signal.SIGSTOP)
        try:
            go.write_text("go")
            fire = self._collect(firers)
            time.sleep(0.5)
        finally:
            t_resume = time.time()
            os.kill(pid, signal.SIGCONT)
        got, t_got = store.wait(base + n, stall=10.0, cap=60.0, interval=0.01)
        stored = got - base
        span = t_got - t_resume
        res = {"fired": fire["fired"], "stored": stored, "lost": fire["fired"] - stored, "eps": stored / span if span > 0 else 0.0}
        say(f"   engine drain (diagnostic): {n} events queued while the engine was paused, stored {stored} "
            f"{span:.2f} s after it resumed: {res['eps']:.0f} events/s; lost {res['lost']}")
        return res

    # -- summary
    def summary(self, wall):
        bus, naive, desk, tail, st = (self.results.get(k, {}) for k in ("bus", "naive", "deskfleet", "tail", "store"))
        ceiling, naive_eps, desk_eps = bus.get("eps", 0.0), naive.get("eps", 0.0), desk.get("eps", 0.0)
        vs_ceiling = desk_eps / ceiling if ceiling else 0.0
        vs_naive = desk_eps / naive_eps if naive_eps else 0.0
        tail_ok = bool(desk) and desk.get("lost", 1) == 0 and bool(tail.get("ok"))
        seats = math.floor(ceiling * HEARTBEAT_S * HEADROOM)
        storm = 10000 / desk_eps if desk_eps else None
        store_eps = st.get("eps", 0.0)

        def verdict(ok):
            return "PASS" if ok else "FAIL"

        say("\n== Summary")
        say(f"   bus ceiling (minions -> bus, 1 event/request):  {ceiling:8.1f} events/s  (median of {bus.get('eps_rounds')})")
        say(f"   naive reactor -> runner per event:              {naive_eps:8.1f} events/s  (lost {naive.get('lost')} of {naive.get('fired')})")
        say(f"   deskfleet tc_ingest engine:                     {desk_eps:8.1f} events/s  (median of {desk.get('eps_rounds')}; "
            f"lost {desk.get('lost')} of {desk.get('fired')})")
        say(f"   store only (engine fed on the bus):             {store_eps:8.1f} events/s  (median of {st.get('eps_rounds')}; "
            f"firers {st.get('fire_eps', 0):.0f}/s; engine draining a queued backlog {st.get('drain', {}).get('eps', 0):.0f}/s)")
        direct = self.results.get("direct_bus", {})
        if direct:
            say(f"   direct-fire bus ceiling (same firehose, no engine): {direct['eps']:8.1f} events/s  (median of {direct['eps_rounds']}); "
                f"store only / that = {store_eps / max(1e-9, direct['eps']):.2f}")
        say(f"   [{verdict(vs_ceiling >= TARGETS['vs_ceiling'])}] deskfleet >= 0.9 x ceiling: {vs_ceiling:.2f} x")
        say(f"   [{verdict(vs_naive >= TARGETS['vs_naive'])}] deskfleet >= 8 x naive: {vs_naive:.1f} x")
        say(f"   [{verdict(tail_ok)}] deskfleet lost 0, incl. the tail: lost {desk.get('lost')}, "
            f"tail probe {tail.get('stored')}/{tail.get('events')} on the timer")
        say(f"   [{verdict(store_eps >= TARGETS['store_only_eps'])}] store only >= 2000 events/s: {store_eps:.0f}")
        say(f"   seats per master = floor(bus ceiling {ceiling:.1f}/s x heartbeat {HEARTBEAT_S} s x 0.5) = {seats} "
            f"(50% headroom left for logins, changes and everything else the bus carries)")
        if storm:
            say(f"   login storm: 10,000 seats reporting at once are stored in ~{storm:.0f} s at the deskfleet rate")
        say(f"   wall time {wall:.0f} s; {self.n_minions} minions; {self.rounds} rounds x {self.per_minion * self.n_minions} events "
            f"on the bus and deskfleet paths, {self.naive_per_minion * self.n_minions} on the naive path, "
            f"{self.rounds} x {self.store_events} store-only")
        box = self.results.get("box", {})
        say(f"   box: 2-core budget shared by everything above; load avg {box.get('load_avg_at_start', 0):.2f} at start, "
            f"{box.get('foreign_salt_procs_at_start', 0)} foreign salt processes at start, "
            f"{_foreign_salt(self.base)} at the end")
        return {
            "bench": "ingest",
            "bus_ceiling_eps": round(ceiling, 1),
            "naive_eps": round(naive_eps, 1),
            "deskfleet_eps": round(desk_eps, 1),
            "deskfleet_vs_ceiling": round(vs_ceiling, 3),
            "deskfleet_vs_naive": round(vs_naive, 1),
            "naive_lost": naive.get("lost"),
            "deskfleet_lost": desk.get("lost"),
            "tail_flushed": tail_ok,
            "store_only_eps": round(store_eps, 1),
            "seats_per_master": seats,
            "login_storm_10k_s": round(storm, 1) if storm else None,
            "heartbeat_s": HEARTBEAT_S,
        }


# ---- child process entry points -------------------------------------------------------


def _listen(args):
    """Count tc_status events on the master bus (and collect tc_firehose job returns)."""
    import salt.config  # pylint: disable=import-outside-toplevel
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    opts = salt.config.master_config(args.master_conf)
    stop = {"flag": False}
    signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
    count, seen, first, last, size = 0, set(), None, None, 0
    returns, after = {}, []
    started = time.time()
    with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus:
        bus.connect_pub(timeout=30)
        pathlib.Path(args.ready).write_text("ready")
        while not stop["flag"]:
            event = bus.get_event(wait=0.25, full=True)
            now = time.time()
            if event is not None:
                tag, data = event.get("tag") or "", event.get("data") or {}
                match = TAG_RE.match(tag)
                if match:
                    count += 1
                    first = first or now
                    last = now
                    after = []
                    seen.add((match.group(1), data.get("seq")))
                    if count <= 50:
                        size += len(json.dumps(data))
                else:
                    if last is not None:
                        after.append((tag, now))
                    if tag.startswith("salt/job/") and "/ret/" in tag and data.get("fun") == "tc_firehose.fire":
                        ret = data.get("return")
                        returns[data.get("id")] = ret if isinstance(ret, dict) else {"error": str(ret)[:200]}
            done = count >= args.expect and len(returns) >= args.returns
            idle = last is not None and now - last > args.idle and len(returns) >= args.returns
            if done or idle or now - started > args.deadline:
                break
    result = {
        "count": count,
        "distinct": len(seen),
        "first": first,
        "last": last,
        "payload_bytes": size // min(count, 50) if count else None,
        "returns": returns,
        "all_after_last_tc": after[:100],
    }
    pathlib.Path(args.out).write_text(json.dumps(result))
    return 0


def _fire(args):
    """Sign ``n`` valid tc_status events with real minion keys, then fire them on the master bus."""
    import base64  # pylint: disable=import-outside-toplevel
    import importlib.util  # pylint: disable=import-outside-toplevel

    import salt.config  # pylint: disable=import-outside-toplevel
    import salt.crypt  # pylint: disable=import-outside-toplevel
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    from harness import tcroot  # pylint: disable=import-outside-toplevel

    spec = importlib.util.spec_from_file_location("tc_status_beacon", CHECKOUT / "_beacons" / "tc_status.py")
    beacon = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(beacon)
    opts = salt.config.master_config(args.master_conf)
    keys = [k.split("=", 1) for k in args.key]
    t0 = time.time()
    root = tcroot.make(pathlib.Path(args.out).with_suffix(".root"), 77)
    facts = beacon.collect(beacon._conf({"root": str(root)}))  # pylint: disable=protected-access
    signers = {seat: salt.crypt.PrivateKey.from_file(pem) for seat, pem in keys}
    events = []
    for i in range(args.count):
        seat = keys[i % len(keys)][0]
        payload = beacon.build_payload(seat, {"seq": args.start_seq + i // len(keys)}, "heartbeat", [], facts, time.time(), HEARTBEAT_S)
        payload["sig"] = base64.b64encode(signers[seat].sign(beacon.canonical(payload), algorithm=beacon.SIGN_ALGORITHM)).decode()
        payload["id"] = seat
        events.append((f"salt/beacon/{seat}/tc_status/status", payload))
    sign_s = time.time() - t0
    fired = 0
    with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=False) as bus:
        bus.connect_pull(timeout=10)
        pathlib.Path(args.ready).write_text("ready")
        while args.go and not os.path.exists(args.go):
            time.sleep(0.001)
        first = time.time()
        for tag, data in events:
            if bus.fire_event(data, tag):
                fired += 1
        last = time.time()
    pathlib.Path(args.out).write_text(json.dumps({"fired": fired, "first": first, "last": last, "sign_s": round(sign_s, 2)}))
    return 0


# ---- main ------------------------------------------------------------------------------


def _group_cpu(pgid, match=None):
    """CPU seconds (user+sys) of the live processes in process group ``pgid`` (optionally: cmdline contains ``match``)."""
    tick = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            if match and match not in pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace"):
                continue
            fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / tick
    return total


def cpu_snapshot(master, minions):
    return {
        "master": _group_cpu(master.proc.pid),
        "reactor": _group_cpu(master.proc.pid, "engines.reactor"),
        "engine": _group_cpu(master.proc.pid, "engines.tc_ingest"),
        "bus publisher": _group_cpu(master.proc.pid, "EventPublisher"),
        "minions": sum(_group_cpu(m.proc.pid) for m in minions),
    }


def _cpu_text(cpu):
    return ", ".join(f"{k} {v:.2f} ms" for k, v in cpu.items() if v or k in ("master", "minions"))


def _engine_pid(master):
    """The tc_ingest engine process of ``master`` (same process group, named by Salt)."""
    pgid = master.proc.pid
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            if os.getpgid(int(pid)) != pgid:
                continue
            cmd = pathlib.Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, ProcessLookupError):
            continue
        if "engines.tc_ingest" in cmd:
            return int(pid)
    return None


def _foreign_salt(base):
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


def _interrupt(*_):
    raise KeyboardInterrupt


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="cmd")
    parser.add_argument("--minions", type=int, default=4)
    parser.add_argument("--events", type=int, default=3000, help="events per minion path (bus, deskfleet)")
    parser.add_argument("--naive-events", type=int, default=None, help="events on the naive path (default: --events)")
    parser.add_argument("--store-events", type=int, default=4000)
    parser.add_argument("--firers", type=int, default=3, help="processes firing the store-only events")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the bus/deskfleet/store-only paths (median)")
    parser.add_argument("--naive-cap", type=float, default=150.0, help="max seconds to wait for the naive path")
    parser.add_argument("--naive-hwm", type=int, default=None, help="reactor_worker_hwm on the naive master (Salt default 10000)")
    parser.add_argument("--naive-threads", type=int, default=None, help="reactor_worker_threads (Salt default 10)")
    parser.add_argument("--only", default="bus,naive,deskfleet", help="paths to run (store-only runs with deskfleet)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores) afterwards")
    lp = sub.add_parser("_listen")
    for name in ("--master-conf", "--out", "--ready"):
        lp.add_argument(name, required=True)
    lp.add_argument("--expect", type=int, required=True)
    lp.add_argument("--returns", type=int, default=0)
    lp.add_argument("--idle", type=float, default=8.0)
    lp.add_argument("--deadline", type=float, default=300.0)
    fp = sub.add_parser("_fire")
    for name in ("--master-conf", "--out", "--ready"):
        fp.add_argument(name, required=True)
    fp.add_argument("--count", type=int, required=True)
    fp.add_argument("--start-seq", type=int, default=1)
    fp.add_argument("--go", default=None, help="fire only once this file exists")
    fp.add_argument("--key", action="append", required=True, help="seat=path/to/minion.pem")
    args = parser.parse_args(argv)
    if args.cmd == "_listen":
        return _listen(args)
    if args.cmd == "_fire":
        return _fire(args)

    signal.signal(signal.SIGTERM, _interrupt)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where is it?
    per_minion = max(1, args.events // args.minions)
    naive_per_minion = max(1, (args.naive_events or args.events) // args.minions)
    only = set(args.only.split(","))
    started = time.time()
    base = pathlib.Path(tempfile.mkdtemp(prefix="dfb-"))
    say(f"deskfleet ingest bench: {args.minions} minions, {per_minion * args.minions} events per minion path "
        f"({naive_per_minion * args.minions} naive), {args.store_events} store-only; lab in {base}")
    foreign = _foreign_salt(base)
    if foreign:
        say(f"   WARNING: {foreign} other salt processes are running on this box: rates are pessimistic")
    bench = Bench(base, args.minions, per_minion, naive_per_minion, args.store_events, args.naive_cap, args.firers, args.rounds)
    for key, value in (("reactor_worker_hwm", args.naive_hwm), ("reactor_worker_threads", args.naive_threads)):
        if value is not None:
            bench.naive_opts[key] = value
    bench.results["box"] = {"load_avg_at_start": os.getloadavg()[0], "foreign_salt_procs_at_start": foreign}
    try:
        bench.run(only)
    finally:
        # helpers first (they hold bus connections), then every daemon of the lab
        reap_all()
        stop_all(bench.lab.daemons)
        if args.keep:
            say(f"   kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    wall = time.time() - started
    summary = bench.summary(wall)
    results = CHECKOUT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps({"summary": summary, "detail": bench.results, "wall_s": round(wall, 1)}, indent=1, default=str)
    )
    print(json.dumps(summary), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
