"""
states/host/boot_order through Salt (``salt-call --local`` with file_roots
``states`` + the checkout, a temp pillar root, ``root`` = a temp dir), then
``systemd-analyze verify`` over the real installed units with the drop-ins
(``SYSTEMD_UNIT_PATH=<root>/etc/systemd/system:``). A cyclic variant and one
that requires a unit this host does not have must fail that check, and the
state itself must fail on them.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from harness.masterless import CHECKOUT, SALT_CALL, Masterless

DROPIN = "50-deskfleet-ovs-order.conf"
DEBIAN_OVS = ["openvswitch-switch.service", "ovsdb-server.service", "ovs-vswitchd.service"]
LIBVIRT_SIDE = ["libvirtd.service", "virtqemud.service", "libvirt-guests.service", "nova-compute.service"]
UNIT_DIRS = ("/etc/systemd/system", "/lib/systemd/system", "/usr/lib/systemd/system")
# what Debian 12's openvswitch-switch ships in /etc/default/openvswitch-switch (trimmed)
OVS_DEFAULTS = """\
# This is a POSIX shell fragment                -*- sh -*-

# FORCE_COREFILES: If 'yes' then core files will be enabled.
# FORCE_COREFILES=yes

# OVS_CTL_OPTS: Extra options to pass to ovs-ctl.  This is, for example,
# a suitable place to specify --ovs-vswitchd-wrapper=valgrind.
# OVS_CTL_OPTS=
"""



def _missing():
    if not SALT_CALL.exists():
        return f"needs salt-call next to {sys.executable}"
    if shutil.which("systemd-analyze") is None:
        return "needs systemd-analyze (package systemd, see tools/apt-packages.txt)"
    if not any(os.path.exists(f"{d}/libvirtd.service") for d in UNIT_DIRS):
        return "needs the installed libvirtd.service unit (package libvirt-daemon-system)"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


def installed(unit):
    return any(os.path.exists(f"{d}/{unit}") for d in UNIT_DIRS)


def systemd_verify(root, units, man=False, path=None):
    """
    (ok, output): systemd-analyze verify with the drop-ins under root; an ordering cycle counts as a failure.
    ``man=False`` skips its man-page check (``Documentation=man:``), which fails on hosts without the pages.
    """
    env = dict(os.environ, SYSTEMD_UNIT_PATH=f"{root}/etc/systemd/system:", PATH=path or os.environ["PATH"])
    argv = ["systemd-analyze", "verify", *([] if man else ["--man=no"]), *units]
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False, timeout=120, cwd=root)
    out = proc.stdout + proc.stderr
    return proc.returncode == 0 and "ordering cycle" not in out, out


class Minion:
    """A masterless minion: the checkout's states, a temp pillar holding deskfleet:host:boot_order."""

    def __init__(self, base, pillar):
        self.root = base / "root"
        (self.root / "etc/default").mkdir(parents=True)
        # the modules import their logic from _utils, as a host gets it from saltutil.sync_utils
        self.salt = Masterless(base, minion_id="cmp-functional", extra_config={"utils_dirs": [str(CHECKOUT / "_utils")]})
        self.call = self.salt.call
        self.set_pillar(pillar)

    def set_pillar(self, pillar, key=None):
        data = dict({"root": str(self.root)}, **pillar)
        # key: the pillar key before this release (host_boot_order), to test that it still works
        self.salt.set_pillar("host_boot_order", {key: data} if key else {"deskfleet": {"host": {"boot_order": data}}})


@pytest.fixture
def minion(tmp_path):
    m = Minion(tmp_path, {})
    (m.root / "etc/default/openvswitch-switch").write_text(OVS_DEFAULTS)
    return m


def states_by_id(ret):
    return {s["__id__"]: s for s in ret.values()}


def test_show_sls_paths_are_under_root(minion):
    rc, ret = minion.call("state.show_sls", "host.boot_order")
    assert rc == 0, ret
    for unit in LIBVIRT_SIDE:
        chunk = ret[f"host-boot-order-dropin-{unit}"]["file"]
        name = next(arg["name"] for arg in chunk if isinstance(arg, dict) and "name" in arg)
        assert name == f"{minion.root}/etc/systemd/system/{unit}.d/{DROPIN}"
    for sid, chunk in ret.items():
        for arg in chunk.get("file", []):
            if isinstance(arg, dict) and "name" in arg:
                assert arg["name"].startswith(str(minion.root)), (sid, arg)


def test_apply_verify_idempotent_then_clean(minion):
    original = (minion.root / "etc/default/openvswitch-switch").read_text()
    # dry run writes nothing
    rc, ret = minion.call("state.apply", "host.boot_order", "test=True")
    assert rc == 0, ret
    assert not (minion.root / "etc/systemd").exists()

    rc, ret = minion.call("state.apply", "host.boot_order")
    assert rc == 0, ret
    states = states_by_id(ret)
    assert all(s["result"] for s in states.values()), ret
    for unit in LIBVIRT_SIDE:
        text = (minion.root / f"etc/systemd/system/{unit}.d/{DROPIN}").read_text()
        assert f"After={' '.join(DEBIAN_OVS)}" in text and f"Wants={' '.join(DEBIAN_OVS)}" in text
    defaults = (minion.root / "etc/default/openvswitch-switch").read_text()
    assert defaults.startswith(original) and defaults.endswith('OVS_CTL_OPTS="--delete-transient-ports"\n')
    verify = states["host-boot-order-verify"]
    assert "libvirtd.service" in verify["comment"] and verify["comment"].endswith(": ok")

    # the drop-ins with the real installed units: systemd accepts them
    units = [u for u in LIBVIRT_SIDE if installed(u)]
    assert "libvirtd.service" in units
    ok, out = systemd_verify(minion.root, units)
    assert ok, out
    print(f"\nsystemd-analyze verify {' '.join(units)} with the drop-ins: ok {out.strip()!r}")
    print("not installed here (drop-in written, not verifiable):", [u for u in LIBVIRT_SIDE if u not in units])

    rc, order = minion.call("host_boot_order.check_order", f"root={minion.root}", "os_family=Debian", "systemd=False")
    assert rc == 0 and order["ok"], order

    # idempotent
    rc, ret = minion.call("state.apply", "host.boot_order")
    assert rc == 0, ret
    assert {sid: s["changes"] for sid, s in states_by_id(ret).items() if s["changes"]} == {}

    rc, ret = minion.call("state.apply", "host.boot_order.clean")
    assert rc == 0, ret
    assert not (minion.root / "etc/systemd/system").exists() or not any(
        (minion.root / "etc/systemd/system").iterdir()
    )
    assert (minion.root / "etc/default/openvswitch-switch").read_text() == original
    rc, order = minion.call("host_boot_order.check_order", f"root={minion.root}", "os_family=Debian", "systemd=False")
    assert rc == 0 and not order["ok"], order
    rc, ret = minion.call("state.apply", "host.boot_order.clean")
    assert rc == 0 and not any(s["changes"] for s in ret.values()), ret


def test_existing_ovs_options_are_kept(minion):
    path = minion.root / "etc/default/openvswitch-switch"
    path.write_text(OVS_DEFAULTS + "OVS_CTL_OPTS='--ovs-vswitchd-wrapper=valgrind'\n")
    rc, ret = minion.call("state.apply", "host.boot_order")
    assert rc == 0, ret
    assert 'OVS_CTL_OPTS="--ovs-vswitchd-wrapper=valgrind --delete-transient-ports"\n' in path.read_text()
    rc, ret = minion.call("state.apply", "host.boot_order.clean")
    assert rc == 0, ret
    assert path.read_text().endswith('OVS_CTL_OPTS="--ovs-vswitchd-wrapper=valgrind"\n')


def test_redhat_names(minion):
    minion.set_pillar({"os_family": "RedHat", "verify": False})
    rc, ret = minion.call("state.apply", "host.boot_order")
    assert rc == 0, ret
    nova = minion.root / f"etc/systemd/system/openstack-nova-compute.service.d/{DROPIN}"
    assert "After=openvswitch.service ovsdb-server.service ovs-vswitchd.service" in nova.read_text()
    assert (minion.root / "etc/sysconfig/openvswitch").read_text().endswith('OPTIONS="--delete-transient-ports"\n')
    rc, order = minion.call("host_boot_order.check_order", f"root={minion.root}", "os_family=RedHat", "systemd=False")
    assert rc == 0 and order["ok"], order


@pytest.mark.parametrize(
    "variant, pillar, expect",
    [
        # an OVS unit listed among the libvirt side: ovs-vswitchd.service gets After=openvswitch-switch.service,
        # which is itself After=ovs-vswitchd.service -> ordering cycle (systemd-analyze 252 still exits 0)
        ("cycle", {"libvirt_units": ["libvirtd.service", "ovs-vswitchd.service"]}, "ordering cycle"),
        # RHEL unit names on this Debian host with Requires=: openvswitch.service does not exist
        ("missing-required-unit", {"os_family": "RedHat", "dependency": "Requires"}, "openvswitch.service not found"),
    ],
)
def test_broken_variants_fail_the_check(minion, variant, pillar, expect):
    minion.set_pillar(pillar)
    rc, ret = minion.call("state.apply", "host.boot_order")
    assert rc != 0, ret
    verify = states_by_id(ret)["host-boot-order-verify"]
    assert verify["result"] is False and expect in verify["changes"].get("stdout", "") + verify["comment"], verify
    ok, out = systemd_verify(minion.root, ["libvirtd.service"])
    assert not ok and expect in out, out
    print(f"\n{variant}: systemd-analyze verify libvirtd.service -> {out.strip()!r}")
    rc, ret = minion.call("state.apply", "host.boot_order.clean")
    assert rc == 0, ret


def test_units_without_dropins_verify_clean(tmp_path):
    """Control: the installed units verify cleanly on their own here (so failures above are the drop-ins')."""
    (tmp_path / "etc/systemd/system").mkdir(parents=True)
    ok, out = systemd_verify(tmp_path, [u for u in LIBVIRT_SIDE if installed(u)])
    assert ok, out


def _path_without_man_pages(tmp_path, how):
    """
    A PATH like this one on a host without man pages: ``no-man`` has no ``man`` command at all (every other
    command of PATH is linked in); ``no-pages`` has a ``man`` that finds no page, as man-db does (exit 16).
    """
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    if how == "no-pages":
        (bin_dir / "man").write_text('#!/bin/sh\necho "No manual entry for $*" >&2\nexit 16\n')
        (bin_dir / "man").chmod(0o755)
        return f"{bin_dir}{os.pathsep}{os.environ['PATH']}"
    for d in os.environ["PATH"].split(os.pathsep):
        for name in (os.listdir(d) if os.path.isdir(d) else []):
            link = bin_dir / name
            if name != "man" and not os.path.lexists(link):
                link.symlink_to(os.path.join(d, name))
    return str(bin_dir)


@pytest.mark.parametrize("how", ["no-man", "no-pages"])
def test_host_without_man_pages(minion, tmp_path, monkeypatch, how):
    """Most servers carry no man pages: the units' Documentation=man:... must not fail the state there."""
    path = _path_without_man_pages(tmp_path, how)
    assert shutil.which("man", path=path) is None or how == "no-pages"
    # the host is really like that: systemd-analyze's default man check fails on the plain units
    ok, out = systemd_verify(tmp_path, ["libvirtd.service"], man=True, path=path)
    assert not ok and "man libvirtd(8)" in out, out
    monkeypatch.setenv("PATH", path)
    rc, ret = minion.call("state.apply", "host.boot_order")
    assert rc == 0, ret
    verify = states_by_id(ret)["host-boot-order-verify"]
    assert verify["result"] is True and verify["comment"].endswith(": ok"), verify
    # still a real check on such a host: a cycle fails it
    minion.set_pillar({"libvirt_units": ["libvirtd.service", "ovs-vswitchd.service"]})
    rc, ret = minion.call("state.apply", "host.boot_order")
    assert rc != 0 and "ordering cycle" in states_by_id(ret)["host-boot-order-verify"]["comment"], ret


def test_old_pillar_key_still_works_with_a_deprecation_warning(minion):
    minion.set_pillar({"dependency": "Requires"}, key="host_boot_order")
    proc = minion.salt.run("state.apply", "host.boot_order")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    states = states_by_id(json.loads(proc.stdout)["local"])
    note = states["host-boot-order-pillar-deprecated"]
    assert note["result"] is True and note["changes"] == {}
    assert "pillar key host_boot_order is deprecated" in note["comment"] and "deskfleet:host:boot_order" in note["comment"]
    assert "pillar key host_boot_order is deprecated" in " ".join(note.get("warnings", []))
    assert "pillar key host_boot_order is deprecated" in proc.stderr  # the log warning
    text = (minion.root / f"etc/systemd/system/libvirtd.service.d/{DROPIN}").read_text()
    assert f"Requires={' '.join(DEBIAN_OVS)}" in text  # the old key's settings are applied
    # with the new key only: no warning state
    minion.set_pillar({"dependency": "Requires"})
    rc, ret = minion.call("state.apply", "host.boot_order")
    assert rc == 0 and "host-boot-order-pillar-deprecated" not in states_by_id(ret), ret
