"""
Unit tests for ``_modules/host_dnsmasq.py`` (issue 5): dnsmasq command-line and
conf-file parsing, and the checks, against a fake ``/proc`` in a temp dir. No
Salt loader, no processes: the module's public functions take the /proc root and
the dnsmasq version as arguments.
"""

import os

import pytest

from tests.support.loading import load

import host_dnsmasq_instances
import host_dnsmasq_options



da = load("_modules/host_dnsmasq.py")


class FakeProc:
    """A /proc with just what the audit reads: cmdline, comm, ns/net (and optionally root)."""

    def __init__(self, base):
        self.base = base
        self.proc = base / "proc"
        self.proc.mkdir()
        (self.proc / "self").mkdir()  # non-numeric entries are ignored

    def add(self, pid, argv, comm=None, netns=4026531840, root=None):
        d = self.proc / str(pid)
        (d / "ns").mkdir(parents=True)
        (d / "cmdline").write_bytes(b"\0".join(a.encode() for a in argv) + (b"\0" if argv else b""))
        (d / "comm").write_text((comm or (os.path.basename(argv[0]) if argv else "")) + "\n")
        if netns is not None:
            os.symlink(f"net:[{netns}]", d / "ns" / "net")
        if root is not None:
            os.symlink(root, d / "root")
        return pid

    def conf(self, name, text):
        path = self.base / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        return str(path)


@pytest.fixture
def fake(tmp_path):
    return FakeProc(tmp_path)


def checks(report):
    return sorted((f["check"], tuple(f["pids"])) for f in report["findings"])


# ------------------------------------------------------------------ command line


def test_cmdline_long_short_and_bundled_options():
    argv = ["/usr/sbin/dnsmasq", "--keep-in-foreground", "--conf-file=/a.conf", "-i", "eth0", "-ieth1",
            "-kzC/b.conf", "--interface", "eth2", "--bind-interf", "-7", "/d,.bak", "--pid-file=/p"]
    assert host_dnsmasq_options.parse_cmdline(argv) == [
        ("keep-in-foreground", None), ("conf-file", "/a.conf"), ("interface", "eth0"), ("interface", "eth1"),
        ("keep-in-foreground", None), ("bind-interfaces", None), ("conf-file", "/b.conf"),
        ("interface", "eth2"), ("bind-interfaces", None), ("conf-dir", "/d,.bak"), ("pid-file", "/p"),
    ]


def test_cmdline_optional_argument_needs_equals_sign():
    # dnsmasq itself says "junk found in command line" for --conf-file /x: the option takes no word
    assert host_dnsmasq_options.parse_cmdline(["dnsmasq", "--conf-file", "/x", "--pid-file"]) == [
        ("conf-file", None), ("", "/x"), ("pid-file", None),
    ]


def test_conf_text_comments_quotes_and_spaces():
    text = '\n'.join([
        "# comment",
        "   bind-interfaces   ",
        "interface = eth0  # trailing comment",
        'dhcp-option=option:domain-search,"a b#c"',
        "dhcp-range=10.0.0.5,10.0.0.9#not-a-comment",
        "",
    ])
    assert host_dnsmasq_options.parse_conf_text(text) == [
        ("bind-interfaces", None), ("interface", "eth0"),
        ("dhcp-option", "option:domain-search,a b#c"), ("dhcp-range", "10.0.0.5,10.0.0.9#not-a-comment"),
    ]


def test_conf_dir_selection_like_dnsmasq():
    names = ["b.conf", "a.conf", "x.bak", ".hidden", "old~", "#tmp#", "notes.txt"]
    assert host_dnsmasq_options.conf_dir_files(names, "/etc/d") == ["a.conf", "b.conf", "notes.txt", "x.bak"]
    assert host_dnsmasq_options.conf_dir_files(names, "/etc/d,.bak,.txt") == ["a.conf", "b.conf"]
    assert host_dnsmasq_options.conf_dir_files(names, "/etc/d,*.conf") == ["a.conf", "b.conf"]


# ------------------------------------------------------------------ ranges and versions


@pytest.mark.parametrize("value, start, end, dynamic", [
    ("10.0.0.50,10.0.0.150,255.255.255.0,12h", "10.0.0.50", "10.0.0.150", True),
    ("set:desk,tag:x,10.0.1.50,10.0.1.60,1h", "10.0.1.50", "10.0.1.60", True),
    ("10.0.2.0,static", "10.0.2.0", None, False),
    ("10.0.3.0,proxy", "10.0.3.0", None, False),
    ("10.0.4.9", "10.0.4.9", None, False),
    ("fd00::10,fd00::ff,64,12h", "fd00::10", "fd00::ff", True),
    ("::10,::ff,constructor:eth0,ra-names,64", "::10", "::ff", False),
    ("fd00::,ra-only", "fd00::", None, False),
])
def test_parse_range(value, start, end, dynamic):
    parsed = host_dnsmasq_options.parse_range(value)
    assert (parsed["start"], parsed["end"], parsed["dynamic"]) == (start, end, dynamic)


def test_ranges_overlap_only_same_family_and_dynamic():
    r = host_dnsmasq_options.parse_range
    assert host_dnsmasq_options.ranges_overlap(r("10.0.0.50,10.0.0.150"), r("10.0.0.150,10.0.0.200"))
    assert host_dnsmasq_options.ranges_overlap(r("10.0.0.150,10.0.0.50"), r("10.0.0.60,10.0.0.70"))  # reversed bounds
    assert not host_dnsmasq_options.ranges_overlap(r("10.0.0.50,10.0.0.150"), r("10.0.0.151,10.0.0.200"))
    assert not host_dnsmasq_options.ranges_overlap(r("10.0.0.0,static"), r("10.0.0.1,10.0.0.9"))
    assert not host_dnsmasq_options.ranges_overlap(r("fd00::1,fd00::9"), r("10.0.0.1,10.0.0.9"))


@pytest.mark.parametrize("given, parsed", [
    ("Dnsmasq version 2.90  Copyright (c) 2000-2024 Simon Kelley\nCompile time options: IPv6", (2, 90)),
    ("2.66", (2, 66)),
    ("2.67rc1", (2, 67)),
    (2.9, (2, 90)),    # what Salt's CLI makes of version=2.90
    (2.66, (2, 66)),
    ("garbage", None),
    (None, None),
])
def test_parse_version(given, parsed):
    assert host_dnsmasq_options.parse_version(given) == parsed


# ------------------------------------------------------------------ fake /proc


def test_finds_only_dnsmasq_and_reads_conf_files_and_dirs(fake):
    inner = fake.conf("etc/inner.conf", "dhcp-range=10.1.0.50,10.1.0.90\n")
    fake.conf("etc/d/10-a.conf", f"interface=eth1\nconf-file={inner}\n")
    fake.conf("etc/d/20-b.bak", "interface=eth9\n")
    main = fake.conf("etc/main.conf", f"bind-interfaces\nconf-dir={fake.base}/etc/d,.bak\npid-file=/run/x.pid\n")
    fake.add(10, ["/usr/sbin/dnsmasq", "-k", f"--conf-file={main}", "--dhcp-leasefile=/var/lib/x.leases"])
    fake.add(11, ["/usr/bin/python3", "dnsmasq"], comm="python3")    # not dnsmasq
    fake.add(12, [], comm="dnsmasq")                                  # a zombie: no cmdline
    fake.add(13, ["dnsmasq-wrapper", "--interface=eth5"], comm="dnsmasq-wrapper")
    found = da.instances(proc=str(fake.proc))
    assert [i["pid"] for i in found] == [10]
    inst = found[0]
    assert inst["conf_files"] == [main, f"{fake.base}/etc/d/10-a.conf", inner]
    assert inst["interfaces"] == ["eth1"] and inst["dhcp_interfaces"] == ["eth1"]
    assert inst["bind"] == "bind-interfaces"
    assert inst["pid_file"] == "/run/x.pid" and inst["lease_file"] == "/var/lib/x.leases"
    assert [r["start"] for r in inst["dhcp_ranges"]] == ["10.1.0.50"]
    assert inst["netns"] == "net:[4026531840]"


def test_include_loops_and_missing_files_do_not_hang(fake):
    loop = fake.base / "loop.conf"
    loop.write_text(f"conf-file={loop}\nconf-dir={fake.base}/nodir\ninterface=eth0\n")
    fake.add(15, ["dnsmasq", f"--conf-file={loop}", "--conf-file"])
    inst = da.instances(proc=str(fake.proc))[0]
    assert inst["conf_files"] == [str(loop)]
    assert inst["missing_files"] == [f"{fake.base}/nodir"]
    assert inst["interfaces"] == ["eth0"] and inst["dhcp"] is False


def test_default_conf_file_and_process_root(fake, tmp_path):
    # no -C: dnsmasq reads /etc/dnsmasq.conf -- as the process sees it, through /proc/<pid>/root
    root = tmp_path / "container"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "dnsmasq.conf").write_text("interface=tap0\ninterface=tap1\ndhcp-range=10.2.0.5,10.2.0.9\n")
    fake.add(20, ["dnsmasq", "-k"], root=str(root))
    inst = da.instances(proc=str(fake.proc))[0]
    assert inst["conf_files"] == ["/etc/dnsmasq.conf"]
    assert inst["dhcp_interfaces"] == ["tap0", "tap1"]
    report = da.audit(proc=str(fake.proc), version="2.90")
    assert ("dhcp_multiple_interfaces", (20,)) in checks(report)
    assert ("no_bind_interfaces", (20,)) in checks(report)


def test_bad_layout_from_issue_5_is_flagged(fake):
    # two instances, two interfaces each, bind-interfaces: both bind 0.0.0.0:67
    a = fake.conf("bad/a.conf", "bind-interfaces\ninterface=s0\ninterface=d0\n"
                                "dhcp-range=10.99.10.50,10.99.10.150\ndhcp-range=10.99.12.50,10.99.12.150\n")
    b = fake.conf("bad/b.conf", "bind-interfaces\ninterface=s1,d1\n"
                                "dhcp-range=10.99.11.50,10.99.11.150\ndhcp-range=10.99.13.50,10.99.13.150\n")
    fake.add(30, ["dnsmasq", "-k", "-C", a])
    fake.add(31, ["dnsmasq", "-k", "-C", b])
    report = da.audit(proc=str(fake.proc), version="2.90")
    assert report["ok"] is False and report["count"] == 2
    assert checks(report) == [("dhcp_multiple_interfaces", (30,)), ("dhcp_multiple_interfaces", (31,))]
    assert "s0, d0" in report["findings"][0]["message"]


def test_one_instance_per_interface_passes(fake):
    for pid, iface, net in ((40, "s0", 10), (41, "s1", 11), (42, "d0", 12)):
        conf = fake.conf(f"good/{iface}.conf", f"bind-interfaces\ninterface={iface}\nexcept-interface=lo\n"
                                              f"dhcp-range=10.99.{net}.50,10.99.{net}.150,255.255.255.0,12h\n")
        fake.add(pid, ["/usr/sbin/dnsmasq", "--keep-in-foreground", f"--conf-file={conf}"])
    report = da.audit(proc=str(fake.proc), version="2.90")
    assert report == {**report, "ok": True, "findings": [], "count": 3, "version": "2.90"}


def test_wildcard_interfaces_are_flagged(fake):
    none = fake.conf("w/none.conf", "bind-interfaces\ndhcp-range=10.3.0.5,10.3.0.9\n")
    listen = fake.conf("w/listen.conf", "bind-dynamic\nlisten-address=10.4.0.1\ndhcp-range=10.4.0.5,10.4.0.9\n")
    star = fake.conf("w/star.conf", "bind-interfaces\ninterface=tap*\ndhcp-range=10.5.0.5,10.5.0.9\n")
    dns_only = fake.conf("w/dns.conf", "interface=eth0\ninterface=eth1\nbind-interfaces\n")
    fake.add(50, ["dnsmasq", "-C", none], netns=1)
    fake.add(51, ["dnsmasq", "-C", listen], netns=2)
    fake.add(52, ["dnsmasq", "-C", star], netns=3)
    fake.add(53, ["dnsmasq", "-C", dns_only], netns=4)
    report = da.audit(proc=str(fake.proc), version="2.90")
    assert checks(report) == [
        ("dhcp_wildcard_interface", (50,)), ("dhcp_wildcard_interface", (51,)), ("dhcp_wildcard_interface", (52,)),
    ]
    assert "listen-address only" in report["findings"][1]["message"]


def test_no_dhcp_interface_leaves_one_dhcp_interface(fake):
    conf = fake.conf("n.conf", "bind-interfaces\ninterface=eth0,eth1\nno-dhcp-interface=eth1\n"
                               "dhcp-range=10.6.0.5,10.6.0.9\n")
    fake.add(60, ["dnsmasq", "-C", conf])
    inst = da.instances(proc=str(fake.proc))[0]
    assert inst["dhcp_interfaces"] == ["eth0"]
    assert da.audit(proc=str(fake.proc), version="2.90")["findings"] == []


def test_missing_bind_interfaces_is_flagged(fake):
    conf = fake.conf("nb.conf", "interface=eth0\ndhcp-range=10.7.0.5,10.7.0.9\n")
    fake.add(70, ["dnsmasq", "-C", conf])
    assert checks(da.audit(proc=str(fake.proc), version="2.90")) == [("no_bind_interfaces", (70,))]


def test_overlap_and_shared_interface_only_within_one_netns(fake):
    a = fake.conf("o/a.conf", "bind-interfaces\ninterface=br0\ndhcp-range=10.8.0.50,10.8.0.150\n")
    b = fake.conf("o/b.conf", "bind-interfaces\ninterface=br0\ndhcp-range=10.8.0.100,10.8.0.200\n")
    fake.add(80, ["dnsmasq", "-C", a], netns=100)
    fake.add(81, ["dnsmasq", "-C", b], netns=100)
    fake.add(82, ["dnsmasq", "-C", a], netns=200)   # Neutron style: same network, other namespace
    report = da.audit(proc=str(fake.proc), version="2.90")
    assert checks(report) == [("overlapping_dhcp_ranges", (80, 81)), ("shared_interface", (80, 81))]
    assert "10.8.0.50-10.8.0.150 and 10.8.0.100-10.8.0.200" in report["findings"][0]["message"]


def test_old_unknown_version_and_unreadable_conf(fake):
    conf = fake.conf("v.conf", "bind-interfaces\ninterface=eth0\ndhcp-range=10.9.0.5,10.9.0.9\n")
    fake.add(90, ["dnsmasq", "-C", conf, "-C", "/nonexistent/dnsmasq.conf"])
    old = da.audit(proc=str(fake.proc), version="2.66")
    assert old["ok"] is False and old["version"] == "2.66"
    assert checks(old) == [("conf_unreadable", (90,)), ("old_version", (90,))]
    assert da.audit(proc=str(fake.proc), version=2.9)["ok"] is True   # the float Salt's CLI makes of 2.90
    unknown = da.audit(proc=str(fake.proc), binary="no-such-dnsmasq-binary")
    assert unknown["ok"] is True and unknown["version"] is None
    assert ("version_unknown", (90,)) in checks(unknown)


def test_no_instances_no_findings(fake):
    assert da.audit(proc=str(fake.proc), version="2.10") == {
        "ok": True, "version": "2.10", "count": 0, "instances": [], "findings": [],
    }


def test_select_by_pids_pidfiles_and_netns(fake, tmp_path):
    conf = fake.conf("s.conf", "bind-interfaces\ninterface=eth0\ndhcp-range=10.10.0.5,10.10.0.9\n")
    netns_dir = tmp_path / "netns"
    netns_dir.mkdir()
    (netns_dir / "lab-srv").write_text("")
    ino = os.stat(netns_dir / "lab-srv").st_ino
    fake.add(100, ["dnsmasq", "-C", conf], netns=ino)
    fake.add(101, ["dnsmasq", "-C", conf], netns=ino + 1)
    pidfile = tmp_path / "x.pid"
    pidfile.write_text("101\n")
    proc = str(fake.proc)
    assert [i["pid"] for i in da.instances(proc=proc, pids=[100])] == [100]
    assert [i["pid"] for i in da.instances(proc=proc, pids="100,101")] == [100, 101]
    assert [i["pid"] for i in da.instances(proc=proc, pidfiles=[str(pidfile)])] == [101]
    assert [i["pid"] for i in da.instances(proc=proc, pidfiles=str(tmp_path / "missing.pid"))] == []
    assert [i["pid"] for i in da.instances(proc=proc, netns=f"net:[{ino + 1}]")] == [101]
    assert [i["pid"] for i in da.instances(proc=proc, netns=str(ino))] == [100]
    assert host_dnsmasq_instances.resolve_netns("lab-srv", netns_dir=str(netns_dir)) == f"net:[{ino}]"
    with pytest.raises(ValueError if da.SaltInvocationError is ValueError else da.SaltInvocationError):
        da.instances(proc=proc, netns="/nonexistent/netns")


def test_salt_module_shape():
    """Salt's conventions: __virtual__ answers, every public function has a CLI Example."""
    assert da.__virtual__() == "host_dnsmasq"
    public = [name for name, obj in vars(da).items()
              if callable(obj) and not name.startswith("_") and getattr(obj, "__module__", None) == da.__name__]
    assert sorted(public) == ["audit", "instances", "version"]
    for name in public:
        assert "CLI Example:" in getattr(da, name).__doc__
    assert da.version(binary="no-such-dnsmasq-binary") == {"version": None, "ok": False, "minimum": "2.67"}
