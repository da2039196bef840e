"""
Lab test for issue 5, dnsmasq half: "several dnsmasq instances on one host dropped
unicast DHCP renewals". Everything here is real: dnsmasq, busybox udhcpc, tcpdump,
network namespaces and veth cables, and Salt (``salt-call --local`` applying
``states/host/dnsmasq`` and running ``_modules/host_dnsmasq.py``).

Server namespace ``srv``: bridges ``s0`` and ``s1``, each with CLIENTS_PER_NETWORK
client namespaces on veth ports (fixed MACs, so dnsmasq hands out the same
addresses every run), plus bridges ``d0`` and ``d1`` standing for two more
networks without clients.

1. Bad layout: two instances with two interfaces each (s0+d0, s1+d1), both with
   bind-interfaces. Neither can bind its DHCP socket to a device: both bind
   0.0.0.0:67 (SO_REUSEPORT), and the kernel picks the socket for each unicast
   renewal by a hash of the addresses and ports, keyed with a random secret
   (mixed per network namespace, so which clients lose changes from run to
   run). A client whose hash lands on the other instance loses every one of its
   unicast renewals (the broadcast rebind rescues it later): about half of the
   clients. With 16 client addresses the chance that none is hit is 2**-16,
   which is why there are 8 clients per network and not one. The audit flags
   both instances.
2. Fixed layout: ``state.apply host.dnsmasq`` (root prefix = temp dir) renders
   the template unit and one conf per interface; one dnsmasq per interface is
   started exactly from the unit's ExecStart; every unicast renewal is
   answered and the audit passes.
3. ``state.apply host.dnsmasq.clean`` leaves no file behind.

Run alone: python -m pytest tests/lab/test_dnsmasq_lab.py -q -s (prints the rates).
"""

import concurrent.futures
import os
import shutil
import subprocess

import pytest

import dnsmasq_support as support
from harness.netns import Topology, missing

RENEWALS = 10  # unicast renewals per client and layout
CLIENTS_PER_NETWORK = 8

# interface -> (server address, dhcp-range without lease time)
NETWORKS = {
    "s0": ("10.99.10.1/24", "10.99.10.50,10.99.10.150,255.255.255.0"),
    "s1": ("10.99.11.1/24", "10.99.11.50,10.99.11.150,255.255.255.0"),
    "d0": ("10.99.12.1/24", "10.99.12.50,10.99.12.150,255.255.255.0"),
    "d1": ("10.99.13.1/24", "10.99.13.50,10.99.13.150,255.255.255.0"),
}
CLIENT_NETWORKS = ("s0", "s1")  # bridges with clients; d0 and d1 have none
BAD_LAYOUT = {"pair0": ("s0", "d0"), "pair1": ("s1", "d1")}
DNSMASQ = shutil.which("dnsmasq") or "/usr/sbin/dnsmasq"


def _skip_reason():
    reason = missing("dnsmasq", "udhcpc", "tcpdump", "systemd-analyze")
    if reason:
        return reason
    if not support.SALT_CALL.exists():
        return f"lab tier needs salt-call next to {support.SALT_CALL.parent}/python (the project venv)"
    return None


pytestmark = pytest.mark.skipif(_skip_reason() is not None, reason=str(_skip_reason()))


@pytest.fixture
def lab():
    """Namespaces, bridges and cables; every process and namespace goes away afterwards, even on failure."""
    with Topology(prefix="dnsq") as topo:
        srv = topo.ns("srv")
        clients = []
        for ifname, (addr, _) in NETWORKS.items():
            srv.run(["ip", "link", "add", ifname, "type", "bridge"])
            srv.run(["ip", "addr", "add", addr, "dev", ifname])
            srv.run(["ip", "link", "set", ifname, "up"])
            if ifname not in CLIENT_NETWORKS:
                continue
            third_octet = int(addr.split(".")[2])
            for j in range(CLIENTS_PER_NETWORK):
                client = topo.ns(f"{ifname}c{j}")
                topo.link(srv, f"{ifname}p{j}", client, "eth0")
                srv.run(["ip", "link", "set", f"{ifname}p{j}", "master", ifname])
                client.run(["ip", "link", "set", "eth0", "address", f"02:00:0a:63:{third_octet:02x}:{j + 1:02x}"])
                clients.append(client)
        yield srv, clients


def _measure(clients, workdir, label):
    """RENEWALS unicast renewals from every client at once; prints and returns the figures."""
    running = []
    try:
        for ns in clients:
            client = support.DhcpClient(ns, "eth0", workdir / label / ns.name)
            running.append(client)
            client.launch()
        for client in running:
            client.wait_bound()
        with concurrent.futures.ThreadPoolExecutor(len(running)) as pool:
            results = list(pool.map(lambda c: c.measure(RENEWALS), running))
    finally:
        for client in running:
            client.close()
    sent = sum(r["sent"] for r in results)
    answered = sum(r["answered"] for r in results)
    missed_by_udhcpc = sum(r["answered"] - r["log_answered"] for r in results)
    per_client = " ".join(f"{r['client']}={r['answered']}/{r['sent']}" for r in results)
    print(f"\n[dnsmasq lab] {label}: unicast renewals answered {answered}/{sent} "
          f"({100.0 * answered / sent:.0f}%); clients with every renewal answered: "
          f"{sum(r['answered'] == r['sent'] for r in results)}/{len(results)}\n"
          f"[dnsmasq lab]   per client: {per_client}\n"
          f"[dnsmasq lab]   ACKs on the wire that udhcpc itself lost (its send-socket race): {missed_by_udhcpc}",
          flush=True)
    for r in results:
        assert r["sent"] == RENEWALS and r["log_sent"] == RENEWALS, r
        assert r["log_answered"] <= r["answered"], r
    return results, sent, answered


def _audit(conf_dir, srv):
    result, proc = support.salt_call(conf_dir, "host_dnsmasq.audit", f"netns={srv.name}")
    assert isinstance(result, dict), (result, proc.stderr)
    return result


def _write_pillar(pillar_root, root):
    pillar_root.mkdir()
    (pillar_root / "top.sls").write_text("base:\n  '*':\n    - host_dnsmasq\n")
    interfaces = "".join(
        f"        {ifname}:\n          range: '{rng}'\n" for ifname, (_, rng) in NETWORKS.items()
    )
    (pillar_root / "host_dnsmasq.sls").write_text(
        "deskfleet:\n  host:\n    dnsmasq:\n"
        f"      root: '{root}'\n"
        "      manage_services: False\n"
        "      manage_pkg: False\n"
        f"      bin: {DNSMASQ}\n"
        "      log_dir: /var/log/dnsmasq-deskfleet\n"
        "      options: [port=0, no-ping, log-dhcp]\n"
        "      interfaces:\n" + interfaces
    )


def test_one_dnsmasq_per_interface_answers_every_unicast_renewal(lab, tmp_path):
    srv, clients = lab
    root = tmp_path / "root"
    pillar_root = tmp_path / "pillar"
    _write_pillar(pillar_root, root)
    conf_dir = support.minion_config(tmp_path, pillar_root)
    synced, proc = support.salt_call(conf_dir, "saltutil.sync_utils")
    assert "utils.host_dnsmasq_instances" in synced, (synced, proc.stderr)
    synced, proc = support.salt_call(conf_dir, "saltutil.sync_modules")
    assert "modules.host_dnsmasq" in synced, (synced, proc.stderr)

    # ---- 1. bad layout: two instances, two interfaces each
    bad_dir = tmp_path / "bad"
    bad_dir.mkdir()
    bad_procs = []
    for name, ifnames in BAD_LAYOUT.items():
        conf = bad_dir / f"{name}.conf"
        conf.write_text(
            "bind-interfaces\nexcept-interface=lo\nport=0\nno-ping\nlog-dhcp\n"
            + "".join(f"interface={i}\n" for i in ifnames)
            + "".join(f"dhcp-range={NETWORKS[i][1]},12h\n" for i in ifnames)
            + f"pid-file={bad_dir}/{name}.pid\ndhcp-leasefile={bad_dir}/{name}.leases\n"
            + f"log-facility={bad_dir}/{name}.log\n"
        )
        bad_procs.append(support.start_dnsmasq(
            srv, [DNSMASQ, "--keep-in-foreground", f"--conf-file={conf}"],
            bad_dir / f"{name}.pid", bad_dir / f"{name}.out",
        ))
    bad_audit = _audit(conf_dir, srv)
    bad_results, bad_sent, bad_answered = _measure(clients, tmp_path, "bad layout (2 instances x 2 interfaces)")
    for proc in bad_procs:
        support.stop(proc)

    assert bad_answered < bad_sent, "expected the bad layout to lose unicast renewals"
    assert min(r["answered"] for r in bad_results) < RENEWALS
    assert bad_audit["ok"] is False
    assert sorted(i["pid"] for i in bad_audit["instances"]) == sorted(p.pid for p in bad_procs)
    flagged = sorted(f["pids"][0] for f in bad_audit["findings"] if f["check"] == "dhcp_multiple_interfaces")
    assert flagged == sorted(p.pid for p in bad_procs), bad_audit["findings"]

    # ---- 2. the fix: the state renders unit + one conf per interface, instances start from ExecStart
    applied, proc = support.salt_call(conf_dir, "state.apply", "host.dnsmasq")
    assert isinstance(applied, dict) and applied, (applied, proc.stderr)
    failed = {k: v["comment"] for k, v in applied.items() if not v["result"]}
    assert not failed, failed
    unit = root / "etc/systemd/system/dnsmasq-deskfleet@.service"
    unit_text = unit.read_text()
    fixed_procs = []
    for ifname in NETWORKS:
        conf_text = (root / "etc/dnsmasq-deskfleet" / f"{ifname}.conf").read_text()
        assert [l for l in conf_text.splitlines() if l.startswith("interface=")] == [f"interface={ifname}"]
        assert "bind-interfaces" in conf_text.splitlines() and "except-interface=lo" in conf_text.splitlines()
        # systemd's own offline check of the rendered template, then what systemd would run: pre-check + start
        verify = subprocess.run(
            # --man=no: the unit's Documentation=man:dnsmasq(8) is not this test's business (no man on servers)
            ["systemd-analyze", "verify", "--man=no", f"dnsmasq-deskfleet@{ifname}.service"],
            capture_output=True, text=True,
            env={**os.environ, "SYSTEMD_UNIT_PATH": f"{unit.parent}:"}, timeout=120, check=False,
        )
        assert verify.returncode == 0, verify.stdout + verify.stderr
        for pre in support.exec_lines(unit_text, "ExecStartPre", ifname):
            srv.run(pre)
        argv = support.exec_start(unit_text, ifname)
        assert argv[0] == DNSMASQ and f"--conf-file={root}/etc/dnsmasq-deskfleet/{ifname}.conf" in argv
        fixed_procs.append(support.start_dnsmasq(
            srv, argv, support.conf_value(conf_text, "pid-file"), tmp_path / f"fixed-{ifname}.out",
        ))
    fixed_audit = _audit(conf_dir, srv)
    fixed_results, fixed_sent, fixed_answered = _measure(clients, tmp_path, "fixed layout (4 instances x 1 interface)")

    print(f"[dnsmasq lab] before: {bad_answered}/{bad_sent} answered; after: {fixed_answered}/{fixed_sent} answered",
          flush=True)
    assert fixed_answered == fixed_sent == RENEWALS * len(clients), fixed_results
    assert fixed_audit["ok"] is True and fixed_audit["findings"] == [], fixed_audit["findings"]
    assert sorted(i["pid"] for i in fixed_audit["instances"]) == sorted(p.pid for p in fixed_procs)
    assert all(i["dhcp_interfaces"] == [i["cmdline"][-1].rsplit("/", 1)[1][:-5]] for i in fixed_audit["instances"])
    for proc in fixed_procs:
        support.stop(proc)

    # ---- 3. clean: nothing the state wrote is left (only the empty parents of the temp root)
    cleaned, proc = support.salt_call(conf_dir, "state.apply", "host.dnsmasq.clean")
    assert all(v["result"] for v in cleaned.values()), (cleaned, proc.stderr)
    leftovers = [p for p in root.rglob("*") if not p.is_dir()]
    assert leftovers == [], leftovers
    assert not (root / "etc/dnsmasq-deskfleet").exists() and not unit.exists()


def test_state_refuses_to_touch_the_host_under_a_root_prefix(tmp_path):
    """root set with manage_services/manage_pkg left on would start units / install packages on the real host."""
    pillar_root = tmp_path / "pillar"
    pillar_root.mkdir()
    (pillar_root / "top.sls").write_text("base:\n  '*':\n    - host_dnsmasq\n")
    (pillar_root / "host_dnsmasq.sls").write_text(
        f"deskfleet:\n  host:\n    dnsmasq:\n      root: '{tmp_path}/root'\n"
        "      interfaces:\n        s0: {range: '10.99.10.50,10.99.10.150'}\n"
    )
    conf_dir = support.minion_config(tmp_path, pillar_root)
    applied, _ = support.salt_call(conf_dir, "state.apply", "host.dnsmasq")
    assert [v["result"] for v in applied.values()] == [False]
    assert "set manage_services and manage_pkg to False" in next(iter(applied.values()))["comment"]
    assert not (tmp_path / "root").exists()


def test_production_render_manages_one_service_per_interface(tmp_path):
    """
    The production branch (root '', services and package managed) rendered with
    state.show_sls, never applied: systemd is not PID 1 here and no test touches /etc.
    """
    pillar_root = tmp_path / "pillar"
    pillar_root.mkdir()
    (pillar_root / "top.sls").write_text("base:\n  '*':\n    - host_dnsmasq\n")
    (pillar_root / "host_dnsmasq.sls").write_text(
        "deskfleet:\n  host:\n    dnsmasq:\n      replaces: [dnsmasq.service]\n      interfaces:\n"
        "        br-desk1: {range: '10.20.1.50,10.20.1.250,255.255.255.0'}\n"
        "        br-desk2: {range: '10.20.2.50,10.20.2.250,255.255.255.0'}\n"
    )
    conf_dir = support.minion_config(tmp_path, pillar_root)
    low, proc = support.salt_call(conf_dir, "state.show_sls", "host.dnsmasq")
    assert isinstance(low, dict), (low, proc.stderr)

    def requisites(state_id, kind):
        body = next(v for k, v in low[state_id].items() if not k.startswith("__"))
        return [next(iter(r.items())) for item in body if kind in item for r in item[kind]]

    for name in ("br-desk1", "br-desk2"):
        state = low[f"host-dnsmasq-service-{name}"]
        assert "service" in state and {"name": f"dnsmasq-deskfleet@{name}.service"} in state["service"]
        assert ("file", f"host-dnsmasq-conf-{name}") in requisites(f"host-dnsmasq-service-{name}", "watch")
        assert ("service", "host-dnsmasq-replaces-dnsmasq.service") in requisites(
            f"host-dnsmasq-service-{name}", "require")
    assert {"name": "/etc/dnsmasq-deskfleet/br-desk1.conf"} in low["host-dnsmasq-conf-br-desk1"]["file"]
    assert {"name": "/etc/systemd/system/dnsmasq-deskfleet@.service"} in low["host-dnsmasq-unit"]["file"]
    assert {"name": "dnsmasq-base"} in low["host-dnsmasq-pkg"]["pkg"]
    assert {"name": "dnsmasq.service"} in low["host-dnsmasq-replaces-dnsmasq.service"]["service"]
