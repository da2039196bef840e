"""
The ``tc_status`` beacon loaded by Salt's real loader (no daemons): the loader
finds it in ``_beacons``, injects ``__opts__`` (minion id and pki_dir), and the
minion's beacon machinery turns its return into the event the tc master checks.
"""

import base64
import json
import logging
import pathlib
import shutil

import pytest
import salt.beacons
import salt.config
import salt.crypt
import salt.loader

import tc_assets
import tc_ingest_batch
from harness import tcroot

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
BEACONS_DIR = CHECKOUT / "_beacons"
MINION_ID = "tc-0042"


@pytest.fixture(scope="module")
def keypair(tmp_path_factory):
    """A freshly generated minion key pair (once per module: RSA generation is the slow part)."""
    keydir = tmp_path_factory.mktemp("keys")
    salt.crypt.write_keys(str(keydir), "minion", 2048)
    return keydir / "minion.pem", keydir / "minion.pub"


@pytest.fixture
def minion_opts(tmp_path, keypair):
    pki_dir = tmp_path / "pki" / "minion"
    pki_dir.mkdir(parents=True)
    shutil.copy(keypair[0], pki_dir / "minion.pem")
    shutil.copy(keypair[1], pki_dir / "minion.pub")
    opts = salt.config.minion_config(None, minion_id=MINION_ID)
    opts.update(
        id=MINION_ID,
        pki_dir=str(pki_dir),
        cachedir=str(tmp_path / "cache"),
        extension_modules=str(tmp_path / "extmods"),
        sock_dir=str(tmp_path / "sock"),
        beacons_dirs=[str(BEACONS_DIR)],
        file_client="local",
        beacons={},
    )
    return opts


@pytest.fixture
def master_pki(tmp_path, keypair):
    """The tc master's pki_dir with this minion's key accepted."""
    pki = tmp_path / "pki" / "master"
    (pki / "minions").mkdir(parents=True)
    shutil.copy(keypair[1], pki / "minions" / MINION_ID)
    return pki


@pytest.fixture
def root(tmp_path):
    return tcroot.make(tmp_path / "root", 42, firmware="13.1.0", site="LON", session=("desk-0042", "connected"))


@pytest.fixture
def beacons(minion_opts):
    return salt.loader.beacons(minion_opts, {})


def test_loader_finds_the_beacon_in_the_extension_dir(beacons):
    assert "tc_status.validate" in beacons
    assert "tc_status.beacon" in beacons
    assert beacons["tc_status.beacon"].__module__.endswith(".tc_status")


def test_validate_through_the_loader(beacons, root):
    assert beacons["tc_status.validate"]([{"root": str(root)}, {"heartbeat": 300}, {"jitter": 0.2}]) == (True, "valid")
    ok, message = beacons["tc_status.validate"]([{"root": str(root)}, {"heartbeat": -1}])
    assert ok is False and "heartbeat" in message
    ok, message = beacons["tc_status.validate"]([{"root": str(root)}, {"jitter": 1}])
    assert ok is False and "jitter" in message
    ok, message = beacons["tc_status.validate"]([{"root": "relative"}])
    assert ok is False and "root" in message
    ok, message = beacons["tc_status.validate"]("not a list")
    assert ok is False


def test_beacon_through_the_loader_signs_with_the_opts_key(beacons, root, master_pki):
    config = [{"root": str(root)}, {"heartbeat": 300}]
    (payload,) = beacons["tc_status.beacon"](config)
    assert payload["tag"] == "status"
    assert payload["seat"] == MINION_ID  # from the loader-injected __opts__
    assert payload["reason"] == "start"
    assert payload["facts"]["serial"] == "TC000042"
    assert payload["facts"]["firmware"] == "13.1.0"
    verify = tc_assets.pki_verifier(str(master_pki))
    assert verify(MINION_ID, tc_assets.canonical(payload), base64.b64decode(payload["sig"]))

    # state is kept between calls within the loaded module
    assert beacons["tc_status.beacon"](config) == []
    tcroot.set_firmware(root, "13.2.0")
    (change,) = beacons["tc_status.beacon"](config)
    assert (change["reason"], change["changed"], change["seq"]) == ("change", ["firmware"], 2)
    assert verify(MINION_ID, tc_assets.canonical(change), base64.b64decode(change["sig"]))


def test_minion_beacon_machinery_emits_an_event_the_master_accepts(minion_opts, root, master_pki):
    """salt.beacons.Beacon.process: validate, beacon, tag and id as the minion fires them."""
    beacon = salt.beacons.Beacon(minion_opts, {})
    config = {"tc_status": [{"root": str(root)}, {"heartbeat": 300}, {"idle_after": 600}]}
    events = beacon.process(config, grains={})
    assert len(events) == 1
    event = events[0]
    assert event["tag"] == f"salt/beacon/{MINION_ID}/tc_status/status"
    assert event["data"]["id"] == MINION_ID
    assert event["data"]["reason"] == "start"

    data = json.loads(json.dumps(event["data"]))  # as it arrives on the master bus
    verify = tc_assets.pki_verifier(str(master_pki))
    row = tc_ingest_batch.parse_event(event["tag"], data, verify, 1000.0)
    assert row["seat"] == MINION_ID
    assert row["firmware"] == "13.1.0"
    assert row["session_target"] == "desk-0042"
    assert row["session_state"] == "connected"
    # the tag matches what the tc_ingest engine subscribes to
    assert tc_assets.TAG_RE.match(event["tag"])

    assert beacon.process(config, grains={}) == []  # nothing changed


def test_minion_beacon_machinery_skips_an_invalid_config(minion_opts, root, caplog):
    beacon = salt.beacons.Beacon(minion_opts, {})
    with caplog.at_level(logging.ERROR):
        assert beacon.process({"tc_status": [{"root": str(root)}, {"heartbeat": 0}]}, grains={}) == []
    assert any("heartbeat must be a positive number" in r.getMessage() for r in caplog.records)
    # the same beacon with a valid config does run
    assert len(beacon.process({"tc_status": [{"root": str(root)}]}, grains={})) == 1
