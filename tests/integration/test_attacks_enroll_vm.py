"""
Pre-claimed ids on the vm master (issue 9): a real vm master from the shipped
config, real salt-minion processes. Pool desktops boot with a key the keeper
seeded (``_utils/desktop_seed.py``; the Nova path is in test_pool_reactor.py);
here the seed is made the same way, without a cloud.
"""

import pytest
from pytestshellutils.exceptions import FactoryTimeout

from harness import saltconf
from harness.lab import wait_for
from tests.integration.test_attacks_enroll import accepted_fp, keys, raw_minion, raw_pki

import desktop_seed  # noqa: E402  (tests/conftest puts _utils on sys.path)
import enroll_keys
import enroll_store
import enrollment


@pytest.fixture(scope="module")
def vm(salt_factories, tmp_path_factory):
    overrides = saltconf.lab_master_config("vm", tmp_path_factory.mktemp("etc-vm"))
    overrides["deskfleet"]["vm"]["enroll"].update(sweep_interval=1, pending_grace=2)
    overrides.pop("schedule", None)  # no cloud here: no keeper, rollout or password runs
    factory = salt_factories.salt_master_daemon("vm-enroll", overrides=overrides, on_auth_event_callback=lambda *a: None)
    with factory.started():
        yield factory


def seed(vm, name):
    conn = enroll_store.open_store(vm.config, "vm")
    keys = enroll_keys.Keys(vm.config)
    try:
        return desktop_seed.seed(conn, keys, name)
    finally:
        conn.close()
        keys.close()


def ping(vm, minion_id):
    try:
        return vm.salt_cli(timeout=60).run("test.ping", minion_tgt=minion_id).data is True
    except FactoryTimeout:  # a CLI slower than its timeout on a loaded box: ask again
        return False


def refused(vm, minion_id):
    conn = enroll_store.open_store(vm.config, "vm")
    try:
        return enroll_store.refusals(conn, minion_id=minion_id)
    finally:
        conn.close()


def test_a_seeded_desktop_is_in_and_its_id_cannot_be_claimed(vm, tmp_path):
    name = "dfp-sales-0badc0de"
    user_data = seed(vm, name)
    seeded_fp = accepted_fp(vm, name)
    assert seeded_fp
    with raw_minion(vm, name, tmp_path):  # another key for the seeded id: denied by Salt, never replaces it
        wait_for(lambda: name in keys(vm)["minions_denied"], 60, what="the claim to be denied")
        desktop = vm.salt_minion_daemon(name)
        saltconf.install_seeded_key(user_data, desktop.config["pki_dir"])  # what cloud-init does on the desktop
        with desktop.started(start_timeout=180):
            assert wait_for(lambda: ping(vm, name), 180, interval=2, what="the seeded desktop to answer")
        assert accepted_fp(vm, name) == seeded_fp


def test_a_pending_key_for_an_unseeded_pool_id_is_deleted(vm, tmp_path):
    name = "dfp-sales-deadbeef"  # the keeper never booted it
    with raw_minion(vm, name, tmp_path):
        wait_for(lambda: (r := refused(vm, name)) and r[0]["count"] >= 2, 60, what="two refused claims")
        assert accepted_fp(vm, name) is None
        assert enrollment.fingerprint((raw_pki(tmp_path, name) / "minion.pub").read_text()) == refused(vm, name)[0]["fingerprint"]
    wait_for(lambda: name not in keys(vm)["minions_pre"], 30, what="no pending key left for salt-key -a")


def test_other_pending_keys_wait_for_ops(vm, tmp_path):
    with raw_minion(vm, "desk-0099", tmp_path):
        wait_for(lambda: "desk-0099" in keys(vm)["minions_pre"], 60, what="desk-0099 pending")
        assert not refused(vm, "desk-0099")
    vm.salt_key_cli().run("-y", "-d", "desk-0099")
