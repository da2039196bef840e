"""
Lab: a firewall silently cuts idle RabbitMQ connections, and host.rabbitmq fixes it (issue 5).

Real pieces, in namespaces this test creates and removes:
  srv  a RabbitMQ 3.10 node (own nodename, HOME, mnesia, logs, config under a temp dir)
  fw   a stateful firewall: conntrack forgets established TCP flows after FW_TIMEOUT idle
       seconds, nf_conntrack_tcp_loose=0, nft drops `ct state invalid` (silently)
  cli  an AMQP client (pika) in a subprocess, connecting to srv through fw

Before: RabbitMQ on its defaults. An idle connection dies silently; host_rabbitmq.audit flags
the live socket without a keepalive timer. Then host.rabbitmq is applied for real with
`salt-call --local` inside srv and cli (so the keepalive sysctls land in those namespaces only,
files under a temp root), RabbitMQ restarts on the rendered rabbitmq.conf, and an idle
connection survives 3x the firewall timeout with a message still delivered; the audit sees the
keepalive timer.
"""

import json
import os
import pathlib

import pytest

import rabbitmq_support as lab
from harness.netns import Topology

FW_TIMEOUT = 10  # conntrack established timeout in fw, seconds
KEEPALIVE = {"tcp_keepalive_time": 4, "tcp_keepalive_intvl": 1, "tcp_keepalive_probes": 3}  # 4 + 1*3 = 7 < 10
IDLE_BEFORE = FW_TIMEOUT + 5
IDLE_AFTER = 3 * FW_TIMEOUT + 2
ROUNDTRIP_DEADLINE = 6

_REASON = lab.missing_rabbit_pieces()
pytestmark = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


def pillar(root, broker, projects=()):
    return {
        "root": str(root),
        "firewall_idle_timeout": FW_TIMEOUT,
        "sysctl": dict(KEEPALIVE),
        "broker": {
            "manage": broker,
            "group": "root",
            "service": {"manage": False},  # no systemd here: the test restarts the lab node itself
            "extra": {"loopback_users.guest": False},  # the lab client logs in as guest from cli
        },
        "oslo_messaging": {"projects": list(projects)},
    }


def files_under(root):
    root = pathlib.Path(root)
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()) if root.exists() else []


@pytest.fixture
def rabbit_lab(tmp_path):
    """Topology + RabbitMQ node; on the way out stop the node and epmd, remove the namespaces,
    and fail if any beam/epmd process of this lab is left."""
    topo = Topology(prefix="dflrmq")
    node = None
    state = {"topo": topo, "tmp": tmp_path}
    try:
        srv, fw, cli = lab.build_firewall_lab(topo, FW_TIMEOUT)
        node = lab.RabbitNode(srv, tmp_path / "rabbit", tmp_path / "srv-root/etc/rabbitmq/rabbitmq.conf")
        state.update(srv=srv, fw=fw, cli=cli, node=node)
        yield state
    finally:
        srv_pids = []
        if node is not None:
            try:
                node.stop()
            finally:
                node.stop_epmd()
                srv_pids = node.netns.pids()
        topo.close()
        stragglers = lab.wait_gone(srv_pids)
        leftovers = lab.processes_matching(str(tmp_path), f"dfl{os.getpid()}@localhost")
        assert not stragglers and not leftovers, f"lab processes left behind: {stragglers} {leftovers}"


def _audit(srv, confdir):
    rc, data, res = lab.salt_call(srv, confdir, "host_rabbitmq.audit")
    assert data is not None, f"audit failed (rc {rc}): {res.stdout}\n{res.stderr[-3000:]}"
    return data


def _server_side(audit):
    return [s for s in audit["sockets"] if s["side"] == "server" and s["peer"] == lab.CLIENT_IP]


def test_state_refuses_keepalive_slower_than_firewall(tmp_path):
    """Kernel-default keepalive (7200 + 75 x 9 s) against a 10 s firewall: one failing state that
    says what to change, nothing written, sysctls untouched (in a throwaway namespace)."""
    topo = Topology(prefix="dflrmqv")
    try:
        ns = topo.ns("val")
        bad = pillar(tmp_path / "root", broker=True, projects=["nova"])
        bad["sysctl"] = {"tcp_keepalive_time": 7200, "tcp_keepalive_intvl": 75, "tcp_keepalive_probes": 9}
        confdir = lab.write_minion(tmp_path, "val", bad)
        before = lab.keepalive_sysctls(ns)
        rc, data, res = lab.salt_call(ns, confdir, "state.apply", "host.rabbitmq", "sync_mods=modules,utils")
        assert data is not None, res.stderr[-3000:]
        assert rc != 0
        assert len(data) == 1, f"expected only the refusal, got {list(data)}"
        (only,) = data.values()
        assert only["result"] is False
        comment = only["comment"]
        assert "7200 + 75 x 9 = 7875 s is not below the firewall idle timeout of 10 s" in comment
        assert "Change pillar deskfleet:host:rabbitmq:sysctl" in comment and "Nothing was written" in comment
        assert files_under(tmp_path / "root") == []
        assert lab.keepalive_sysctls(ns) == before
        print(f"\nrefusal: {comment}")
    finally:
        topo.close()


def test_idle_amqp_connection_survives_firewall_after_state(rabbit_lab):
    srv, fw, cli, node, tmp = (rabbit_lab[k] for k in ("srv", "fw", "cli", "node", "tmp"))
    srv_root, cli_root = tmp / "srv-root", tmp / "cli-root"
    srv_conf = lab.write_minion(tmp, "srv", pillar(srv_root, broker=True))
    cli_conf = lab.write_minion(tmp, "cli", pillar(cli_root, broker=False, projects=["nova", "neutron"]))

    # ---------------- before: RabbitMQ defaults (only the lab login allowed) ----------------
    node.config_file.parent.mkdir(parents=True, exist_ok=True)
    node.config_file.write_text("loopback_users.guest = false\n")
    boot_s = node.start()
    rc, _, res = lab.salt_call(srv, srv_conf, "saltutil.sync_all")
    assert rc == 0, res.stderr[-3000:]
    assert lab.keepalive_sysctls(srv) == {"tcp_keepalive_time": 7200, "tcp_keepalive_intvl": 75,
                                          "tcp_keepalive_probes": 9}

    drops0 = lab.fw_invalid_drops(fw)
    client = lab.AmqpClient(cli, lab.SERVER_IP, IDLE_BEFORE, ROUNDTRIP_DEADLINE, "before", tmp)
    try:
        heartbeat = client.expect("connected", 90)["heartbeat"]
        audit_before = _audit(srv, srv_conf)  # while the connection idles
        before = client.expect("result", IDLE_BEFORE + ROUNDTRIP_DEADLINE + 60)
        drops_before = lab.fw_invalid_drops(fw) - drops0
    finally:
        client.close()
    assert before["ok"] is False, f"idle connection should have died across the firewall: {before}"
    assert not heartbeat or heartbeat / 2 > FW_TIMEOUT, (
        f"AMQP heartbeat {heartbeat} s would refresh the firewall by itself: the lab would prove nothing")
    assert drops_before > 0, "the firewall should have dropped the dead flow's segments as invalid"
    live = _server_side(audit_before)
    assert live and all(s["keepalive"] is False for s in live), audit_before
    assert audit_before["result"] is False and audit_before["without_keepalive"], audit_before
    assert "net.ipv4.tcp_keepalive_time" in audit_before["sysctl_off_target"]

    # ---------------- the fix: host.rabbitmq through Salt, in srv and in cli ----------------
    node.stop()
    for netns, confdir in ((srv, srv_conf), (cli, cli_conf)):
        rc, data, res = lab.salt_call(netns, confdir, "state.apply", "host.rabbitmq", "sync_mods=modules,utils")
        assert data is not None and rc == 0 and not lab.state_failures(data), (
            f"state.apply in {netns.name} failed (rc {rc}): {json.dumps(data, indent=1)[-4000:]}\n{res.stderr[-2000:]}")
        assert lab.keepalive_sysctls(netns) == KEEPALIVE, netns.name
    assert lab.keepalive_sysctls(fw)["tcp_keepalive_time"] == 7200  # other namespaces untouched
    rc, data, res = lab.salt_call(srv, srv_conf, "state.apply", "host.rabbitmq")
    changed = {k: v["changes"] for k, v in (data or {}).items() if v.get("changes")}
    assert rc == 0 and data and not changed, f"second apply should change nothing: {changed or res.stderr[-2000:]}"

    conf = node.config_file.read_text()
    for line in ("tcp_listen_options.keepalive = true", "tcp_listen_options.backlog = 128",
                 "tcp_listen_options.nodelay = true", "tcp_listen_options.linger.on = true",
                 "tcp_listen_options.linger.timeout = 0", "tcp_listen_options.exit_on_close = false",
                 "heartbeat = 60", "loopback_users.guest = false"):
        assert line in conf.splitlines(), f"{line!r} missing from rendered rabbitmq.conf:\n{conf}"
    assert files_under(srv_root) == ["etc/rabbitmq/rabbitmq.conf", "etc/sysctl.d/60-deskfleet-amqp-keepalive.conf"]
    assert files_under(cli_root) == [
        "etc/neutron/neutron.conf.d/60-deskfleet-rabbit-heartbeat.conf",
        "etc/nova/nova.conf.d/60-deskfleet-rabbit-heartbeat.conf",
        "etc/sysctl.d/60-deskfleet-amqp-keepalive.conf",
    ]
    oslo = (cli_root / "etc/nova/nova.conf.d/60-deskfleet-rabbit-heartbeat.conf").read_text()
    assert "[oslo_messaging_rabbit]" in oslo and "heartbeat_timeout_threshold = 60" in oslo
    assert "heartbeat_rate = 3" in oslo

    # ---------------- after: RabbitMQ restarted on the rendered rabbitmq.conf ----------------
    reboot_s = node.start()
    client = lab.AmqpClient(cli, lab.SERVER_IP, IDLE_AFTER, ROUNDTRIP_DEADLINE, "after", tmp)
    try:
        client.expect("connected", 90)
        audit_after = _audit(srv, srv_conf)
        after = client.expect("result", IDLE_AFTER + ROUNDTRIP_DEADLINE + 60)
    finally:
        client.close()
    assert after["ok"] is True, f"idle connection should survive with keepalive: {after}\n{client.stderr()}"
    assert after["idle_s"] >= 3 * FW_TIMEOUT
    live = _server_side(audit_after)
    assert live and all(s["keepalive"] is True for s in live), audit_after
    assert all(s["timer_expires_s"] <= KEEPALIVE["tcp_keepalive_time"] + 0.5 for s in live), live
    assert audit_after["result"] is True, audit_after["comment"]

    # ---------------- clean: host.rabbitmq.clean in cli restores the kernel defaults ----------------
    rc, data, res = lab.salt_call(cli, cli_conf, "state.apply", "host.rabbitmq.clean")
    assert rc == 0 and data and not lab.state_failures(data), res.stdout[-3000:]
    assert files_under(cli_root) == []
    assert lab.keepalive_sysctls(cli) == {"tcp_keepalive_time": 7200, "tcp_keepalive_intvl": 75,
                                          "tcp_keepalive_probes": 9}

    print(
        f"\nRabbitMQ lab (firewall idle timeout {FW_TIMEOUT} s; keepalive {KEEPALIVE['tcp_keepalive_time']}/"
        f"{KEEPALIVE['tcp_keepalive_intvl']}/{KEEPALIVE['tcp_keepalive_probes']} s; AMQP heartbeat {heartbeat} s; "
        f"broker boot {boot_s:.0f} s, "
        f"restart {reboot_s:.0f} s)\n"
        f"before: died after idle {before['idle_s']:.0f} s with timeout {FW_TIMEOUT} s "
        f"({before.get('error')}; the firewall dropped {drops_before} invalid segments; "
        f"audit: {len(audit_before['without_keepalive'])} AMQP socket(s) without keepalive timer)\n"
        f"after: survived {after['idle_s']:.0f} s idle ({after['idle_s'] / FW_TIMEOUT:.1f}x timeout), "
        f"message delivered in {after['roundtrip_s'] * 1000:.0f} ms; "
        f"audit: keepalive timer on the live AMQP socket ({live[0]['timer_expires_s']} s to next probe)"
    )

