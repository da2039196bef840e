"""
Two real masters (tc and vm) started from the shipped ``salt_*/master.d``,
with real minions, through pytest-salt-factories.
"""

import secrets

import pytest

from harness import saltconf, tcroot
from tests.support.minions import running as minions_running

HEARTBEAT = 4  # seconds; short so offline detection is testable


@pytest.fixture(scope="package")
def lab_etc(tmp_path_factory):
    return tmp_path_factory.mktemp("etc-deskfleet")


@pytest.fixture(scope="package")
def enroll_secret():
    return secrets.token_hex(16)


def _leave_pending(master, payload):  # noqa: ARG001 - factories' auth hook
    """Do not let the test harness accept keys: the tc master's autosign decides."""


@pytest.fixture(scope="package")
def tc_master(salt_factories, lab_etc, enroll_secret):  # noqa: ARG001
    overrides = saltconf.lab_master_config("tc", lab_etc, heartbeat=HEARTBEAT, beacon_interval=1)
    factory = salt_factories.salt_master_daemon(
        "tc-master", overrides=overrides, on_auth_event_callback=_leave_pending
    )
    saltconf.write_enroll_secret(factory.config, enroll_secret)
    with factory.started():
        yield factory


@pytest.fixture(scope="package")
def vm_master(salt_factories, lab_etc):
    factory = salt_factories.salt_master_daemon("vm-master", overrides=saltconf.lab_master_config("vm", lab_etc))
    with factory.started():
        yield factory


@pytest.fixture(scope="package")
def tc_roots(tmp_path_factory):
    base = tmp_path_factory.mktemp("tc-roots")
    return {
        "tc-0001": tcroot.make(base / "tc-0001", 1, firmware="13.1.0", site="LON", session=("desk-0001", "connected")),
        "tc-0002": tcroot.make(base / "tc-0002", 2, firmware="12.9.4", site="MAN", idle=3600),
    }


@pytest.fixture(scope="package")
def thin_clients(tc_master, tc_roots, enroll_secret):
    minions = [
        tc_master.salt_minion_daemon(seat, overrides=saltconf.tc_minion_config(enroll_secret, root))
        for seat, root in tc_roots.items()
    ]
    with minions_running(tc_master, minions, "tc-*") as running:
        yield running


@pytest.fixture(scope="package")
def desktop_vm(vm_master):
    factory = vm_master.salt_minion_daemon("desk-0001", overrides={"grains": {"deskfleet_role": "desktop"}})
    with factory.started():
        ret = vm_master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt="desk-0001")
        assert ret.returncode == 0, ret
        yield factory
