"""
``make bench-flood`` / ``python -m bench.flood``: one hostile thin client
against a tc master from the shipped config, with an honest seat probing.

Run twice, same box, same steps: once with Salt's default ``max_event_size``
(1 MiB) and once with the shipped ``salt_tc/master.d/25-limits.conf`` value.
Per run, real salt-minions (``bench/_modules/tc_flood.py``, validly signed
payloads made with the beacon's own code):

1. the honest seat sends a signed heartbeat every 5 s for the whole run;
2. the hostile seat sends 40 events of ~900 kB (one per request), then
3. 3,000 small validly signed events of its own, 100 per request.

Measured: the honest seat's send-to-bus latency (p50, max) while the flood
runs, master memory growth (RSS of the master's process group, peak minus
before), bytes per big event as delivered on the bus, and what the store
counted (accepted, oversize, rate_limited and the refusals per sender).
Every daemon is stopped on exit; the last line is one JSON object.
"""

import argparse
import json
import pathlib
import re
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from harness.proc import spawn

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
BIG_N, BIG_PAD, SMALL_N = 40, 900_000, 3000
PROBE_INTERVAL_S = 5  # an honest pace: 60 per 300 s window, under the shipped rate_limit
TAG_RE = re.compile(r"^salt/beacon/([^/]+)/tc_status/status$")


def say(text=""):
    print(text, flush=True)


def _bin(tool):
    return pathlib.Path(sys.executable).parent / tool


def _salt(master, *args, timeout=600):
    cmd = [str(_bin("salt")), "-c", str(master.conf_dir), "--out=json", "-t", str(timeout), *args]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout + 60, check=False)
    return out.stdout


def _async(master, *args):
    out = subprocess.run(
        [str(_bin("salt")), "-c", str(master.conf_dir), "--async", *args],
        capture_output=True, text=True, timeout=120, check=False,
    )
    if "job ID" not in out.stdout:
        raise RuntimeError(f"salt --async {' '.join(args)}: {out.stdout[-300:]} {out.stderr[-300:]}")


class RSS:
    """Sum of RSS over the master's process group, sampled in a thread."""

    def __init__(self, pid):
        import psutil  # pylint: disable=import-outside-toplevel

        self.root = psutil.Process(pid)
        self.samples = []
        self.running = True
        self.thread = threading.Thread(target=self._loop, daemon=True)
        self.thread.start()

    def now(self):
        procs = [self.root] + self.root.children(recursive=True)
        total = 0
        for proc in procs:
            try:
                total += proc.memory_info().rss
            except Exception:  # pylint: disable=broad-except
                pass
        return total

    def _loop(self):
        while self.running:
            self.samples.append((time.time(), self.now()))
            time.sleep(0.25)

    def stop(self):
        self.running = False
        self.thread.join(5)


def _store(master):
    path = pathlib.Path(master.opts["cachedir"]) / "deskfleet" / "deskfleet.sqlite"
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    conn.row_factory = sqlite3.Row
    try:
        counters = dict(conn.execute("SELECT name, value FROM ingest_counters").fetchall())
        by_sender = [
            dict(r)
            for r in conn.execute(
                "SELECT sender, claimed, reason, SUM(count) AS count FROM ingest_reject_stats"
                " GROUP BY sender, claimed, reason ORDER BY count DESC"
            )
        ]
    finally:
        conn.close()
    return counters, by_sender


def _start(lab, max_event_size):
    """The tc master from the shipped config (no pillar: no real beacons) and the two bench seats, answering."""
    from harness import saltconf, tcroot  # pylint: disable=import-outside-toplevel
    from harness.lab import Master  # pylint: disable=import-outside-toplevel

    conf = saltconf.lab_master_config("tc", lab.base / "etc")
    conf["pillar_roots"] = {"base": [str(lab.base / "pillar-empty")]}  # no real beacons: probe only
    conf["max_event_size"] = max_event_size
    master = Master(lab, "master", conf)
    lab.daemons.append(master)
    master.start()
    minions = []
    for i, seat in enumerate(("fl-bad", "fl-good")):
        mconf = saltconf.tc_minion_config(tcroot.make(lab.base / "roots" / seat, i + 1))
        mconf["module_dirs"] = [str(CHECKOUT / "bench" / "_modules")]
        minion = lab.minion(seat, master, **mconf)
        # the bench measures floods, not enrollment: keys accepted up front, as salt-cloud seeds them
        saltconf.preseed_key(master.opts, seat, minion.root / "etc/salt/pki/minion")
        minions.append(minion)
    master.wait_ready()
    for minion in minions:
        minion.start()
    master.wait_minions([m.name for m in minions], timeout=300)
    return master


def run_once(base, label, max_event_size):
    from harness.lab import Lab  # pylint: disable=import-outside-toplevel

    with Lab(base / label) as lab:
        master = _start(lab, max_event_size)
        say(f"-- {label}: max_event_size {max_event_size}; master + 2 minions up")
        out = lab.base / "listen.json"
        listener = spawn(
            [sys.executable, "-m", "bench.flood", "_listen", "--master-conf", str(master.conf_dir / "master"),
             "--out", str(out), "--stop", str(lab.base / "stop")],
            cwd=str(CHECKOUT),
        )
        time.sleep(3)  # listener subscribed
        rss = RSS(master.proc.pid)
        _async(master, "fl-good", "tc_flood.probe", "duration=3600", f"interval={PROBE_INTERVAL_S}")
        time.sleep(3 * PROBE_INTERVAL_S)
        before = statistics.median(v for _, v in rss.samples[-8:])
        t_flood = time.time()
        big = _salt(master, "fl-bad", "tc_flood.fire", f"n={BIG_N}", f"pad={BIG_PAD}")
        t_big = time.time()
        epoch = int(time.time()) + 10
        small = _salt(master, "fl-bad", "tc_flood.fire", f"n={SMALL_N}", "per_request=100", f"epoch={epoch}")
        t_end = time.time()
        say(f"   big flood {t_big - t_flood:.1f} s: {big.strip()[:200]}")
        say(f"   small flood {t_end - t_big:.1f} s: {small.strip()[:200]}")
        time.sleep(2 * PROBE_INTERVAL_S)
        (lab.base / "stop").write_text("")
        listener.wait(120)  # it exits on the stop file
        rss.stop()
        time.sleep(2)  # the engine's last flush
        counters, by_sender = _store(master)
        seen = json.loads(out.read_text())
    good = [e for e in seen if e["seat"] == "fl-good" and t_flood <= e["recv"] <= t_end]
    lat = sorted(e["recv"] - e["ts"] for e in good)
    bigs = [e["bytes"] for e in seen if e["seat"] == "fl-bad" and (e["bytes"] > 100_000 or e["trimmed"])]
    peak = max(v for _, v in rss.samples)
    return {
        "max_event_size": max_event_size,
        "flood_s": round(t_end - t_flood, 1),
        "honest_events_during_flood": len(lat),
        "honest_latency_p50_ms": round(1000 * statistics.median(lat), 1) if lat else None,
        "honest_latency_max_ms": round(1000 * lat[-1], 1) if lat else None,
        "master_rss_growth_mb": round((peak - before) / 2**20, 1),
        "big_event_bytes_on_bus": round(statistics.mean(bigs)) if bigs else 0,
        "counters": {k: counters.get(k, 0) for k in ("accepted", "oversize", "rate_limited", "forged", "missed")},
        "refused_by_sender": [
            {k: r[k] for k in ("sender", "claimed", "reason", "count")} for r in by_sender[:4]
        ],
    }


def _listen(args):
    import salt.config  # pylint: disable=import-outside-toplevel
    import salt.payload  # pylint: disable=import-outside-toplevel
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    opts = salt.config.master_config(args.master_conf)
    seen = []
    stop = pathlib.Path(args.stop)
    with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus:
        while not stop.exists():
            evt = bus.get_event(wait=1, full=True)
            if not evt:
                continue
            match = TAG_RE.match(evt.get("tag") or "")
            if not match:
                continue
            data = evt["data"]
            body = data.get("data") if isinstance(data.get("data"), dict) and "sig" not in data else data
            ts = body.get("ts") if isinstance(body, dict) else None
            seen.append({
                "seat": match.group(1), "recv": time.time(), "ts": ts if isinstance(ts, (int, float)) else 0,
                "bytes": len(salt.payload.dumps(data)), "trimmed": "VALUE_TRIMMED" in json.dumps(data, default=str),
            })
    pathlib.Path(args.out).write_text(json.dumps(seen))


def _shipped_limit():
    from harness import saltconf  # pylint: disable=import-outside-toplevel

    return saltconf.shipped_master_config("tc")["max_event_size"]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[1])
    sub = parser.add_subparsers(dest="cmd")
    lis = sub.add_parser("_listen")
    lis.add_argument("--master-conf", required=True)
    lis.add_argument("--out", required=True)
    lis.add_argument("--stop", required=True)
    args = parser.parse_args(argv)
    if args.cmd == "_listen":
        return _listen(args)
    base = pathlib.Path(tempfile.mkdtemp(prefix="dffl-"))
    results = {}
    for label, size in (("salt_default", 1048576), ("shipped", _shipped_limit())):
        results[label] = run_once(base, label, size)
        say(json.dumps(results[label]))
    subprocess.run(["rm", "-rf", str(base)], check=False)  # kept for a look when a run failed
    d, s = results["salt_default"], results["shipped"]
    print(json.dumps({
        "bench": "flood",
        "shipped_max_event_size": s["max_event_size"],
        "rss_growth_mb": {"salt_default": d["master_rss_growth_mb"], "shipped": s["master_rss_growth_mb"]},
        "honest_latency_max_ms": {"salt_default": d["honest_latency_max_ms"], "shipped": s["honest_latency_max_ms"]},
        "honest_latency_p50_ms": {"salt_default": d["honest_latency_p50_ms"], "shipped": s["honest_latency_p50_ms"]},
        "big_event_bytes_on_bus": {"salt_default": d["big_event_bytes_on_bus"], "shipped": s["big_event_bytes_on_bus"]},
        "hostile_small_events": SMALL_N,
        "hostile_rate_limited": {"salt_default": d["counters"]["rate_limited"], "shipped": s["counters"]["rate_limited"]},
        "runs": results,
    }), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
