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

The paths run one after the other (one master + its minions at a time) so they
do not steal each other's CPU; every daemon is stopped between paths and on
exit. The last line of output is one JSON object.
"""

import argparse
import json
import math
import os
import pathlib
import re
import secrets
import shutil
import signal
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
BENCH = CHECKOUT / "bench"
TAG_RE = re.compile(r"^salt/beacon/([^/]+)/tc_status/status$")
HEARTBEAT_S = 300
HEADROOM = 0.5
TARGETS = {"vs_ceiling": 0.9, "vs_naive": 8.0, "store_only_eps": 2000.0}

_CHILDREN = []  # helper processes (listeners, firers, salt CLIs) to reap on the way out


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

    def done(self):
        return self.proc.poll() is not None

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
    def __init__(self, base, minions, per_minion, naive_per_minion, store_events, naive_cap):
        from harness import saltconf  # pylint: disable=import-outside-toplevel
        from harness.lab import Lab  # pylint: disable=import-outside-toplevel

        self.saltconf = saltconf
        self.base = base
        self.work = base / "work"
        self.work.mkdir(parents=True)
        (base / "pillar-empty").mkdir()
        self.lab = Lab(base)
        self.secret = secrets.token_hex(16)
        self.n_minions = minions
        self.per_minion = per_minion
        self.naive_per_minion = naive_per_minion
        self.store_events = store_events
        self.naive_cap = naive_cap
        self.results = {}

    # -- daemons
    def master_config(self, path):
        conf = self.saltconf.lab_master_config("tc", self.base / "etc")
        # The bench's events come from the firehose only: no pillar, so no real
        # tc_status beacon on the bench minions adding start/heartbeat events.
        conf["pillar_roots"] = {"base": [str(self.base / "pillar-empty")]}
        if path in ("bus", "naive"):
            conf.pop("engines", None)
        if path == "naive":
            conf["runner_dirs"] = list(conf.get("runner_dirs", [])) + [str(BENCH / "_runners")]
            conf["reactor"] = [{"salt/beacon/*/tc_status/*": [str(BENCH / "reactor" / "tc_naive.sls")]}]
        return conf

    def start(self, path):
        from harness import tcroot  # pylint: disable=import-outside-toplevel
        from harness.lab import Master  # pylint: disable=import-outside-toplevel

        t0 = time.time()
        master = Master(self.lab, f"{path}-master", self.master_config(path))
        self.lab.daemons.append(master)
        self.saltconf.write_enroll_secret(master.opts, self.secret)
        master.start()
        minions = []
        for i in range(self.n_minions):
            seat = f"{path}-tc{i}"
            root = tcroot.make(self.base / "roots" / seat, i + 1, session=(f"desk-{i:04d}", "connected"))
            conf = self.saltconf.tc_minion_config(self.secret, root)
            conf["module_dirs"] = [str(BENCH / "_modules")]
            minions.append(self.lab.minion(seat, master, **conf))
        master.wait_ready()
        for minion in minions:
            minion.start()
        master.wait_minions([m.name for m in minions], timeout=180)
        say(f"   {master.name} + {len(minions)} minions up in {time.time() - t0:.1f} s")
        return master, minions

    def stop(self, master, minions):
        for daemon in [*minions, master]:
            daemon.stop()

    # -- one minion firehose
    def firehose(self, master, minions, per_minion, name, store=None, stall=15.0, cap=120.0):
        """Fire ``per_minion`` events from every minion at once; count on the bus (and in the store)."""
        expect = per_minion * len(minions)
        base = store.accepted() if store else 0
        listener = Listener(master, self.work, name, expect, returns=len(minions), deadline=cap + 120)
        t_trigger = time.time()
        jid = trigger(master, "*", "tc_firehose.fire", f"n={per_minion}")
        stored = t_stored = None
        if store is not None:
            stored, t_stored = store.wait(base + expect, stall=stall, cap=cap, busy=lambda: not listener.done())
            stored -= base
            res_why = store.why
        bus = listener.result(timeout=cap + 60)
        rets = bus.get("returns", {})
        fired = sum(r.get("sent", 0) for r in rets.values()) if len(rets) == len(minions) else expect
        errors = sum(r.get("errors", 0) for r in rets.values())
        res = {
            "jid": jid,
            "requested": expect,
            "fired": fired,
            "send_errors": errors,
            "minion_returns": len(rets),
            "bus_count": bus.get("count", 0),
            "bus_distinct": bus.get("distinct", 0),
            "bus_first": bus.get("first"),
            "bus_last": bus.get("last"),
            "payload_bytes": bus.get("payload_bytes"),
            "trigger_to_first_s": round((bus.get("first") or t_trigger) - t_trigger, 2),
            "minion_send_eps": [
                round(r["sent"] / r["send_s"], 1) for r in rets.values() if r.get("send_s")
            ],
        }
        if store is not None:
            res.update(stored=stored, t_stored=t_stored, wait_ended_by=res_why)
        return res

    # -- paths
    def path_bus(self):
        say("\n== 1. bus ceiling: minions -> master bus -> bare listener (no engine, no reactor)")
        master, minions = self.start("bus")
        try:
            r = self.firehose(master, minions, self.per_minion, "bus")
        finally:
            self.stop(master, minions)
        span = (r["bus_last"] or 0) - (r["bus_first"] or 0)
        r["eps"] = r["bus_distinct"] / span if span > 0 else 0.0
        r["lost"] = r["fired"] - r["bus_distinct"]
        say(f"   fired {r['fired']} (send errors {r['send_errors']}), counted on the bus {r['bus_count']} "
            f"({r['bus_distinct']} distinct) in {span:.2f} s from first to last: {r['eps']:.1f} events/s")
        say(f"   per-minion send rate {r['minion_send_eps']} ev/s; payload ~{r['payload_bytes']} bytes on the bus")
        self.results["bus"] = r

    def path_naive(self):
        say("\n== 2. naive: reactor -> runner tc_naive.store per event (same store, same validation)")
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
        span = (r["t_stored"] or 0) - (r["bus_first"] or 0)
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
        say(f"   fired {r['fired']}, on the bus {r['bus_distinct']}, stored (accepted) {r['stored']} "
            f"in {span:.1f} s from first event seen to last stored: {r['eps']:.1f} events/s")
        if r["unfinished_at_cap"]:
            say(f"   NOTE: still storing when the {self.naive_cap:.0f} s cap hit: 'lost' includes a backlog not yet stored")
        say(f"   lost {r['lost']} ({r['lost'] / max(1, r['fired']):.1%}); master log: {r['error_lines']} ERROR lines "
            f"({r['error_lines'] - r['error_lines_not_noise']} asyncio noise), "
            f"{r['taskpool_full']} 'TaskPool queue is full' (reactor_worker_hwm {master.opts['reactor_worker_hwm']}, "
            f"{master.opts['reactor_worker_threads']} threads), {r['slow_subscriber_discards']} slow bus subscribers discarded")
        for sample in r["error_samples"]:
            say(f"     ERROR: {sample}")
        self.results["naive"] = r

    def path_deskfleet(self):
        say("\n== 3. deskfleet: shipped config, tc_ingest engine (batch 500 / flush 0.5 s)")
        master, minions = self.start("deskfleet")
        store = Store(master)
        try:
            r = self.firehose(master, minions, self.per_minion, "deskfleet", store=store, stall=10.0, cap=120.0)
            span = (r["t_stored"] or 0) - (r["bus_first"] or 0)
            r["eps"] = r["stored"] / span if span > 0 else 0.0
            r["lost"] = r["fired"] - r["stored"]
            r["last_seen_to_stored_s"] = round((r["t_stored"] or 0) - (r["bus_last"] or 0), 3)
            say(f"   fired {r['fired']}, on the bus {r['bus_distinct']}, stored (accepted) {r['stored']} "
                f"in {span:.2f} s from first event seen to last stored: {r['eps']:.1f} events/s")
            say(f"   lost {r['lost']}; last event seen -> stored {r['last_seen_to_stored_s']} s")
            self.results["deskfleet"] = r
            keys = {m.name: self._minion_key(m) for m in minions}
            seq0 = self.per_minion + 1
            self.results["tail"] = self.tail_probe(master, store, keys, seq0)
            seq0 += 100
            self.results["store"] = self.store_only(master, store, keys, seq0)
            self.results["deskfleet_counters"] = store.counters()
        finally:
            store.close()
            self.stop(master, minions)

    @staticmethod
    def _minion_key(minion):
        import salt.config  # pylint: disable=import-outside-toplevel

        return os.path.join(salt.config.minion_config(str(minion.conf_dir / "minion"))["pki_dir"], "minion.pem")

    def _fire_direct(self, master, keys, n, seq0, name):
        out, ready = self.work / f"{name}.fire.json", self.work / f"{name}.fire.ready"
        proc = _spawn(
            [
                sys.executable, "-m", "bench.ingest", "_fire",
                "--master-conf", str(master.conf_dir / "master"),
                "--out", str(out), "--ready", str(ready), "--count", str(n), "--start-seq", str(seq0),
                *[f"--key={seat}={pem}" for seat, pem in keys.items()],
            ],
            self.work / f"{name}.fire.log",
        )
        return proc, out, ready

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
        ok = got - base == n and not later
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
        say(f"\n== 4. store only: {n} signed events fired straight onto the deskfleet master's bus (no minions)")
        time.sleep(1.0)
        base = store.accepted()
        proc, out, ready = self._fire_direct(master, keys, n, seq0, "store")
        _wait_file(ready, proc, 120, "the direct firer to sign its events")
        got, t_got = store.wait(base + n, stall=10.0, cap=120.0, busy=lambda: proc.poll() is None, interval=0.01)
        proc.wait(60)
        _reap(proc)
        fire = json.loads(out.read_text())
        stored = got - base
        span = t_got - fire["first"]
        res = {
            "fired": fire["fired"],
            "stored": stored,
            "lost": fire["fired"] - stored,
            "sign_s": fire["sign_s"],
            "fire_eps": round(fire["fired"] / max(1e-9, fire["last"] - fire["first"]), 1),
            "eps": stored / span if span > 0 else 0.0,
        }
        say(f"   fired {res['fired']} at {res['fire_eps']:.0f} events/s (signing done beforehand, {res['sign_s']} s); "
            f"stored {stored} in {span:.2f} s from first fired to last stored: {res['eps']:.0f} events/s; lost {res['lost']}")
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
        say(f"   bus ceiling (minions -> bus, 1 event/request):  {ceiling:8.1f} events/s")
        say(f"   naive reactor -> runner per event:              {naive_eps:8.1f} events/s  (lost {naive.get('lost')})")
        say(f"   deskfleet tc_ingest engine:                     {desk_eps:8.1f} events/s  (lost {desk.get('lost')})")
        say(f"   store only (engine fed on the bus):             {store_eps:8.1f} events/s")
        say(f"   [{verdict(vs_ceiling >= TARGETS['vs_ceiling'])}] deskfleet >= 0.9 x ceiling: {vs_ceiling:.2f} x")
        say(f"   [{verdict(vs_naive >= TARGETS['vs_naive'])}] deskfleet >= 8 x naive: {vs_naive:.1f} x")
        say(f"   [{verdict(tail_ok)}] deskfleet lost 0, incl. the tail: lost {desk.get('lost')}, "
            f"tail probe {tail.get('stored')}/{tail.get('events')} on the timer")
        say(f"   [{verdict(store_eps >= TARGETS['store_only_eps'])}] store only >= 2000 events/s: {store_eps:.0f}")
        say(f"   seats per master = floor(bus ceiling {ceiling:.1f}/s x heartbeat {HEARTBEAT_S} s x 0.5) = {seats} "
            f"(50% headroom left for logins, changes and everything else the bus carries)")
        if storm:
            say(f"   login storm: 10,000 seats reporting at once are stored in ~{storm:.0f} s at the deskfleet rate")
        say(f"   wall time {wall:.0f} s; {self.n_minions} minions; {self.per_minion * self.n_minions} events on the "
            f"bus/deskfleet paths, {self.naive_per_minion * self.n_minions} on the naive path, {self.store_events} store-only")
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
        first = time.time()
        for tag, data in events:
            if bus.fire_event(data, tag):
                fired += 1
        last = time.time()
    pathlib.Path(args.out).write_text(json.dumps({"fired": fired, "first": first, "last": last, "sign_s": round(sign_s, 2)}))
    return 0


# ---- main ------------------------------------------------------------------------------


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
    parser.add_argument("--naive-cap", type=float, default=150.0, help="max seconds to wait for the naive path")
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
    fp.add_argument("--key", action="append", required=True, help="seat=path/to/minion.pem")
    args = parser.parse_args(argv)
    if args.cmd == "_listen":
        return _listen(args)
    if args.cmd == "_fire":
        return _fire(args)

    signal.signal(signal.SIGTERM, _interrupt)
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
    bench = Bench(base, args.minions, per_minion, naive_per_minion, args.store_events, args.naive_cap)
    bench.results["box"] = {"load_avg_at_start": os.getloadavg()[0], "foreign_salt_procs_at_start": foreign}
    try:
        with bench.lab:
            if "bus" in only:
                bench.path_bus()
            if "naive" in only:
                bench.path_naive()
            if "deskfleet" in only:
                bench.path_deskfleet()
    finally:
        reap_all()
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
