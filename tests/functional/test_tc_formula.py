"""
The tc formula (states/tc) through Salt's real renderer (``salt-call --local
state.show_sls``), served from the tc master's allow-list file root: its map
loader layers ``parameters/defaults.yaml`` <- ``parameters/os_family/<family>.yaml``
(when present) <- pillar ``deskfleet:tc``.
"""

import shutil

import pytest

from harness.masterless import CHECKOUT, SALT_CALL, Masterless

pytestmark = [pytest.mark.functional,
              pytest.mark.skipif(not SALT_CALL.exists(), reason=f"needs salt-call at {SALT_CALL}")]


def _show(tmp_path, file_root, os_family="Debian", pillar=None):
    minion = Masterless(tmp_path / "minion", minion_id="tc-0001", checkout_modules=False,
                        extra_config={"file_roots": {"base": [str(file_root)]}, "grains": {"os_family": os_family}})
    if pillar is not None:
        minion.set_pillar("tc", pillar)
    rc, ret = minion.call("state.show_sls", "tc")
    assert rc == 0 and isinstance(ret, dict), ret
    return {sid: {k: v for k, v in body.items() if not k.startswith("__")} for sid, body in ret.items()}


def test_defaults_sync_the_beacon_and_modules(tmp_path):
    states = _show(tmp_path, CHECKOUT / "salt_tc" / "fileroot")
    assert states == {
        "tc-sync-beacons": {"saltutil": [{"refresh": True}, "sync_beacons", {"order": 10000}]},
        "tc-sync-modules": {"saltutil": [{"refresh": True}, "sync_modules", {"order": 10001}]},
    }


def test_an_os_family_without_a_layer_gets_the_defaults(tmp_path):
    assert sorted(_show(tmp_path, CHECKOUT / "salt_tc" / "fileroot", os_family="Gentoo")) == [
        "tc-sync-beacons", "tc-sync-modules"]


def test_pillar_wins_over_the_os_family_layer_which_wins_over_the_defaults(tmp_path):
    root = tmp_path / "fileroot"
    shutil.copytree(CHECKOUT / "states" / "tc", root / "tc")
    (root / "tc" / "parameters" / "os_family" / "RedHat.yaml").write_text("tc:\n  refresh: false\n  sync: [modules]\n")
    layered = _show(tmp_path / "a", root, os_family="RedHat")
    assert layered == {"tc-sync-modules": {"saltutil": [{"refresh": False}, "sync_modules", {"order": 10000}]}}
    piled = _show(tmp_path / "b", root, os_family="RedHat", pillar={"deskfleet": {"tc": {"sync": ["beacons"]}}})
    assert piled == {"tc-sync-beacons": {"saltutil": [{"refresh": False}, "sync_beacons", {"order": 10000}]}}
