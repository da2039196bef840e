"""
Two tc masters, one inventory (issue 15 item 5), with real daemons: two tc masters from the
shipped config share one real PostgreSQL (a temp-dir server, tests/support/postgres.py) and one
master key (Salt's hot multi-master); thin clients from the shipped minion template list both,
each enrolled with one token: the master that sees its sign-in first consumes the token, the
other accepts the key deskfleet approved (the enroll store is shared too).

The first-listed master is killed (SIGKILL, its engine's buffer lost with it): its connection is
the one that runs the seats' beacons, yet every report still lands through the other master,
whose runners show every seat online and current. Brought back, it receives every report again.
Each report (seat, epoch, seq) seen on either master's bus is stored once: none lost, the second
copy of each counted as a duplicate (or stale), never a second row or a step back.
"""

import datetime
import os
import pathlib
import shutil
import signal
import time

import psutil
import pytest
import salt.crypt

from harness import saltconf, tcroot
from harness.wait import wait_for
from tests.support.minions import running
from tests.support.postgres import new_schema, postgres_server  # noqa: F401  pylint: disable=unused-import

HEARTBEAT = 3  # seconds: a seat is online while heard within 1.5 heartbeats
SEATS = ("tc-ha-0001", "tc-ha-0002")
BEACON_TAG = "salt/beacon/tc-ha-*/tc_status/status"
DEADLINE = 300  # a loaded 2-core box


def _leave_pending(master, payload):  # noqa: ARG001 - factories' auth hook
    """Do not let the test harness accept keys: each tc master's enroll engine decides."""


@pytest.fixture(scope="module")
def master_key(tmp_path_factory):
    """The one master key pair both tc masters serve (a seat keeps one ``minion_master.pub``)."""
    keys = tmp_path_factory.mktemp("master-key")
    salt.crypt.write_keys(str(keys), "master", 2048)
    return keys


def _tc_master(salt_factories, name, interface, dsn, etc, key_dir):
    overrides = saltconf.lab_master_config("tc", etc, heartbeat=HEARTBEAT, beacon_interval=1, db=dsn)
    overrides["interface"] = interface  # distinct addresses, as two hosts have: the seat keys its connections by it
    factory = salt_factories.salt_master_daemon(name, overrides=overrides, on_auth_event_callback=_leave_pending)
    pki = pathlib.Path(factory.config["pki_dir"])
    pki.mkdir(parents=True, exist_ok=True)
    for name_ in ("master.pem", "master.pub"):
        shutil.copy(key_dir / name_, pki / name_)
    return factory


@pytest.fixture(scope="module")
def masters(salt_factories, postgres_server, master_key, tmp_path_factory):  # noqa: F811
    dsn = postgres_server.dsn(new_schema(postgres_server))
    etc = tmp_path_factory.mktemp("etc-ha")
    first = _tc_master(salt_factories, "tc-ha-a", "127.0.0.1", dsn, etc, master_key)
    second = _tc_master(salt_factories, "tc-ha-b", "127.0.0.2", dsn, etc, master_key)
    with first.started(start_timeout=DEADLINE), second.started(start_timeout=DEADLINE):
        yield first, second


def _seat(masters, seat_no, seat, tmp_path):
    """A thin client from the shipped template listing both masters, enrolled with one token (issued on the first)."""
    first = masters[0]
    root = tcroot.make(tmp_path / seat, seat_no, firmware="13.4.0", site="LON")
    token = tmp_path / f"{seat}.token"
    _run(first, "enroll.issue", seat, f"serial=TC{seat_no:06d}", f"path={token}")
    listed = [f"{m.config['interface']}:{m.config['ret_port']}" for m in masters]
    conf = saltconf.tc_minion_template(master=listed)
    conf["grains"] = dict(conf["grains"], **saltconf.tc_minion_config(root)["grains"])
    factory = first.salt_minion_daemon(seat, overrides=conf)
    saltconf.enroll_device(token, seat, factory.config["pki_dir"], root, factory.config_dir)
    assert list(factory.config["master"]) == listed and factory.config.get("master_type", "str") == "str"
    return factory


def _run(master, *args):
    ret = master.salt_run_cli(timeout=120).run(*args)
    assert ret.returncode == 0, ret
    return ret.data


def _current(master, since):
    """Every seat online in ``master``'s runner, last heard after ``since``: the rows, else None."""
    rows = {seat: _run(master, "tc_inventory.show", seat) for seat in SEATS}
    fresh = all(
        row.get("status") == "online" and datetime.datetime.fromisoformat(row["last_seen"]).timestamp() > since
        for row in rows.values()
    )
    return rows if fresh else None


def _reports(event_listener, master, since=None):
    """``{(seat, epoch, seq)}`` of the beacon reports ``master``'s bus carried (after ``since``)."""
    events = event_listener.get_events([(master.id, BEACON_TAG)], after_time=since or 0.0)
    return {(e.data["seat"], e.data["epoch"], e.data["seq"]) for e in events if "seq" in e.data}


def _kill(master):
    """SIGKILL the master and all its processes: no shutdown, no flush."""
    proc = psutil.Process(master.pid)
    family = [proc] + proc.children(recursive=True)
    for p in family:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(family, timeout=60)
    master.terminate()


def test_two_tc_masters_keep_one_inventory_through_a_master_loss(masters, event_listener, tmp_path):
    first, second = masters
    seats = [_seat(masters, n, seat, tmp_path) for n, seat in enumerate(SEATS, 801)]
    with running(first, seats, "tc-ha-*", start_timeout=DEADLINE):
        # one token per seat: the first master to see its sign-in enrols it, the other accepts the approved key
        for master in masters:
            wait_for(lambda m=master: set(SEATS) <= set(m.salt_key_cli().run("-L").data["minions"]),
                     timeout=DEADLINE, what=f"every seat accepted on {master.id}")
        # both masters hear every seat and either one's runner shows all of them
        wait_for(lambda: all({r[0] for r in _reports(event_listener, m)} == set(SEATS) for m in masters),
                 timeout=DEADLINE, what="reports on both masters")
        wait_for(lambda: _current(second, 0), timeout=DEADLINE, what="every seat in the inventory")

        killed_at = time.time()
        _kill(first)
        rows = wait_for(lambda: _current(second, killed_at + HEARTBEAT), timeout=DEADLINE,
                        what="every seat current through the surviving master")
        assert {r["firmware"] for r in rows.values()} == {"13.4.0"}

        first.start(start_timeout=DEADLINE)
        back_at = time.time()
        wait_for(lambda: {r[0] for r in _reports(event_listener, first, back_at)} == set(SEATS),
                 timeout=DEADLINE, what="every seat reporting to the master that came back")
        wait_for(lambda: _current(first, back_at), timeout=DEADLINE, what="the inventory through the restarted master")
    _settled(masters, event_listener)


def _settled(masters, event_listener):
    """Seats stopped: each report either master carried is stored once, none lost, the copies refused."""
    first, second = masters
    heard = [_reports(event_listener, m) for m in masters]
    union = heard[0] | heard[1]
    copies = len(heard[0]) + len(heard[1]) - len(union)
    assert len(heard[1]) > len(heard[0]) and copies > 0, (len(heard[0]), len(heard[1]))
    for seat in SEATS:  # the beacon numbers its reports 1, 2, ... per epoch: a gap would be a report lost
        for epoch in {e for s, e, _ in union if s == seat}:
            seqs = sorted(q for s, e, q in union if (s, e) == (seat, epoch))
            assert seqs == list(range(1, len(seqs) + 1)), (seat, epoch, seqs)

    def counted():
        ingest = _run(second, "tc_inventory.summary")["ingest"]
        return ingest if ingest.get("accepted", 0) >= len(union) else None

    ingest = wait_for(counted, timeout=DEADLINE, what=f"{len(union)} reports accepted")
    print(f"two tc masters: {len(union)} reports, heard {len(heard[0])} by the killed master, {len(heard[1])} by the"
          f" other; {copies} copies; counters {ingest}")
    assert ingest["accepted"] == len(union), ingest  # each report stored once, whichever master got it first
    # copies were refused, not stored (their exact number is not known here: the killed master's bus records
    # forwarded to this test die with it, while its engine may have counted them)
    assert ingest.get("duplicate", 0) + ingest.get("stale", 0) > 0, ingest
    assert not ingest.get("missed") and not ingest.get("malformed") and not ingest.get("forged"), ingest
    for seat in SEATS:
        last = max((e, q) for s, e, q in union if s == seat)
        row = _run(second, "tc_inventory.show", seat)
        assert (row["epoch"], row["seq"]) == last, (seat, row)
    assert [r["seat"] for r in _run(second, "tc_inventory.list", "fields=seat")] == list(SEATS)  # one row each
