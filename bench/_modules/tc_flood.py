"""
Bench-only execution module: one enrolled thin client turned hostile, and an
honest one probing. Signed ``tc_status`` payloads (the beacon's own
``build_payload`` + ``canonical``, the minion's own key), sent the way the
minion forwards beacon output: ``_minion_event`` requests with an ``events``
list over one request channel.

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

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
_BEACON = {}

__virtualname__ = "tc_flood"


def __virtual__():
    return __virtualname__


def _beacon():
    """deskfleet's real beacon module, imported from the checkout."""
    if "mod" not in _BEACON:
        spec = importlib.util.spec_from_file_location("deskfleet_tc_status_flood", CHECKOUT / "_beacons" / "tc_status.py")
        _BEACON["mod"] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(_BEACON["mod"])
    return _BEACON["mod"]


def _signed(key, beacon, seat, seq, epoch, facts):
    payload = beacon.build_payload(seat, {"seq": seq, "epoch": epoch}, "heartbeat", [], facts, time.time(), 300)
    payload["sig"] = base64.b64encode(key.sign(beacon.canonical(payload), algorithm=beacon.SIGN_ALGORITHM)).decode()
    payload["id"] = seat
    return {"tag": f"salt/beacon/{seat}/tc_status/status", "data": payload, "beacon_name": "tc_status"}


def _channel_send(events, per_request, timeout):
    sent = errors = 0
    with salt.channel.client.ReqChannel.factory(__opts__, crypt="aes") as channel:
        for i in range(0, len(events), per_request):
            load = {"id": __opts__["id"], "cmd": "_minion_event", "pretag": None, "events": events[i : i + per_request]}
            try:
                channel.send(load, tries=1, timeout=timeout)
                sent += len(load["events"])
            except Exception:  # pylint: disable=broad-except
                errors += len(load["events"])
    return sent, errors


def fire(n=100, pad=0, per_request=1, epoch=None, timeout=120):
    """
    Send ``n`` validly signed events of this seat, each padded with ``pad``
    bytes in an extra fact, ``per_request`` per request.

    CLI Example::

        salt tc-x tc_flood.fire n=40 pad=900000
    """
    beacon = _beacon()
    key = salt.crypt.PrivateKey.from_file(os.path.join(__opts__["pki_dir"], "minion.pem"))
    epoch = int(epoch or time.time())
    facts = {"firmware": "13.1.0", "padding": "x" * int(pad)}
    t0 = time.time()
    sent = errors = 0
    for start in range(0, int(n), 100):  # build in slices: 40 x 900 kB is memory enough
        events = [_signed(key, beacon, __opts__["id"], s + 1, epoch, facts) for s in range(start, min(int(n), start + 100))]
        got = _channel_send(events, int(per_request), timeout)
        sent, errors = sent + got[0], errors + got[1]
    return {"sent": sent, "errors": errors, "seconds": round(time.time() - t0, 3)}


def probe(duration=30, interval=0.5, epoch=None):
    """
    An honest seat: one signed heartbeat every ``interval`` s for ``duration``
    s, one request each; its ``ts`` is the send time (same box as the listener).

    CLI Example::

        salt tc-y tc_flood.probe duration=30
    """
    beacon = _beacon()
    key = salt.crypt.PrivateKey.from_file(os.path.join(__opts__["pki_dir"], "minion.pem"))
    epoch = int(epoch or time.time())
    end, seq, errors = time.time() + float(duration), 0, 0
    while time.time() < end:
        seq += 1
        errors += _channel_send([_signed(key, beacon, __opts__["id"], seq, epoch, {"firmware": "13.1.0"})], 1, 60)[1]
        time.sleep(float(interval))
    return {"sent": seq, "errors": errors}
