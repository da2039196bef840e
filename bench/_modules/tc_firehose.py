"""
Bench-only execution module: a thin client's ``tc_status`` beacon, sped up.

Builds ``n`` valid, signed ``tc_status`` payloads exactly as the beacon does
(``_beacons/tc_status.build_payload`` + ``canonical``, signed with the minion's
own key ``<pki_dir>/minion.pem``, PKCS1v15-SHA224, base64) and sends each one
to the master the way Salt 3008's minion forwards beacon output: a
``_minion_event`` request with a one-entry ``events`` list (see
``salt.minion.Minion._fire_master_prepare`` / ``handle_event('__beacons_return')``),
one event per request, all over ONE request channel.

The master fires each entry on its bus as ``salt/beacon/<id>/tc_status/status``
with the payload itself as the event data.

Loaded with the minion option ``module_dirs: [<checkout>/bench/_modules]``;
never synced, never shipped.
"""

import base64
import importlib.util
import os
import pathlib
import time

import salt.channel.client
import salt.crypt

__virtualname__ = "tc_firehose"

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
_BEACON = {}


def __virtual__():
    return __virtualname__


def _beacon_module():
    """deskfleet's real beacon module, imported from the checkout (no Salt loader needed)."""
    if "mod" not in _BEACON:
        spec = importlib.util.spec_from_file_location(
            "deskfleet_tc_status_beacon", CHECKOUT / "_beacons" / "tc_status.py"
        )
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        _BEACON["mod"] = mod
    return _BEACON["mod"]


def build(n, start_seq=1, heartbeat=300, root=None):
    """``n`` signed beacon events (``{"tag", "data", "beacon_name"}``) for this minion."""
    beacon = _beacon_module()
    minion_id = __opts__["id"]
    key = salt.crypt.PrivateKey.from_file(os.path.join(__opts__["pki_dir"], "minion.pem"))
    root = root or __grains__.get("deskfleet_lab_root") or "/"
    conf = beacon._conf({"root": root, "heartbeat": heartbeat})  # pylint: disable=protected-access
    facts = beacon.collect(conf)
    events = []
    for i in range(int(n)):
        seq = int(start_seq) + i
        state = {"seq": seq}
        reason, changed = ("start", sorted(facts)) if seq == 1 else ("heartbeat", [])
        payload = beacon.build_payload(minion_id, state, reason, changed, facts, time.time(), heartbeat)
        payload["sig"] = base64.b64encode(
            key.sign(beacon.canonical(payload), algorithm=beacon.SIGN_ALGORITHM)
        ).decode()
        # what salt.beacons.Beacon.process adds on the minion
        payload["id"] = minion_id
        events.append(
            {
                "tag": f"salt/beacon/{minion_id}/tc_status/status",
                "data": payload,
                "beacon_name": "tc_status",
            }
        )
    return events


def fire(n=100, start_seq=1, heartbeat=300, root=None, timeout=60):
    """
    Build ``n`` signed tc_status events, then send them one request each.

    Returns counts and wall-clock times (``time.time()``) of the first and last send.

    CLI Example::

        salt '*' tc_firehose.fire n=500
    """
    t_build = time.time()
    events = build(n, start_seq=start_seq, heartbeat=heartbeat, root=root)
    built = time.time() - t_build
    sent = errors = 0
    first = last = None
    with salt.channel.client.ReqChannel.factory(__opts__, crypt="aes") as channel:
        for event in events:
            load = {"id": __opts__["id"], "cmd": "_minion_event", "pretag": None, "events": [event]}
            now = time.time()
            first = first or now
            try:
                channel.send(load, tries=1, timeout=timeout)
                sent += 1
            except Exception:  # pylint: disable=broad-except
                errors += 1
            last = time.time()
    return {
        "id": __opts__["id"],
        "built": len(events),
        "build_s": round(built, 3),
        "sent": sent,
        "errors": errors,
        "first": first,
        "last": last,
        "send_s": round((last or 0) - (first or 0), 3),
    }
