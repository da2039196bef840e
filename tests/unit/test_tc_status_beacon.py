"""
Unit tests for the ``tc_status`` beacon (``_beacons/tc_status.py``): fact
collection from a fake thin-client root, configuration validation, the
change/heartbeat decision, and the signed payload that ``beacon()`` returns.
"""

import base64
import json
import os
import random
import socket
import subprocess

import pytest
import salt.crypt  # imported up front: beacon() imports it lazily, never under the no-subprocess patch

import tc_assets
import tc_ingest_batch
import tc_status
from harness import tcroot

SEAT = "tc-0007"
IPV6_GLOBAL_ETH0 = "2001:0db8:0000:0000:0000:0000:0000:0001"

# /proc/net/fib_trie as the kernel writes it: Main and Local tables list the same
# local addresses, plus network, broadcast and loopback entries that are not "own" IPs.
FIB_TRIE = """\
Main:
  +-- 0.0.0.0/0 3 0 5
     |-- 0.0.0.0
        /0 universe UNICAST
     +-- 10.20.0.0/24 2 0 2
        |-- 10.20.0.0
           /24 link UNICAST
        |-- 10.20.0.9
           /32 host LOCAL
        |-- 10.20.0.255
           /32 link BROADCAST
     +-- 127.0.0.0/8 2 0 2
        +-- 127.0.0.0/31 1 0 0
           |-- 127.0.0.0
              /8 host LOCAL
           |-- 127.0.0.1
              /32 host LOCAL
        |-- 127.255.255.255
           /32 link BROADCAST
     |-- 192.168.5.20
        /32 host LOCAL
Local:
  +-- 0.0.0.0/0 3 0 5
     +-- 10.20.0.0/24 2 0 2
        |-- 10.20.0.9
           /32 host LOCAL
     +-- 127.0.0.0/8 2 0 2
        |-- 127.0.0.1
           /32 host LOCAL
"""

# /proc/net/if_inet6: address, ifindex, prefix length, scope, flags, interface
IF_INET6 = """\
00000000000000000000000000000001 01 80 10 80       lo
fe80000000000000505400fffe000007 02 40 20 80     eth0
20010db8000000000000000000000001 02 40 00 80     eth0
20010db8000000000000000000000099 03 40 00 80    wlan0
"""


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def root(tmp_path):
    """A thin-client root with two local IPv4s, IPv6 on two interfaces, and a known input mtime."""
    r = tcroot.make(
        tmp_path / "root",
        7,
        firmware="13.1.0",
        site="LON",
        department="sales",
        session=("desk-0007", "connected"),
    )
    _write(r / "proc/net/fib_trie", FIB_TRIE)
    _write(r / "proc/net/if_inet6", IF_INET6)
    return r


def _set_input_mtime(root, name, when):
    path = root / "dev/input/by-path" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.touch()
    os.utime(path, (when, when))


def _conf(root, **extra):
    return tc_status._conf([{"root": str(root)}] + [{k: v} for k, v in extra.items()])


# ---- collect() -------------------------------------------------------------------


def test_collect_reads_every_fact_from_the_root(root):
    _set_input_mtime(root, "platform-i8042-serio-0-event-kbd", 1_000_000.0)
    _set_input_mtime(root, "platform-i8042-serio-1-event-mouse", 1_000_050.0)  # newest wins
    boot_id = (root / "proc/sys/kernel/random/boot_id").read_text().strip()

    facts = tc_status.collect(_conf(root), now=1_000_173.4)

    assert facts == {
        "serial": "TC000007",
        "model": "UD3-M350C",
        "vendor": "IGEL Technology",
        "bios": "1.09",
        "iface": "eth0",
        "mac": "52:54:00:00:00:07",
        # own IPv4s from fib_trie (deduplicated, loopback/network/broadcast excluded),
        # then global IPv6 of the default-route interface only
        "ips": ["10.20.0.9", "192.168.5.20", IPV6_GLOBAL_ETH0],
        "firmware": "13.1.0",
        "image": "deskfleet-tc",
        "boot_id": boot_id,
        "uptime": 3600.25,
        "site": "LON",
        "department": "sales",
        "asset_id": "A-00007",
        "session_target": "desk-0007",
        "session_state": "connected",
        "idle_seconds": 123.4,
    }


def test_ipv4_local_skips_loopback_and_non_local_entries():
    assert tc_status.ipv4_local(FIB_TRIE) == ["10.20.0.9", "192.168.5.20"]
    assert tc_status.ipv4_local("") == []
    assert tc_status.ipv4_local(None) == []


def test_ipv6_global_keeps_global_scope_of_the_given_interface():
    assert tc_status.ipv6_global(IF_INET6, "eth0") == [IPV6_GLOBAL_ETH0]
    assert tc_status.ipv6_global(IF_INET6) == [IPV6_GLOBAL_ETH0, "2001:0db8:0000:0000:0000:0000:0000:0099"]


def test_firmware_prefers_image_version_over_version_id(root):
    _write(root / "etc/os-release", 'ID=debian\nVERSION_ID="12"\nIMAGE_ID=deskfleet-tc\nIMAGE_VERSION="13.2.0"\n')
    assert tc_status.collect(_conf(root))["firmware"] == "13.2.0"

    _write(root / "etc/os-release", 'ID=debian\nVERSION_ID="12"\n')
    facts = tc_status.collect(_conf(root))
    assert facts["firmware"] == "12"
    assert facts["image"] == "debian"  # IMAGE_ID missing: falls back to ID


def test_missing_files_give_none_not_errors(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    facts = tc_status.collect(_conf(empty), now=1000.0)
    assert facts == {
        "serial": None,
        "model": None,
        "vendor": None,
        "bios": None,
        "iface": None,
        "mac": None,
        "ips": [],
        "firmware": None,
        "image": None,
        "boot_id": None,
        "uptime": None,
        "site": None,
        "department": None,
        "asset_id": None,
        "session_target": None,
        "session_state": "none",
        "idle_seconds": None,
    }


def test_without_a_default_route_the_first_non_loopback_interface_is_used(root):
    (root / "proc/net/route").unlink()
    facts = tc_status.collect(_conf(root))
    assert facts["iface"] == "eth0"
    assert facts["mac"] == "52:54:00:00:00:07"


@pytest.mark.parametrize(
    "content",
    ["{not json", "[1, 2]", '"connected"', ""],
    ids=["broken-json", "json-list", "json-string", "empty-file"],
)
def test_invalid_session_file_gives_state_none(root, content):
    _write(root / "run/deskfleet/session.json", content)
    facts = tc_status.collect(_conf(root))
    assert facts["session_state"] == "none"
    assert facts["session_target"] is None


def test_unknown_session_state_is_reported_as_none(root):
    _write(root / "run/deskfleet/session.json", json.dumps({"target": "desk-0007", "state": "exploded"}))
    facts = tc_status.collect(_conf(root))
    assert facts["session_state"] == "none"
    assert facts["session_target"] == "desk-0007"


def test_missing_session_file_gives_state_none(root):
    (root / "run/deskfleet/session.json").unlink()
    facts = tc_status.collect(_conf(root))
    assert (facts["session_target"], facts["session_state"]) == (None, "none")


# ---- validate() ------------------------------------------------------------------


@pytest.mark.parametrize(
    "item, needle",
    [
        ({"heartbeat": 0}, "heartbeat"),
        ({"heartbeat": -5}, "heartbeat"),
        ({"heartbeat": "300"}, "heartbeat"),
        ({"heartbeat": True}, "heartbeat"),
        ({"heartbeat": None}, "heartbeat"),
        ({"jitter": 1}, "jitter"),
        ({"jitter": 1.5}, "jitter"),
        ({"jitter": -0.1}, "jitter"),
        ({"jitter": "0.2"}, "jitter"),
        ({"jitter": None}, "jitter"),
        ({"idle_after": 0}, "idle_after"),
        ({"idle_after": "600"}, "idle_after"),
        ({"root": "relative/root"}, "root"),
        ({"root": 5}, "root"),
        ({"root": "/nonexistent/deskfleet/root"}, "root"),
    ],
)
def test_validate_rejects_bad_values(item, needle):
    ok, message = tc_status.validate([{"heartbeat": 300}, item])
    assert ok is False
    assert needle in message


def test_validate_rejects_a_relative_root_even_if_it_exists(tmp_path, monkeypatch):
    (tmp_path / "rel").mkdir()
    monkeypatch.chdir(tmp_path)
    ok, message = tc_status.validate([{"root": "rel"}])
    assert ok is False
    assert "absolute path" in message


def test_validate_rejects_a_root_that_is_a_file(tmp_path):
    afile = tmp_path / "file"
    afile.write_text("x")
    ok, message = tc_status.validate([{"root": str(afile)}])
    assert ok is False
    assert "not a directory" in message


@pytest.mark.parametrize("config", ["tc_status", 5, None, ["heartbeat"], [{"heartbeat": 300}, "jitter"]])
def test_validate_rejects_config_that_is_not_a_list_of_dicts(config):
    ok, message = tc_status.validate(config)
    assert ok is False
    assert "list of single-key dicts" in message


def test_validate_accepts_good_config(root):
    good = [{"interval": 5}, {"heartbeat": 300}, {"jitter": 0.2}, {"idle_after": 600}, {"root": str(root)}]
    assert tc_status.validate(good) == (True, "valid")
    assert tc_status.validate({"heartbeat": 60.5, "jitter": 0, "root": str(root)}) == (True, "valid")
    assert tc_status.validate([]) == (True, "valid")  # all defaults, root "/"


# ---- decide() --------------------------------------------------------------------

HB, JITTER, IDLE_AFTER = 100.0, 0.2, 600


def _facts(**over):
    facts = {
        "serial": "TC000007",
        "mac": "52:54:00:00:00:07",
        "ips": ["10.20.0.9"],
        "firmware": "13.1.0",
        "uptime": 3600.0,
        "session_target": "desk-0007",
        "session_state": "connected",
        "idle_seconds": 5.0,
    }
    facts.update(over)
    return facts


def _decide(state, facts, now, rng=lambda: 0.0, jitter=JITTER):
    return tc_status.decide(state, facts, now, HB, jitter, IDLE_AFTER, rng=rng)


def test_first_call_is_start_with_all_stable_fields():
    state = {}
    reason, changed = _decide(state, _facts(), 1000.0)
    assert reason == "start"
    assert "firmware" in changed and "idle" in changed
    assert "uptime" not in changed and "idle_seconds" not in changed
    assert changed == sorted(changed)
    assert state["seq"] == 1


def test_unchanged_facts_emit_nothing_until_the_heartbeat_is_due():
    state = {}
    _decide(state, _facts(), 1000.0, rng=lambda: 0.0)  # no jitter drawn: next beat at +HB
    for t in (1000.0, 1001.0, 1050.0, 1000.0 + HB - 0.001):
        assert _decide(state, _facts(), t) is None
    assert state["seq"] == 1
    assert _decide(state, _facts(), 1000.0 + HB) == ("heartbeat", [])
    assert state["seq"] == 2
    # the next one is a full heartbeat later again
    assert _decide(state, _facts(), 1000.0 + 2 * HB - 0.001) is None
    assert _decide(state, _facts(), 1000.0 + 2 * HB) == ("heartbeat", [])


@pytest.mark.parametrize("draw", [0.0, 0.25, 0.5, 0.999999])
def test_jittered_heartbeat_is_due_at_hb_times_one_minus_jitter_share(draw):
    state = {}
    _decide(state, _facts(), 0.0, rng=lambda: draw)
    due = HB * (1 - JITTER * draw)
    assert HB * (1 - JITTER) <= due <= HB
    assert state["next_heartbeat"] == pytest.approx(due)
    assert _decide(state, _facts(), due - 0.001) is None
    assert _decide(state, _facts(), due)[0] == "heartbeat"


def test_jitter_spreads_heartbeats_within_bounds():
    rng = random.Random(42).random
    gaps = []
    for _ in range(300):
        state = {}
        _decide(state, _facts(), 0.0, rng=rng)
        gaps.append(state["next_heartbeat"])
    assert all(HB * (1 - JITTER) <= g <= HB for g in gaps)
    # the jitter is really applied: the fleet does not beat in lock-step
    assert max(gaps) - min(gaps) > HB * JITTER * 0.8


def test_zero_jitter_beats_exactly_every_heartbeat():
    state = {}
    _decide(state, _facts(), 0.0, rng=lambda: 0.7, jitter=0)
    assert state["next_heartbeat"] == HB


def test_firmware_change_emits_change_with_only_firmware():
    state = {}
    _decide(state, _facts(), 1000.0)
    assert _decide(state, _facts(firmware="13.2.0"), 1010.0) == ("change", ["firmware"])
    assert state["seq"] == 2
    # the new firmware is the new baseline
    assert _decide(state, _facts(firmware="13.2.0"), 1020.0) is None


def test_several_changed_fields_are_listed_sorted():
    state = {}
    _decide(state, _facts(), 1000.0)
    verdict = _decide(state, _facts(session_state="disconnected", ips=["10.20.0.10"]), 1001.0)
    assert verdict == ("change", ["ips", "session_state"])


def test_volatile_facts_alone_do_not_emit():
    state = {}
    _decide(state, _facts(), 1000.0)
    assert _decide(state, _facts(uptime=3700.0, idle_seconds=90.0), 1010.0) is None
    assert _decide(state, _facts(uptime=9999.0, idle_seconds=IDLE_AFTER - 0.1), 1020.0) is None
    assert state["seq"] == 1


def test_crossing_idle_after_emits_both_ways():
    state = {}
    _decide(state, _facts(idle_seconds=5.0), 1000.0)
    assert _decide(state, _facts(idle_seconds=float(IDLE_AFTER)), 1010.0) == ("change", ["idle"])
    assert _decide(state, _facts(idle_seconds=IDLE_AFTER + 500.0), 1020.0) is None
    assert _decide(state, _facts(idle_seconds=1.0), 1030.0) == ("change", ["idle"])


def test_a_change_restarts_the_heartbeat_timer():
    state = {}
    _decide(state, _facts(), 0.0)
    _decide(state, _facts(firmware="13.2.0"), 60.0)
    assert _decide(state, _facts(firmware="13.2.0"), HB) is None  # would have been due without the change
    assert _decide(state, _facts(firmware="13.2.0"), 60.0 + HB) == ("heartbeat", [])


# ---- beacon(): signed payloads ---------------------------------------------------


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    """The seat's minion key pair, plus a neighbour's, and a master pki_dir that accepts both."""
    base = tmp_path_factory.mktemp("beacon-keys")
    seat_priv, seat_pub = salt.crypt.gen_keys(2048)
    other_priv, other_pub = salt.crypt.gen_keys(2048)
    minion_pki = base / "minion-pki"
    minion_pki.mkdir()
    (minion_pki / "minion.pem").write_text(seat_priv)
    (minion_pki / "minion.pub").write_text(seat_pub)
    master_pki = base / "master-pki"
    (master_pki / "minions").mkdir(parents=True)
    (master_pki / "minions" / SEAT).write_text(seat_pub)
    (master_pki / "minions" / "tc-0008").write_text(other_pub)
    return {
        "minion_pki": minion_pki,
        "master_pki": master_pki,
        "seat_pub": seat_pub,
        "other_priv": other_priv,
        "other_pub": other_pub,
    }


@pytest.fixture
def minion(monkeypatch, keys):
    """tc_status as the loader would have it: __opts__ set, no memory of earlier calls."""
    cachedir = str(keys["minion_pki"].parent / "cache")
    monkeypatch.setattr(
        tc_status, "__opts__", {"id": SEAT, "pki_dir": str(keys["minion_pki"]), "cachedir": cachedir}, raising=False
    )
    monkeypatch.setattr(tc_status, "_STATE", {})
    monkeypatch.setattr(tc_status, "_KEY", {})
    return keys


def _verifies(keys, sender, payload):
    verify = tc_assets.pki_verifier(str(keys["master_pki"]))
    return verify(sender, tc_assets.canonical(payload), base64.b64decode(payload["sig"]))


def test_beacon_returns_one_signed_status_payload(minion, root):
    ret = tc_status.beacon([{"root": str(root)}, {"heartbeat": 300}])
    assert isinstance(ret, list) and len(ret) == 1
    payload = ret[0]
    assert payload["tag"] == "status"
    assert payload["v"] == tc_status.PAYLOAD_VERSION == 2
    assert isinstance(payload["epoch"], int) and payload["epoch"] > 0
    assert payload["seat"] == SEAT
    assert payload["seq"] == 1
    assert payload["reason"] == "start"
    assert payload["heartbeat"] == 300
    assert payload["facts"]["serial"] == "TC000007"
    assert payload["facts"]["firmware"] == "13.1.0"
    assert payload["facts"]["ips"] == ["10.20.0.9", "192.168.5.20", IPV6_GLOBAL_ETH0]
    # the beacon and the master agree on what is signed
    assert tc_status.canonical(payload) == tc_assets.canonical(payload)
    assert _verifies(minion, SEAT, payload)
    # not valid as the neighbour's, and not once the facts are altered
    assert not _verifies(minion, "tc-0008", payload)
    tampered = json.loads(json.dumps(payload))
    tampered["facts"]["firmware"] = "6.6.6"
    assert not _verifies(minion, SEAT, tampered)


def test_beacon_payload_is_accepted_by_the_master_as_salt_delivers_it(minion, root):
    (payload,) = tc_status.beacon([{"root": str(root)}])
    # salt.beacons.Beacon.process: tag suffix popped into the event tag, minion id added
    data = dict(payload)
    tag = f"salt/beacon/{SEAT}/tc_status/" + data.pop("tag")
    data["id"] = SEAT
    data = json.loads(json.dumps(data))  # over the wire: tuples become lists, etc.
    row = tc_ingest_batch.parse_event(tag, data, tc_assets.pki_verifier(str(minion["master_pki"])), 5000.0)
    assert row["seat"] == SEAT
    assert row["firmware"] == "13.1.0"
    assert row["mac"] == "52:54:00:00:00:07"
    assert json.loads(row["ips"]) == ["10.20.0.9", "192.168.5.20", "2001:db8::1"]
    assert row["last_reason"] == "start"


def test_beacon_is_quiet_when_nothing_changed_and_reports_a_firmware_change(minion, root):
    config = [{"root": str(root)}, {"heartbeat": 300}]
    (first,) = tc_status.beacon(config)
    assert tc_status.beacon(config) == []
    tcroot.set_firmware(root, "13.2.0")
    (second,) = tc_status.beacon(config)
    assert second["reason"] == "change"
    assert second["changed"] == ["firmware"]
    assert second["seq"] == first["seq"] + 1
    assert second["facts"]["firmware"] == "13.2.0"
    assert _verifies(minion, SEAT, second)


def test_beacon_signs_with_a_rotated_minion_key(minion, root, tmp_path, monkeypatch):
    pki = tmp_path / "pki"
    pki.mkdir()
    (pki / "minion.pem").write_text((minion["minion_pki"] / "minion.pem").read_text())
    monkeypatch.setattr(tc_status, "__opts__", {"id": SEAT, "pki_dir": str(pki), "cachedir": str(tmp_path)}, raising=False)
    (first,) = tc_status.beacon([{"root": str(root)}])
    assert _verifies(minion, SEAT, first)

    # the key is replaced on disk: the next event is signed with the new one
    (pki / "minion.pem").write_text(minion["other_priv"])
    stat = os.stat(pki / "minion.pem")
    os.utime(pki / "minion.pem", (stat.st_atime, stat.st_mtime + 10))
    tcroot.set_firmware(root, "13.2.0")
    (second,) = tc_status.beacon([{"root": str(root)}])
    assert not _verifies(minion, SEAT, second)
    verify = tc_assets.pki_verifier(str(minion["master_pki"]))
    assert verify("tc-0008", tc_assets.canonical(second), base64.b64decode(second["sig"]))


def test_beacon_spawns_no_subprocess_and_opens_no_socket(minion, root, monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("tc_status must not spawn processes or open sockets")

    monkeypatch.setattr(subprocess.Popen, "__init__", forbidden)
    monkeypatch.setattr(os, "fork", forbidden)
    monkeypatch.setattr(os, "posix_spawn", forbidden)
    monkeypatch.setattr(os, "posix_spawnp", forbidden)
    monkeypatch.setattr(os, "system", forbidden)
    monkeypatch.setattr(os, "popen", forbidden)
    monkeypatch.setattr(socket.socket, "connect", forbidden)
    monkeypatch.setattr(socket, "getaddrinfo", forbidden)

    config = [{"root": str(root)}]
    reasons = []
    for step in range(6):
        if step == 2:
            tcroot.set_firmware(root, "13.2.0")
        if step == 4:
            tcroot.set_session(root, "desk-0009", "connecting")
        ret = tc_status.beacon(config)
        reasons.append([p["reason"] for p in ret])
    # the whole path ran, key loading and signing included
    assert reasons == [["start"], [], ["change"], [], ["change"], []]
    assert tc_status._KEY.get("key") is not None


# ---- start epoch and bounded facts (freshness, odd but honest seats) -------------------


def test_each_start_gets_a_higher_epoch_even_if_the_clock_goes_back(tmp_path):
    path = str(tmp_path / "cache" / tc_status.EPOCH_FILE)
    first = tc_status.next_epoch(path, 1_700_000_000.5)
    assert first == 1_700_000_000
    assert tc_status.next_epoch(path, 1_700_000_000.9) == first + 1  # restarted within the second
    assert tc_status.next_epoch(path, 1_000.0) == first + 2  # clock set back: still higher
    os.unlink(path)  # re-imaged device: the wall clock keeps it rising
    assert tc_status.next_epoch(path, 1_800_000_000.0) == 1_800_000_000


def test_an_unwritable_epoch_file_does_not_stop_the_beacon(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    assert tc_status.next_epoch(str(blocker / "sub" / tc_status.EPOCH_FILE), 5000.0) == 5000


def test_the_epoch_is_signed_and_kept_for_the_process(minion, root):
    config = [{"root": str(root)}, {"heartbeat": 300}]
    (first,) = tc_status.beacon(config)
    tcroot.set_firmware(root, "13.2.0")
    (second,) = tc_status.beacon(config)
    assert second["epoch"] == first["epoch"] and second["seq"] == first["seq"] + 1
    tampered = dict(second, epoch=second["epoch"] + 1)
    assert _verifies(minion, SEAT, second) and not _verifies(minion, SEAT, tampered)


def test_facts_are_bounded_and_an_empty_mac_is_none():
    out = tc_status.bounded(
        {"mac": "", "image": "i" * 1000, "ips": [f"10.0.0.{i}" for i in range(100)], "uptime": 5.0}
    )
    assert out["mac"] is None
    assert len(out["image"]) == tc_status.MAX_TEXT
    assert len(out["ips"]) == tc_status.MAX_ADDRESSES + 1  # one more than kept: the master flags the cut
    assert out["uptime"] == 5.0


def test_a_tunnel_default_route_reports_no_mac(root):
    (root / "sys/class/net/tun0").mkdir(parents=True)
    (root / "sys/class/net/tun0/address").write_text("\n")
    (root / "proc/net/route").write_text("Iface\tDestination\tGateway\ntun0\t00000000\t00000000\n")
    facts = tc_status.collect(dict(tc_status.DEFAULTS, root=str(root)))
    assert facts["iface"] == "tun0" and facts["mac"] is None
