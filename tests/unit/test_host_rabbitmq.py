"""
Unit tests for ``_modules/host_rabbitmq.py`` (issue 5): the keepalive-vs-firewall rule the
``host.rabbitmq`` state enforces, ``ss -tnoe`` parsing (captured output) and the audit verdict,
plus the formula's defaults and rabbitmq.conf template.
"""

import pathlib

import jinja2
import pytest

from tests.support.loading import load
import yaml

import host_formula
import host_keepalive
import host_ss
from host_fake_salt import READ, fake_salt

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
FORMULA = CHECKOUT / "states/host/rabbitmq"
# the formula's own defaults, read as the module reads them
DEFAULTS = host_formula.layers("rabbitmq", "Debian", READ)
SYSCTL_DEFAULTS = {k: DEFAULTS["sysctl"][k] for k in ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")}


ak = load("_modules/host_rabbitmq.py")


def check(time, intvl, probes, timeout):
    return host_keepalive.check_keepalive(time, intvl, probes, timeout, SYSCTL_DEFAULTS)

# `ss -tnoepH` in the lab's RabbitMQ namespace, RabbitMQ on its defaults (no keepalive on the AMQP socket)
SS_BEFORE = """\
ESTAB 0      0                127.0.0.1:4369            127.0.0.1:33662 users:(("epmd",pid=23918,fd=5)) ino:2797709 sk:1005 cgroup:unreachable:1 <->     
ESTAB 0      0                127.0.0.1:33662           127.0.0.1:4369  users:(("beam.smp",pid=23850,fd=18)) ino:2797707 sk:1008 cgroup:unreachable:1 <->
ESTAB 0      0      [::ffff:10.197.1.1]:5672  [::ffff:10.197.2.1]:52672 users:(("beam.smp",pid=23850,fd=21)) ino:2939835 sk:100a cgroup:unreachable:1 <->
"""  # noqa: W291

# the same after host.rabbitmq (tcp_listen_options.keepalive = true, tcp_keepalive_time = 4)
SS_AFTER = """\
ESTAB 0      0                127.0.0.1:35000           127.0.0.1:4369  users:(("beam.smp",pid=28310,fd=18)) ino:3287954 sk:11 cgroup:unreachable:1 <->
ESTAB 0      0                127.0.0.1:4369            127.0.0.1:35000 users:(("epmd",pid=23918,fd=5)) ino:3287955 sk:12 cgroup:unreachable:1 <->     
ESTAB 0      0      [::ffff:10.197.1.1]:5672  [::ffff:10.197.2.1]:51712 users:(("beam.smp",pid=28310,fd=23)) timer:(keepalive,288ms,0) ino:3318486 sk:100f cgroup:unreachable:1 <->
"""  # noqa: W291

# `ss -tnoe` (with header) on one host: a client and the broker over IPv4 and IPv6, other ports around
SS_HEADER_MIXED = """\
State Recv-Q Send-Q      Local Address:Port        Peer Address:Port Process                                                             
ESTAB 0      0               127.0.0.1:50148          127.0.0.1:5672  ino:315535 sk:3 cgroup:unreachable:1 <->                           
ESTAB 0      0               127.0.0.1:4369           127.0.0.1:36308 ino:315542 sk:4 cgroup:unreachable:1 <->                           
ESTAB 0      0               127.0.0.1:36308          127.0.0.1:4369  timer:(keepalive,119min,0) ino:315541 sk:5 cgroup:unreachable:1 <->
ESTAB 0      0      [::ffff:127.0.0.1]:5672  [::ffff:127.0.0.1]:50148 timer:(keepalive,119min,0) ino:315536 sk:6 cgroup:unreachable:1 <->
ESTAB 0      0                   [::1]:49378              [::1]:5672  ino:315537 sk:7 uid:107 cgroup:unreachable:1 <->                           
ESTAB 0      0                   [::1]:5672               [::1]:49378 timer:(on,200ms,2) ino:315538 sk:8 cgroup:unreachable:1 <->                           
TIME-WAIT 0  0               127.0.0.1:5672           127.0.0.1:40000 timer:(timewait,52sec,0) ino:0 sk:9
CLOSE-WAIT 1 0               10.0.0.5:41000           10.0.0.9:5672  ino:315600 sk:a <->
"""  # noqa: W291

# `ss -tnoeH state established`: a single-state filter drops the State column
SS_NO_STATE = """\
0      0               127.0.0.1:50148          127.0.0.1:5672  ino:315535 sk:3 cgroup:unreachable:1 <->                           
0      0      [::ffff:127.0.0.1]:5672  [::ffff:127.0.0.1]:50148 timer:(keepalive,1min52sec,0) ino:315536 sk:6 cgroup:unreachable:1 <->
"""  # noqa: W291


# ---------------------------------------------------------------- the rule


def test_kernel_defaults_are_refused_against_a_one_hour_firewall():
    problems = check(7200, 75, 9, 3600)
    assert len(problems) == 1
    msg = problems[0]
    assert "7200 + 75 x 9 = 7875 s is not below the firewall idle timeout of 3600 s" in msg
    # says what to change, with values that pass
    assert "Change pillar deskfleet:host:rabbitmq:sysctl" in msg
    assert "tcp_keepalive_time: 60, tcp_keepalive_intvl: 15, tcp_keepalive_probes: 4 (120 s)" in msg
    assert check(60, 15, 4, 3600) == []


def test_boundary_is_strictly_below():
    assert check(4, 2, 3, 10) != []  # 4 + 6 = 10: not below
    assert check(3, 2, 3, 10) == []  # 9
    assert host_keepalive.worst_case(4, 1, 3) == 7


def test_lab_values_pass_and_suggestions_fit():
    assert check(4, 1, 3, 10) == []
    assert "tcp_keepalive_time: 4, tcp_keepalive_intvl: 1" in check(7200, 75, 9, 10)[0]


def test_suggestion_is_always_below_the_timeout():
    for timeout in list(range(3, 400)) + [599, 600, 3600, 86400]:
        for probes in (1, 3, 9, 20):
            hint = host_keepalive.suggest(timeout, SYSCTL_DEFAULTS, probes)
            assert hint and min(hint.values()) >= 1, (timeout, probes)
            assert check(hint["tcp_keepalive_time"], hint["tcp_keepalive_intvl"],
                                      hint["tcp_keepalive_probes"], timeout) == [], (timeout, probes, hint)


def test_firewall_timeout_too_short_for_keepalive():
    assert host_keepalive.suggest(2, SYSCTL_DEFAULTS) is None
    (msg,) = check(1, 1, 1, 2)
    assert "too short for TCP keepalive" in msg and "deskfleet:host:rabbitmq:firewall_idle_timeout" in msg


@pytest.mark.parametrize(
    "args, fragment",
    [
        ((0, 15, 4, 3600), "tcp_keepalive_time must be at least 1"),
        (("soon", 15, 4, 3600), "tcp_keepalive_time must be a whole number"),
        ((60, True, 4, 3600), "tcp_keepalive_intvl must be a whole number of seconds"),
        ((60, 15, 0, 3600), "tcp_keepalive_probes must be at least 1"),
        ((60, 15, 4, None), "firewall_idle_timeout must be a whole number"),
    ],
)
def test_bad_values_are_named(args, fragment):
    problems = check(*args)
    assert any(fragment in p for p in problems), problems


def test_numeric_strings_from_pillar_are_accepted():
    assert check("60", " 15", "4", "3600") == []


def test_heartbeat_ranges():
    assert host_keepalive.check_heartbeats(60, 60, 3) == []
    assert host_keepalive.check_heartbeats(0, 0, 1) == []  # 0 disables a heartbeat
    assert any("heartbeat_rate must be at least 1" in p for p in host_keepalive.check_heartbeats(60, 60, 0))
    assert any("broker:heartbeat must be at least 0" in p for p in host_keepalive.check_heartbeats(-1))


# ---------------------------------------------------------------- ss parsing


@pytest.mark.parametrize(
    "text, seconds",
    [("119min", 7140.0), ("1min52sec", 112.0), ("4sec", 4.0), ("988ms", 0.988), ("2.488ms", 2.488),
     ("15sec", 15.0), ("-1sec", -1.0), ("", None), ("soon", None)],
)
def test_parse_duration(text, seconds):
    assert host_ss.parse_duration(text) == seconds


@pytest.mark.parametrize(
    "text, expected",
    [("10.0.0.1:5672", ("10.0.0.1", 5672)), ("[::1]:5672", ("::1", 5672)),
     ("[::ffff:10.197.1.1]:5672", ("10.197.1.1", 5672)), ("[fe80::1%eth0]:5672", ("fe80::1", 5672)),
     ("*:*", ("*", None))],
)
def test_split_endpoint(text, expected):
    assert host_ss.split_endpoint(text) == expected


def test_parse_captured_lab_output_before_fix():
    socks = host_ss.parse_ss(SS_BEFORE)
    assert len(socks) == 3
    amqp = host_ss.amqp_sockets(socks, [5672])
    assert len(amqp) == 1
    (sock,) = amqp
    assert sock["side"] == "server" and sock["keepalive"] is False and sock["timer"] is None
    assert (sock["local"], sock["local_port"], sock["peer"], sock["peer_port"]) == ("10.197.1.1", 5672, "10.197.2.1", 52672)
    assert (sock["process"], sock["pid"]) == ("beam.smp", 23850)


def test_parse_captured_lab_output_after_fix():
    (sock,) = host_ss.amqp_sockets(host_ss.parse_ss(SS_AFTER), 5672)
    assert sock["keepalive"] is True and sock["timer"] == "keepalive"
    assert sock["timer_expires_s"] == 0.288 and sock["timer_retrans"] == 0


def test_both_sides_only_live_sockets_and_header_skipped():
    socks = host_ss.parse_ss(SS_HEADER_MIXED)
    assert len(socks) == 8
    amqp = host_ss.amqp_sockets(socks)  # default port 5672, ESTAB only
    flows = {(s["side"], s["local_port"], s["peer_port"], s["keepalive"]) for s in amqp}
    assert flows == {
        ("client", 50148, 5672, False),
        ("server", 5672, 50148, True),
        ("client", 49378, 5672, False),
        ("server", 5672, 49378, None),  # retransmitting: keepalive cannot be told from ss
    }


def test_single_state_filter_output_without_state_column():
    amqp = host_ss.amqp_sockets(host_ss.parse_ss(SS_NO_STATE), [5672])
    assert [(s["side"], s["keepalive"], s["timer_expires_s"]) for s in amqp] == [
        ("client", False, None), ("server", True, 112.0)]


def test_ports_are_configurable():
    assert host_ss.amqp_sockets(host_ss.parse_ss(SS_BEFORE), "5671") == []
    assert len(host_ss.amqp_sockets(host_ss.parse_ss(SS_BEFORE), "5671,5672")) == 1
    assert len(host_ss.amqp_sockets(host_ss.parse_ss(SS_BEFORE), [4369])) == 2


def test_garbage_lines_are_ignored():
    assert host_ss.parse_ss("Failed to find cgroup2 mount\n\nnonsense here\n") == []


# ---------------------------------------------------------------- audit verdict


def test_sysctl_drift():
    drift = host_keepalive.sysctl_drift(
        {"net.ipv4.tcp_keepalive_time": 7200, "net.ipv4.tcp_keepalive_intvl": "15", "tcp_keepalive_probes": 4},
        {"tcp_keepalive_time": 60, "tcp_keepalive_intvl": 15, "tcp_keepalive_probes": 4},
    )
    assert drift["net.ipv4.tcp_keepalive_time"] == {"current": 7200, "target": 60, "ok": False}
    assert drift["net.ipv4.tcp_keepalive_intvl"]["ok"] and drift["net.ipv4.tcp_keepalive_probes"]["ok"]


def test_summary_before_and_after():
    kernel = {"tcp_keepalive_time": 7200, "tcp_keepalive_intvl": 75, "tcp_keepalive_probes": 9}
    target = {"tcp_keepalive_time": 4, "tcp_keepalive_intvl": 1, "tcp_keepalive_probes": 3}

    before = host_keepalive.summarize(host_ss.amqp_sockets(host_ss.parse_ss(SS_BEFORE)), host_keepalive.sysctl_drift(kernel, target), 10)
    assert before["result"] is False
    assert before["without_keepalive"] == ["10.197.1.1:5672->10.197.2.1:52672"]
    assert before["sysctl_off_target"] == sorted("net.ipv4." + k for k in kernel)
    assert "no keepalive timer" in before["comment"] and "7875 s" in before["comment"]

    after = host_keepalive.summarize(host_ss.amqp_sockets(host_ss.parse_ss(SS_AFTER)), host_keepalive.sysctl_drift(target, target), 10)
    assert after["result"] is True and after["without_keepalive"] == [] and after["sysctl_off_target"] == []
    assert "all with a keepalive timer" in after["comment"]


def test_undetermined_timer_is_reported_not_failed():
    amqp = [s for s in host_ss.amqp_sockets(host_ss.parse_ss(SS_HEADER_MIXED)) if s["keepalive"] is None]
    target = {"tcp_keepalive_time": 60, "tcp_keepalive_intvl": 15, "tcp_keepalive_probes": 4}
    report = host_keepalive.summarize(amqp, host_keepalive.sysctl_drift(target, target), 3600)
    assert report["result"] is True and report["undetermined"] == ["[::1]:5672->[::1]:49378"]
    assert "'on' timer" in report["comment"]


# ---------------------------------------------------------------- Salt shell with fake dunders


LAB_PILLAR = {"firewall_idle_timeout": 10,
              "sysctl": {"tcp_keepalive_time": 4, "tcp_keepalive_intvl": 1, "tcp_keepalive_probes": 3}}


@pytest.fixture
def salt_shell(monkeypatch):
    calls = []

    def shell(pillar, files=None, fetched=None):
        funcs = fake_salt(pillar=pillar, files=files, fetched=fetched)

        def run_all(cmd, **_kw):
            calls.append(cmd)
            return {"retcode": 0, "stdout": SS_AFTER, "stderr": "Failed to find cgroup2 mount"}

        funcs["cmd.run_all"] = run_all
        monkeypatch.setattr(ak, "__salt__", funcs, raising=False)
        return calls

    monkeypatch.setattr(ak, "__grains__", {"kernel": "Linux", "os_family": "Debian"}, raising=False)
    monkeypatch.setattr(ak.salt.utils.path, "which", lambda name: f"/usr/bin/{name}")
    monkeypatch.setattr(host_keepalive, "read_sysctls", lambda: {"net.ipv4.tcp_keepalive_time": 4,
                                                                 "net.ipv4.tcp_keepalive_intvl": 1,
                                                                 "net.ipv4.tcp_keepalive_probes": 3})
    shell({"deskfleet": {"host": {"rabbitmq": LAB_PILLAR}}})
    return shell


def test_validate_reads_pillar_and_arguments_win(salt_shell):
    ok = ak.validate()
    assert ok["result"] is True and ok["worst_case_s"] == 7 and ok["firewall_idle_timeout"] == 10
    bad = ak.validate(time=7200, intvl=75, probes=9)
    assert bad["result"] is False and "7875 s" in bad["comment"] and bad["problems"]


def test_audit_end_to_end_with_captured_output(salt_shell):
    report = ak.audit()
    assert salt_shell({"deskfleet": {"host": {"rabbitmq": LAB_PILLAR}}}) == [["/usr/bin/ss", "-tnoepH"]]
    assert report["result"] is True and report["ports"] == [5672]
    assert [s["keepalive"] for s in report["sockets"]] == [True]


def test_virtual(monkeypatch):
    monkeypatch.setattr(ak, "__grains__", {"kernel": "Windows"}, raising=False)
    assert ak.__virtual__()[0] is False
    monkeypatch.setattr(ak, "__grains__", {"kernel": "Linux"}, raising=False)
    assert ak.__virtual__() == "host_rabbitmq"


def test_public_functions_have_cli_examples():
    for name in ("validate", "sockets", "audit"):
        assert "CLI Example:" in getattr(ak, name).__doc__


# ---------------------------------------------------------------- formula files


def test_module_reads_the_formula_defaults_file(salt_shell):
    """No Python copy of defaults.yaml: with an empty pillar the module judges by the file it fetches."""
    fetched = []
    salt_shell({}, fetched=fetched)
    shipped = ak.validate()
    assert shipped["result"] is True and shipped["worst_case_s"] == 120 and shipped["firewall_idle_timeout"] == 3600
    assert "salt://host/rabbitmq/parameters/defaults.yaml" in fetched
    assert "salt://host/rabbitmq/parameters/os_family/Debian.yaml" in fetched
    edited = READ("host/rabbitmq/parameters/defaults.yaml").replace("firewall_idle_timeout: 3600", "firewall_idle_timeout: 100")
    salt_shell({}, files={"host/rabbitmq/parameters/defaults.yaml": edited})
    refused = ak.validate()
    assert refused["result"] is False and "firewall idle timeout of 100 s" in refused["comment"]


def test_old_pillar_key_still_works_with_a_deprecation_warning(salt_shell, caplog):
    salt_shell({"host_rabbitmq": LAB_PILLAR})
    with caplog.at_level("WARNING"):
        ok = ak.validate()
    assert ok["result"] is True and ok["worst_case_s"] == 7 and ok["firewall_idle_timeout"] == 10
    assert "pillar key host_rabbitmq is deprecated" in caplog.text and "deskfleet:host:rabbitmq" in caplog.text
    # the new key wins where both are set
    salt_shell({"host_rabbitmq": LAB_PILLAR, "deskfleet": {"host": {"rabbitmq": {"firewall_idle_timeout": 3600}}}})
    assert ak.validate()["firewall_idle_timeout"] == 3600


def test_shipped_defaults_pass_the_shipped_rule():
    assert DEFAULTS["clean"]["sysctl"] == host_keepalive.KERNEL_DEFAULTS
    assert check(*(SYSCTL_DEFAULTS[k] for k in host_keepalive.SYSCTLS), DEFAULTS["firewall_idle_timeout"]) == []


# RabbitMQ 3.10 rabbit.app: {tcp_listen_options, [{backlog,128},{nodelay,true},{linger,{true,0}},{exit_on_close,false}]}
RABBIT_DEFAULT_LISTEN_LINES = {
    "tcp_listen_options.backlog = 128",
    "tcp_listen_options.nodelay = true",
    "tcp_listen_options.linger.on = true",
    "tcp_listen_options.linger.timeout = 0",
    "tcp_listen_options.exit_on_close = false",
}


def test_rabbitmq_conf_template_keeps_every_default_listen_option():
    defaults = DEFAULTS
    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(FORMULA / "files")), extensions=["jinja2.ext.do"])
    broker = dict(defaults["broker"], extra={"loopback_users.guest": False, "listeners.tcp.default": 5672})
    text = env.get_template("rabbitmq.conf.jinja").render(
        broker=broker, firewall_idle_timeout=3600, sysctl_config=defaults["sysctl"]["config"])
    lines = {line.strip() for line in text.splitlines() if line.strip() and not line.startswith("#")}
    assert RABBIT_DEFAULT_LISTEN_LINES | {"tcp_listen_options.keepalive = true", "heartbeat = 60",
                                          "loopback_users.guest = false", "listeners.tcp.default = 5672"} == lines


def test_installed_rabbitmq_defaults_when_present():
    apps = sorted(pathlib.Path("/usr/lib/rabbitmq/lib").glob("rabbitmq_server-*/plugins/rabbit-*/ebin/rabbit.app"))
    if not apps:
        pytest.skip("RabbitMQ not installed here (rabbit.app not found)")
    text = "".join(apps[-1].read_text().split())
    for fragment in ("{backlog,128}", "{nodelay,true}", "{linger,{true,0}}", "{exit_on_close,false}"):
        assert fragment in text, f"{apps[-1]}: default listen options changed ({fragment} missing)"
