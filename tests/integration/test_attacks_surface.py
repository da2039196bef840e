"""
Attack surface of the two masters, tried with real daemons started from the
shipped ``salt_tc/master.d`` and ``salt_vm/master.d`` (issue 9, items 1 and 5):

- each master serves only its allow-list (``salt_<role>/fileroot``): nothing of
  the other master, no tests, harness, pillar sources, build output or stray files;
- a seat can neither store mine data nor read another seat's;
- a seat can forge a live ``salt`` CLI return for another seat (Salt 3008.3, not
  fixable from this tree): the reproduction shows the forgery on the bus while
  the job cache holds the real return, which is where deskfleet reads;
- deskfleet never publishes a secret to thin clients as a job argument.
"""

import ast
import fnmatch
import json
import pathlib
import threading
import uuid

import pytest
import salt.cache
import salt.utils.event
import yaml

from harness.lab import wait_for
from tests.support.loading import load

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
repro = load("tools/repro_forged_job_return.py")

TC_FILES = ["_beacons/tc_status.py", "_modules/seat_notice.py", "tc/init.sls", "tc/map.jinja",
            "tc/parameters/defaults.yaml", "tc/parameters/os_family/Debian.yaml", "top.sls"]
TC_DIRS = ["_beacons", "_modules", "tc", "tc/parameters", "tc/parameters/os_family"]
PARAMETERS = ["parameters/defaults.yaml", "parameters/os_family/Debian.yaml", "parameters/os_family/RedHat.yaml"]
HOST_STATES = [
    f"host/{formula}/{name}"
    for formula, names in {
        "boot_order": ["clean.sls", "files/dropin.conf.jinja", "init.sls", "pillar.example", "settings.jinja"],
        "dnsmasq": ["clean.sls", "files/dnsmasq-deskfleet@.service.jinja", "files/instance.conf.jinja", "init.sls",
                    "pillar.example", "settings.jinja"],
        "overcommit": ["clean.sls", "files/nova-overcommit.conf.jinja", "files/tmpfiles-ksm.conf.jinja", "init.sls",
                       "pillar.example", "settings.jinja"],
        "ovs_ports": ["init.sls", "pillar.example"],
        "rabbitmq": ["clean.sls", "files/oslo_messaging_rabbit.conf.jinja", "files/rabbitmq.conf.jinja", "init.sls",
                     "pillar.example", "settings.jinja"],
    }.items()
    for name in names + PARAMETERS
] + ["host/map.jinja"]
HOST_FORMULAS = ("boot_order", "dnsmasq", "overcommit", "ovs_ports", "rabbitmq")
VM_FILES = sorted(
    [f"_modules/{m}.py" for m in ("desktop_notice", "filedist", "host_boot_order", "host_dnsmasq", "host_overcommit",
                                   "host_ovs_ports", "host_rabbitmq", "local_password", "profile_file", "software")]
    + ["_beacons/desktop_session.py"]
    + [f"_utils/{u}.py" for u in ("deskfleet_salt", "escrow", "software_catalog", "software_versions", "userdata_path")]
    + [f"_utils/host_{u}.py" for u in ("dnsmasq_instances", "dnsmasq_options", "errors", "formula", "keepalive", "ksm",
                                        "libvirt", "memory_commit", "nova_conf", "ovsdb", "port_classes", "port_repair",
                                        "ss", "systemd_order")]
    + ["deskfleet-demo/deskfleet-demo-installer.sh", "orchestration/host_maintenance.sls",
       "orchestration/pool_vm_ready.sls", "top.sls", "win/init.sls"]
    + HOST_STATES
)
VM_DIRS = sorted(
    ["_beacons", "_modules", "_utils", "deskfleet-demo", "host", "orchestration", "win"]
    + [f"host/{f}{sub}" for f in HOST_FORMULAS for sub in ("", "/parameters", "/parameters/os_family")]
    + [f"host/{f}/files" for f in ("boot_order", "dnsmasq", "overcommit", "rabbitmq")]
)


def _call(master, minion, *args):
    ret = master.salt_cli(timeout=120).run(*args, minion_tgt=minion)
    assert ret.returncode == 0, ret
    return ret.data


@pytest.fixture
def stray_files():
    """What an untracked checkout collects: a report in build/, a key at the top."""
    name = f"stray-{uuid.uuid4().hex[:8]}"
    build = CHECKOUT / "build"
    made_build = not build.exists()
    build.mkdir(exist_ok=True)
    paths = [CHECKOUT / f"{name}.pem", build / f"{name}.html"]
    for path in paths:
        path.write_text("-----BEGIN PRIVATE KEY-----\nnot for seats\n")
    yield [str(p.relative_to(CHECKOUT)) for p in paths]
    for path in paths:
        path.unlink()
    if made_build:
        build.rmdir()


def _served(master, minion):
    """The file and dir lists a minion gets, with the master's list cache cleared first."""
    ret = master.salt_run_cli(timeout=120).run("fileserver.clear_file_list_cache")
    assert ret.returncode == 0, ret
    return sorted(_call(master, minion, "cp.list_master")), sorted(_call(master, minion, "cp.list_master_dirs"))


def _refused(master, minion, rel):
    cli = master.salt_cli(timeout=120)
    for path in (rel, f"../{rel}", f"tc/../../{rel}", f"_modules/../../../{rel}"):
        ret = cli.run("cp.get_file_str", f"salt://{path}", minion_tgt=minion)
        assert minion in str(ret.stdout) or ret.data is not None, ret  # the seat answered
        assert not ret.data, (path, ret.data)


def test_tc_master_serves_only_the_tc_allow_list(tc_master, thin_clients, stray_files):
    files, dirs = _served(tc_master, "tc-0001")
    assert files == TC_FILES
    assert dirs == TC_DIRS
    for rel in stray_files + ["pillar/tc/tc_status.sls", "salt_vm/top.sls", "harness/demo.py", "_runners/vmpool.py",
                              "tc/pillar.example"]:
        _refused(tc_master, "tc-0001", rel)
    # the beacon still syncs through the allow-list
    synced = _call(tc_master, "tc-0001", "saltutil.sync_all", "refresh=True")
    assert not synced.get("modules") and not synced.get("utils"), synced
    assert "tc_status" in _call(tc_master, "tc-0001", "beacons.list_available")
    # the tc formula renders on the seat from what is served (map loader, parameters) and applies
    applied = _call(tc_master, "tc-0001", "state.apply", "tc")
    assert sorted(applied) == ["saltutil_|-tc-sync-beacons_|-tc-sync-beacons_|-sync_beacons",
                               "saltutil_|-tc-sync-modules_|-tc-sync-modules_|-sync_modules"], applied
    assert all(r["result"] is True for r in applied.values()), applied
    assert _call(tc_master, "tc-0001", "sys.list_functions", "host_ovs_ports") == []


def test_vm_master_serves_only_the_vm_allow_list(vm_master, desktop_vm, stray_files):
    files, dirs = _served(vm_master, "desk-0001")
    assert files == VM_FILES
    assert dirs == VM_DIRS
    for rel in stray_files + ["pillar/vm/passwords.sls", "salt_tc/top.sls", "_beacons/tc_status.py", "tests/conftest.py",
                              "_utils/tc_assets.py", "bench/ingest.py"]:
        _refused(vm_master, "desk-0001", rel)
    # modules and the utils they import still sync: the escrow-backed module loads on the desktop
    _call(vm_master, "desk-0001", "saltutil.sync_all", "refresh=True")
    assert _call(vm_master, "desk-0001", "sys.list_functions", "local_password") == [
        "local_password.commit", "local_password.last", "local_password.policy", "local_password.prepare",
        "local_password.rotate",
    ]


def test_a_seat_cannot_store_mine_data(tc_master, thin_clients):
    assert _call(tc_master, "tc-0001", "mine.send", "test.arg", "x" * 1024) is True
    cache = salt.cache.factory(tc_master.config)
    try:
        assert cache.fetch("mine", "tc-0001") == {}
        assert _call(tc_master, "tc-0002", "mine.get", "tc-0001", "test.arg") == {}
    finally:
        cache.flush("mine", "tc-0001")
    assert tc_master.config["minion_data_cache"] is False


def test_a_seat_cannot_read_another_seats_mine(tc_master, thin_clients):
    """Even data already in the cache (stored before, or by the master) is not handed to a seat."""
    cache = salt.cache.factory(tc_master.config)
    cache.store("mine", "tc-0001", {"grains.item": {"serial": "TC000001"}})
    try:
        assert _call(tc_master, "tc-0002", "mine.get", "tc-0001", "grains.item") == {}
        assert _call(tc_master, "tc-0002", "mine.get", "*", "grains.item") == {}
    finally:
        cache.flush("mine", "tc-0001")


def test_forged_job_return_reaches_the_live_cli_but_not_the_job_cache(tc_master, thin_clients):
    """
    The reproduction for an upstream report (tools/repro_forged_job_return.py): tc-0002
    forges tc-0001's return. The live CLI shows the forgery; the bus event's real sender is
    tc-0002; ``jobs.lookup_jid`` (the authenticated return path) has tc-0001's own ``True``.
    """
    result = repro.reproduce(tc_master.config_dir, thin_clients["tc-0002"].config_dir, "tc-0001", sleep=20, timeout=240)
    assert result["attacker_event_send_rc"] == 0, result
    assert result["bus_event"]["sender_id"] == "tc-0002", result
    assert result["live_cli"] == repro.FORGED, result
    assert result["job_cache"] is True, result
    assert result["reproduced"] is True


class Publications(threading.Thread):
    """Every ``salt/job/*/new`` on a master's bus, from the moment it is ready."""

    def __init__(self, opts):
        super().__init__(daemon=True)
        self.opts, self.seen, self.ready_tag = opts, [], f"deskfleet/test/listening/{uuid.uuid4().hex}"
        self.ready, self.done = threading.Event(), threading.Event()

    def run(self):
        with salt.utils.event.get_master_event(self.opts, self.opts["sock_dir"], listen=True) as bus:
            bus.connect_pub(timeout=30)
            while not self.done.is_set():
                event = bus.get_event(wait=0.5, full=True)
                if not event:
                    continue
                if event["tag"] == self.ready_tag:
                    self.ready.set()
                elif fnmatch.fnmatch(event["tag"], "salt/job/*/new"):
                    self.seen.append(event["data"])

    def start_listening(self):
        self.start()

        def ping():
            with salt.utils.event.get_master_event(self.opts, self.opts["sock_dir"], listen=False) as bus:
                bus.fire_event({}, self.ready_tag)
            return self.ready.wait(1)

        wait_for(ping, timeout=300, what="the bus listener")


def _secret_values(tree, path=""):
    """Pillar leaves under keys that name a secret."""
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _secret_values(value, f"{path}:{key}")
    elif isinstance(tree, list):
        for value in tree:
            yield from _secret_values(value, path)
    elif isinstance(tree, str) and any(word in path.lower() for word in ("secret", "token", "pass", "key", "enroll")):
        yield tree


def _enrollment_secrets(tokens_dir, thin_clients):
    """Each seat's token as ops got it, and the enrollment grain its device derived from it."""
    found = set()
    found.update(path.read_text().strip() for path in tokens_dir.glob("*.token"))
    for factory in thin_clients.values():
        grains = pathlib.Path(factory.config_dir) / "grains"
        if grains.exists():
            found.update(str(v) for v in (yaml.safe_load(grains.read_text()) or {}).values())
    assert found, "no token or enrollment grain found to look for"
    return found


def test_no_secret_is_ever_a_job_argument_to_thin_clients(tc_master, thin_clients, enroll_tokens, tmp_path):
    """deskfleet's tc flows, watched on the tc master's bus: no publication carries a secret."""
    listener = Publications(tc_master.config)
    listener.start_listening()
    try:
        _call(tc_master, "tc-*", "saltutil.sync_all")
        _call(tc_master, "tc-*", "saltutil.refresh_pillar", "wait=True")
        pillar = _call(tc_master, "tc-0001", "pillar.items")
        applied = tc_master.salt_cli(timeout=180).run("state.apply", minion_tgt="tc-*")
        assert applied.returncode == 0, applied
        run = tc_master.salt_run_cli(timeout=120)
        for fun in ("tc_inventory.list", "tc_inventory.summary", f"tc_inventory.report path={tmp_path / 'r.html'}"):
            ret = run.run(*fun.split())
            assert ret.returncode == 0, ret
        assert run.run("tc_inventory.show", "tc-0001").returncode == 0
    finally:
        listener.done.set()
        listener.join(timeout=10)
    secrets = {*_enrollment_secrets(enroll_tokens, thin_clients), *_secret_values(pillar)}
    funs = {pub.get("fun") for pub in listener.seen}
    assert {"saltutil.sync_all", "saltutil.refresh_pillar", "state.apply"} <= funs, funs
    for pub in listener.seen:
        published = json.dumps([pub.get("arg"), pub.get("tgt"), pub.get("fun")], default=str)
        leaked = [s for s in secrets if s and s in published]
        assert not leaked, (pub.get("fun"), pub.get("jid"))


# What reads job returns off the bus (forgeable by any seat) rather than the job cache.
BUS_READERS = {"cmd", "cmd_cli", "cmd_iter", "cmd_iter_no_block", "cmd_batch", "cmd_full_return", "cmd_subset",
               "get_cli_returns", "get_cli_event_returns", "get_iter_returns", "get_event_iter_returns", "get_returns"}
PUBLISHERS = BUS_READERS | {"cmd_async", "run_job", "pub"}


def _tc_side_sources(tc_master):
    import salt.loader  # pylint: disable=import-outside-toplevel

    runners = salt.loader.runner(tc_master.config)
    names = {key.split(".", 1)[0] for key in runners}
    ours = sorted(p for p in (CHECKOUT / "_runners").glob("*.py") if p.stem in names)
    engines = [CHECKOUT / "_engines" / f"{next(iter(e))}.py" for e in tc_master.config.get("engines", [])]
    return ours + [p for p in engines if p.exists()]


def test_tc_side_runners_and_engines_read_no_job_returns_and_publish_no_secrets(tc_master):
    """
    Static check over every deskfleet runner the tc master loads and every engine it runs:
    no LocalClient call that takes returns off the bus, and nothing published with
    an argument built from a secret (pillar, enrollment grain, autosign files).
    """
    sources = _tc_side_sources(tc_master)
    assert {p.stem for p in sources} >= {"tc_inventory", "tc_ingest"}
    for path in sources:
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)):
                continue
            assert node.func.attr not in BUS_READERS, f"{path.name}:{node.lineno} reads returns off the bus ({node.func.attr})"
            if node.func.attr in PUBLISHERS:
                text = ast.unparse(node).lower()
                assert not any(w in text for w in ("secret", "enroll", "pillar", "autosign", "token", "password")), (
                    f"{path.name}:{node.lineno} publishes a secret-looking argument"
                )
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("salt/job/"):
                pytest.fail(f"{path.name}:{node.lineno} listens for job events: use the job cache (jobs.lookup_jid)")
