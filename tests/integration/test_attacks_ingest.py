"""
Attack suite for the thin-client ingest path (issue 9): a real tc master from
the shipped ``salt_tc/master.d`` (its own, so floods and frozen seats do not
disturb the inventory tests), real thin-client minions with real beacons.

The attacker is an enrolled thin client with root on its device: it holds its
own minion key and speaks through its own minion (``event.send``, single and
batched form). A real signed payload of another seat is captured from the
master bus, as someone who once saw one would hold it.
"""

import base64
import datetime
import json
import time

import pytest
import salt.crypt
import salt.utils.event

from harness import saltconf, tcroot
from harness.lab import wait_for
from tests.integration.conftest import enrolled_minion
from tests.support.minions import running as minions_running

HEARTBEAT = 4
ATTACKER, VICTIM, VPN = "tc-0101", "tc-0102", "tc-0103"
TAG = "salt/beacon/{}/tc_status/status"


@pytest.fixture(scope="module")
def master(salt_factories, lab_etc):
    overrides = saltconf.lab_master_config("tc", lab_etc, heartbeat=HEARTBEAT, beacon_interval=1)
    factory = salt_factories.salt_master_daemon(
        "tc-attack", overrides=overrides, on_auth_event_callback=lambda *a: None
    )
    with factory.started():
        yield factory


def _vpn_root(path):
    """A seat whose default route is a tunnel (no MAC), a long image string, 20 addresses."""
    root = tcroot.make(path, 103, firmware="13.1.0-" + "r" * 90, site="LON")
    (root / "sys/class/net/tun0").mkdir(parents=True)
    (root / "sys/class/net/tun0/address").write_text("\n")
    (root / "proc/net/route").write_text(
        "Iface\tDestination\tGateway\tFlags\tRefCnt\tUse\tMetric\tMask\tMTU\tWindow\tIRTT\n"
        "tun0\t00000000\t00000000\t0001\t0\t0\t0\t00000000\t0\t0\t0\n"
    )
    trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n" + "".join(
        f"     |-- 10.30.0.{i}\n        /32 host LOCAL\n" for i in range(1, 21)
    )
    (root / "proc/net/fib_trie").write_text(trie)
    return root


@pytest.fixture(scope="module")
def seats(master, tmp_path_factory):
    base = tmp_path_factory.mktemp("attack-roots")
    roots = {
        ATTACKER: tcroot.make(base / ATTACKER, 101),
        VICTIM: tcroot.make(base / VICTIM, 102, firmware="12.9.4", site="MAN"),
        VPN: _vpn_root(base / VPN),
    }
    tokens = tmp_path_factory.mktemp("attack-tokens")
    minions = [enrolled_minion(master, seat, root, tokens) for seat, root in roots.items()]
    with minions_running(master, minions, "tc-01*") as running:
        wait_for(lambda: len(_inventory(master)) == 3, timeout=300, what="3 seats in the inventory")
        yield running


def _run(master, fun, *args):
    ret = master.salt_run_cli(timeout=90).run(fun, *args)
    assert ret.returncode == 0, ret
    return ret.data


def _inventory(master):
    data = _run(master, "tc_inventory.list", "fields=all")
    return {s["seat"]: s for s in data} if isinstance(data, list) else {}


def _epoch(iso):
    return datetime.datetime.fromisoformat(iso).timestamp()


def _show(master, seat):
    return _run(master, "tc_inventory.show", seat)


def _summary(master):
    return _run(master, "tc_inventory.summary")


def _by_sender(summary, reason, sender=None, claimed=None):
    return sum(
        r["count"]
        for r in summary["rejects_by_sender"]
        if r["reason"] == reason and r["sender"] == sender and (claimed is None or r["claimed"] == claimed)
    )


def _send(master, attacker, tag, data):
    """The attacker's minion fires one event (single form: payload under data['data'])."""
    ret = master.salt_cli(timeout=90).run("event.send", tag, f"data={json.dumps(data)}", minion_tgt=attacker)
    assert ret.returncode == 0 and ret.data is True, ret


def _send_batch(master, attacker, events):
    """The batched form (as beacons send): each entry's data goes on the bus verbatim."""
    preload = json.dumps({"events": [{"tag": t, "data": d} for t, d in events]})
    ret = master.salt_cli(timeout=90).run(
        "event.send", "ignored", f"preload={preload}", minion_tgt=attacker
    )
    assert ret.returncode == 0, ret


def _own_key(minion):
    return salt.crypt.PrivateKey.from_file(f"{minion.config['pki_dir']}/minion.pem")


def _signed(key, seat, seq, epoch, **facts):
    body = {
        "v": 2, "epoch": epoch, "seat": seat, "seq": seq, "ts": time.time(), "reason": "heartbeat",
        "changed": [], "heartbeat": HEARTBEAT, "facts": dict({"firmware": "13.1.0"}, **facts),
    }
    canon = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    return dict(body, sig=base64.b64encode(key.sign(canon, algorithm="PKCS1v15-SHA224")).decode())


def _capture(master, seat, timeout=60):
    """A real signed beacon payload of ``seat``, read off the tc master's bus."""
    opts = master.config
    with salt.utils.event.get_master_event(opts, opts["sock_dir"], listen=True) as bus:
        end = time.time() + timeout
        while time.time() < end:
            evt = bus.get_event(wait=5, tag=TAG.format(seat), full=True)
            if evt and isinstance(evt.get("data"), dict) and "sig" in evt["data"]:
                return {k: v for k, v in evt["data"].items() if k not in ("_stamp", "id")}
    raise TimeoutError(f"no beacon event of {seat} on the bus")


def test_replay_of_another_seats_old_payload_is_refused_and_counted(master, seats):
    old = _capture(master, VICTIM)
    wait_for(lambda: _show(master, VICTIM)["seq"] > old["seq"], timeout=300, what="the victim to move on")
    seats[VICTIM].terminate()  # the victim's thin client freezes
    try:
        frozen = _show(master, VICTIM)

        def replay_until_offline():
            _send(master, ATTACKER, TAG.format(VICTIM), old)
            _send_batch(master, ATTACKER, [(TAG.format(VICTIM), old)])
            return _inventory(master)[VICTIM]["status"] == "offline"

        # heartbeat 4 s, offline after 3: the replays must not keep it online
        wait_for(replay_until_offline, timeout=120, interval=0, what="the frozen victim to go offline")
        after = _show(master, VICTIM)
        assert (after["seq"], after["last_seen"], after["firmware"]) == (
            frozen["seq"], frozen["last_seen"], frozen["firmware"]
        )
        summary = _summary(master)
        assert summary["ingest"].get("stale", 0) >= 2
        assert _by_sender(summary, "stale", claimed=VICTIM) >= 2
        rejects = [r for r in summary["recent_rejects"] if r["claimed"] == VICTIM]
        assert rejects and all(r["sender"] is None for r in rejects)  # the victim is never blamed
        assert "sender unknown" in rejects[0]["attribution"]
    finally:
        seats[VICTIM].start()
    # rebooted victim: a new epoch lands; the old boot's payload stays refused
    wait_for(lambda: _inventory(master)[VICTIM]["status"] == "online", timeout=300, what="victim back online")
    assert _show(master, VICTIM)["epoch"] > old["epoch"]
    before = _summary(master)["ingest"].get("replayed", 0)
    _send(master, ATTACKER, TAG.format(VICTIM), old)
    wait_for(lambda: _summary(master)["ingest"].get("replayed", 0) > before, timeout=300, what="replayed counted")


def test_a_flood_from_one_seat_is_limited_and_charged_to_it(master, seats):
    victim_seen = _show(master, VICTIM)["last_seen"]
    key = _own_key(seats[ATTACKER])
    epoch = int(time.time()) + 10**6  # ahead of its own beacon: only the attacker's seat suffers
    # one request of 150 validly signed, fresh events of its own (fits one command-line argument)
    _send_batch(master, ATTACKER, [(TAG.format(ATTACKER), _signed(key, ATTACKER, n, epoch)) for n in range(1, 151)])
    limit = 64  # salt_tc/master.d/20-ingest.conf, per heartbeat window

    def limited():
        summary = _summary(master)
        # all 150 land within one window, or straddle one boundary at worst
        return _by_sender(summary, "rate_limited", sender=ATTACKER) >= 150 - 2 * limit and summary

    summary = wait_for(limited, timeout=300, what="the flood to be limited")
    # charged to the attacker, proven by its own signature; nobody else charged
    assert all(r["sender"] in (None, ATTACKER) for r in summary["rejects_by_sender"])
    assert any(r["attribution"] == ATTACKER and r["reason"] == "rate_limited" for r in summary["rejects_by_sender"])
    # the other seat's heartbeats keep landing
    wait_for(lambda: _epoch(_show(master, VICTIM)["last_seen"]) > _epoch(victim_seen) + HEARTBEAT, timeout=300, what="victim beats")
    assert _inventory(master)[VICTIM]["status"] == "online"


def test_an_oversize_event_is_refused_and_attributed(master, seats):
    key = _own_key(seats[ATTACKER])
    big = _signed(key, ATTACKER, 1, int(time.time()) + 2 * 10**6, image="x" * 30000)
    before = _summary(master)["ingest"].get("oversize", 0)
    _send(master, ATTACKER, TAG.format(ATTACKER), big)
    summary = wait_for(
        lambda: (s := _summary(master))["ingest"].get("oversize", 0) > before and s, timeout=30, what="oversize"
    )
    assert _by_sender(summary, "oversize", sender=ATTACKER) >= 1
    assert "x" * 100 not in json.dumps(_show(master, ATTACKER))


def test_odd_but_honest_seat_stays_online_with_the_fields_flagged(master, seats):
    seat = wait_for(
        lambda: (s := _inventory(master).get(VPN)) and s["status"] == "online" and s, timeout=60, what="VPN seat"
    )
    assert seat["iface"] == "tun0" and seat["mac"] is None
    assert len(seat["ips"]) == 16 and seat["ips"][0] == "10.30.0.1"
    assert seat["firmware"] == ("13.1.0-" + "r" * 90)[:64]
    assert set(seat["flags"]) == {"firmware", "ips"}
    assert "mac" not in seat["flags"]  # no MAC on a tunnel is honest, not odd
