"""
Two real masters (tc and vm) started from the shipped ``salt_*/master.d``,
with real minions, through pytest-salt-factories.
"""

import pytest

from harness import saltconf, tcroot
from tests.support.minions import running as minions_running

HEARTBEAT = 4  # seconds; short so offline detection is testable


@pytest.fixture(scope="package")
def lab_etc(tmp_path_factory):
    return tmp_path_factory.mktemp("etc-deskfleet")


def _leave_pending(master, payload):  # noqa: ARG001 - factories' auth hook
    """Do not let the test harness accept keys: the tc master's enroll engine decides."""


@pytest.fixture(scope="package")
def tc_master(salt_factories, lab_etc):
    overrides = saltconf.lab_master_config("tc", lab_etc, heartbeat=HEARTBEAT, beacon_interval=1)
    factory = salt_factories.salt_master_daemon(
        "tc-master", overrides=overrides, on_auth_event_callback=_leave_pending
    )
    with factory.started():
        yield factory


def enrolled_minion(master, seat, lab_root, tmp_dir, token_file=None, **overrides):
    """
    A thin client as ops and the device enrol it: ``salt-run enroll.issue`` writes
    the token; before the minion's first start, ``tools/deskfleet-enroll`` makes its
    key and writes the ``deskfleet_enroll`` grain into its grains file.
    """
    if token_file is None:
        serial = (lab_root / "sys/class/dmi/id/product_serial").read_text().strip()
        token_file = tmp_dir / f"{seat}.token"
        ret = master.salt_run_cli(timeout=120).run("enroll.issue", seat, f"serial={serial}", f"path={token_file}")
        assert ret.returncode == 0, ret
    factory = master.salt_minion_daemon(seat, overrides=dict(saltconf.tc_minion_config(lab_root), **overrides))
    saltconf.enroll_device(token_file, seat, factory.config["pki_dir"], lab_root, factory.config_dir)
    return factory


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
def enroll_tokens(tmp_path_factory):
    """Where ops' ``enroll.issue`` writes the thin clients' tokens (``<seat>.token``)."""
    return tmp_path_factory.mktemp("tokens")


@pytest.fixture(scope="package")
def thin_clients(tc_master, tc_roots, enroll_tokens):
    minions = [enrolled_minion(tc_master, seat, root, enroll_tokens) for seat, root in tc_roots.items()]
    with minions_running(tc_master, minions, "tc-*") as running:
        yield running


@pytest.fixture(scope="package")
def desktop_vm(vm_master):
    factory = vm_master.salt_minion_daemon("desk-0001", overrides={"grains": {"deskfleet_role": "desktop"}})
    with factory.started():
        ret = vm_master.salt_cli(timeout=120).run("saltutil.sync_all", minion_tgt="desk-0001")
        assert ret.returncode == 0, ret
        yield factory
