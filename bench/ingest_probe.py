"""
The ingest bench's helper processes: a bare bus listener, direct firers of signed events,
``salt --async`` triggers. Started through harness.proc (own process group each) and reaped
on the way out; their entry points are ``python -m bench.ingest _listen`` / ``_fire``.
"""

# pylint: disable=import-outside-toplevel

import json
import os
import pathlib
import re
import signal
import subprocess
import sys
import time

from harness.proc import spawn, stop_group
from harness.wait import wait_for

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
TAG_RE = re.compile(r"^salt/beacon/([^/]+)/tc_status/status$")
HEARTBEAT_S = 300

_CHILDREN = []  # helper processes (bus listeners, direct firers) to reap on the way out


def start(args, log_path):
    """``python -m bench.ingest <args>`` in its own process group, reaped by :func:`reap_all`."""
    proc = spawn([sys.executable, "-m", "bench.ingest", *args], log_path, cwd=str(CHECKOUT))
    _CHILDREN.append(proc)
    return proc


def reap(proc, timeout=10):
    stop_group(proc, timeout)
    if proc in _CHILDREN:
        _CHILDREN.remove(proc)


def reap_all():
    for proc in list(_CHILDREN):
        reap(proc)


def wait_file(path, proc, timeout, what):
    """Wait until ``path`` exists; fail at once if ``proc`` exits first."""
    wait_for(path.exists, timeout, 0.05, what, proc=proc)


class Listener:
    """A bare bus listener in its own process (``_listen`` below); results as JSON."""

    def __init__(self, master, work, name, expect, returns=0, idle=8.0, deadline=300.0):
        self.out = work / f"{name}.listen.json"
        ready = work / f"{name}.listen.ready"
        self.proc = start(
            [
                "_listen",
                "--master-conf", str(master.conf_dir / "master"),
                "--out", str(self.out), "--ready", str(ready),
                "--expect", str(expect), "--returns", str(returns),
                "--idle", str(idle), "--deadline", str(deadline),
            ],
            work / f"{name}.listen.log",
        )
        wait_file(ready, self.proc, 60, f"the {name} bus listener")

    def result(self, timeout=600):
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pass
        reap(self.proc)
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

def listen(args):
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


def fire(args):
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
