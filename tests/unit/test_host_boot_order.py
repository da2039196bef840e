"""
host_boot_order: systemd unit/drop-in parsing and the order check (``_utils/host_systemd_order.py``)
on unit trees written under a temp root.
"""

import pathlib
import textwrap

import pytest

import host_systemd_order
from host_fake_salt import fake_salt
from tests.support.loading import load

host_boot_order = load("_modules/host_boot_order.py")


@pytest.fixture(autouse=True)
def salt_dunders(monkeypatch):
    """Unit names come from states/host/boot_order/parameters (served as salt://host/boot_order/...)."""
    monkeypatch.setattr(host_boot_order, "__salt__", fake_salt(), raising=False)
    monkeypatch.setattr(host_boot_order, "__grains__", {"os_family": "Debian"}, raising=False)


# ----------------------------------------------------------------------------- boot order


def test_parse_unit_deps_accumulates_and_resets():
    deps = host_systemd_order.parse_unit_deps("[Unit]\nAfter=a.service b.service\nAfter=c.service\nWants=a.service\n[Service]\nAfter=x\n")
    assert deps == {"After": ["a.service", "b.service", "c.service"], "Wants": ["a.service"]}
    host_systemd_order.parse_unit_deps("[Unit]\nAfter=\nAfter=d.service\n", deps)
    assert deps["After"] == ["d.service"]


@pytest.mark.parametrize(
    "text, value",
    [
        ("# OVS_CTL_OPTS=\n", None),
        ('OVS_CTL_OPTS="--delete-transient-ports"\n', "--delete-transient-ports"),
        ("OVS_CTL_OPTS=--a\nexport OVS_CTL_OPTS='--b --delete-transient-ports'\n", "--b --delete-transient-ports"),
    ],
)
def test_parse_ovs_opts(text, value):
    assert host_systemd_order.parse_ovs_opts(text, "OVS_CTL_OPTS") == value


def _write(path, text):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text))


DROPIN = """\\
[Unit]
After=openvswitch-switch.service ovsdb-server.service ovs-vswitchd.service
Wants=openvswitch-switch.service ovsdb-server.service ovs-vswitchd.service
"""


def test_check_order_reads_dropins_and_defaults_under_root(tmp_path):
    for unit in ("libvirtd.service", "libvirt-guests.service"):
        _write(tmp_path / f"etc/systemd/system/{unit}.d/50-deskfleet-ovs-order.conf", DROPIN)
    _write(tmp_path / "etc/default/openvswitch-switch", 'OVS_CTL_OPTS="--delete-transient-ports"\n')
    ret = host_boot_order.check_order(root=str(tmp_path), os_family="Debian", systemd=False)
    assert ret["ok"], ret["problems"]
    assert ret["units"]["libvirtd.service"]["ordered"] and not ret["units"]["virtqemud.service"]["dropins"]
    assert ret["transient_ports"]["enabled"]


def test_check_order_finds_what_is_missing(tmp_path):
    # libvirtd installed without a drop-in; the transient flag commented out
    _write(tmp_path / "lib/systemd/system/libvirtd.service", "[Unit]\nAfter=network.target\n")
    _write(tmp_path / "etc/systemd/system/libvirt-guests.service.d/x.conf", "[Unit]\nAfter=ovs-vswitchd.service\n")
    _write(tmp_path / "etc/default/openvswitch-switch", "# OVS_CTL_OPTS=--delete-transient-ports\n")
    ret = host_boot_order.check_order(root=str(tmp_path), os_family="Debian", systemd=False)
    assert not ret["ok"]
    problems = "\n".join(ret["problems"])
    assert "libvirtd.service: not ordered" in problems
    assert "libvirt-guests.service: not ordered after openvswitch-switch.service, ovsdb-server.service" in problems
    assert "--delete-transient-ports not in OVS_CTL_OPTS" in problems


def test_check_order_redhat_names(tmp_path):
    dropin = DROPIN.replace("openvswitch-switch", "openvswitch")
    _write(tmp_path / "etc/systemd/system/libvirtd.service.d/50-deskfleet-ovs-order.conf", dropin)
    _write(tmp_path / "etc/sysconfig/openvswitch", 'OPTIONS="--delete-transient-ports"\n')
    ret = host_boot_order.check_order(root=str(tmp_path), os_family="RedHat", systemd=False)
    assert ret["ok"], ret["problems"]
    assert ret["transient_ports"]["variable"] == "OPTIONS"
