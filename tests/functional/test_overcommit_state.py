"""
states/host/overcommit and _modules/host_overcommit.py through Salt (``salt-call --local`` with file_roots
``states`` + the checkout, a temp pillar root, ``root`` = a temp dir holding a fake nova.conf with other settings,
a fake /sys/kernel/mm/ksm and a fake /proc/meminfo).

What is real: Salt's state system and loader, the formula, the execution module, oslo.config + nova 34's own
option definitions reading the files the state wrote (in a subprocess), ``systemd-tmpfiles --root`` applying
the persistence file to the fake sysfs, and libvirt (test driver, ``test:///<node.xml>``) listing domains of
known memory sizes. Simulated: sysfs and /proc are plain files under the temp root; no nova-compute runs.
"""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from harness.masterless import CHECKOUT, SALT_CALL, Masterless

DROPIN = "etc/nova/nova.conf.d/60-deskfleet-overcommit.conf"
TMPFILES = "etc/tmpfiles.d/deskfleet-ksm.conf"
PREVIOUS = "var/lib/deskfleet/overcommit/ksm-previous.json"
KSM = "sys/kernel/mm/ksm"
MARKER = "#deskfleet-overcommit# "

# A compute host's nova.conf that ran over-committed (ram_allocation_ratio = 3.0), with settings that must
# survive byte for byte: a secret, `key=value` without spaces, the sample's commented default, a repeated
# MultiStrOpt ([pci] device_spec, which Salt's ini.options_present drops), a continuation line.
NOVA_CONF = textwrap.dedent("""\
    [DEFAULT]
    # Managed by the deploy tool: keep
    transport_url = rabbit://nova:s3cret@ctl:5672/
    my_ip=10.0.0.5
    #ram_allocation_ratio = <None>
    ram_allocation_ratio = 3.0
    log_dir = /var/log/nova
    enabled_apis = osapi_compute,
      metadata

    [api_database]
    connection = mysql+pymysql://nova:pw@ctl/nova_api

    [pci]
    device_spec = {"vendor_id": "8086", "product_id": "1520"}
    device_spec = {"vendor_id": "10de", "product_id": "1eb8"}

    [libvirt]
    virt_type = kvm
    # cpu_mode = host-passthrough
""")
KSM_BEFORE = {"run": "0", "pages_to_scan": "100", "sleep_millisecs": "20", "pages_shared": "4096",
              "pages_sharing": "262144", "pages_unshared": "0", "pages_volatile": "0", "full_scans": "3",
              "ksm_zero_pages": "0", "use_zero_pages": "0"}
# 16 GiB host; MemAvailable 6 GiB (37.5 %)
MEMINFO = "MemTotal:       16777216 kB\nMemFree:         1048576 kB\nMemAvailable:    6291456 kB\n"

# libvirt test driver node: four running desktops (4096 + 4096 + 3072 + 2048 = 13312 MiB) and one defined,
# shut-off spare of 4096 MiB (runstate 5 = VIR_DOMAIN_SHUTOFF)
NODE_XML = """\
<node xmlns:test='http://libvirt.org/schemas/domain/test/1.0'>
  <cpu><mhz>2400</mhz><nodes>1</nodes><sockets>1</sockets><cores>8</cores><threads>1</threads>
       <active>8</active><model>x86_64</model></cpu>
  <memory>16777216</memory>
{domains}
</node>
"""
DOMAINS = [("desk-001", 4096, True), ("desk-002", 4096, True), ("desk-003", 3072, True), ("desk-004", 2048, True),
           ("desk-spare", 4096, False)]


def _node_xml(domains):
    rows = []
    for name, mib, running in domains:
        state = "" if running else "<test:runstate>5</test:runstate>"
        rows.append(f"  <domain type='test'><name>{name}</name><memory unit='MiB'>{mib}</memory><vcpu>2</vcpu>"
                    f"<os><type>hvm</type></os>{state}</domain>")
    return NODE_XML.format(domains="\n".join(rows))


def _missing():
    if not SALT_CALL.exists():
        return f"needs salt-call next to {sys.executable}"
    return None


pytestmark = pytest.mark.skipif(_missing() is not None, reason=str(_missing()))


class Minion:
    """A masterless minion: the checkout's states + modules, a temp pillar holding deskfleet:host:overcommit."""

    def __init__(self, base, pillar=None):
        self.root = base / "root"
        (self.root / "etc/nova").mkdir(parents=True)
        (self.root / KSM).mkdir(parents=True)
        (self.root / "proc").mkdir()
        self.nova_conf = self.root / "etc/nova/nova.conf"
        self.nova_conf.write_text(NOVA_CONF)
        self.nova_conf.chmod(0o640)
        for key, value in KSM_BEFORE.items():
            (self.root / KSM / key).write_text(value + "\n")
        (self.root / "proc/meminfo").write_text(MEMINFO)
        # the modules import their logic from _utils, as a host gets it from saltutil.sync_utils
        self.salt = Masterless(base, minion_id="cmp-functional", extra_config={"utils_dirs": [str(CHECKOUT / "_utils")]})
        self.call = self.salt.call
        self.set_pillar(pillar or {})

    def set_pillar(self, pillar, key=None):
        data = dict({"root": str(self.root)}, **pillar)
        # key: the pillar key before this release (host_overcommit), to test that it still works
        self.salt.set_pillar("host_overcommit", {key: data} if key else {"deskfleet": {"host": {"overcommit": data}}})

    def ksm(self, key):
        return (self.root / KSM / key).read_text().strip()

    def snapshot(self):
        """Every file under root with its bytes and mode, and every directory."""
        found = {}
        for path in sorted(self.root.rglob("*")):
            rel = str(path.relative_to(self.root))
            found[rel] = (path.read_bytes(), path.stat().st_mode) if path.is_file() else "dir"
        return found


@pytest.fixture
def minion(tmp_path):
    return Minion(tmp_path)


def states_by_id(ret):
    return {s["__id__"]: s for s in ret.values()}


def changed(ret):
    return {sid: s["changes"] for sid, s in states_by_id(ret).items() if s["changes"]}


OSLO_VIEW = """
import json, sys
from oslo_config import cfg
from nova.conf import compute
nova_conf, conf_d = sys.argv[1], sys.argv[2]
styles = {
    # Debian/Ubuntu style unit: --config-file only; oslo still reads its default dir (here: conf_d), BEFORE the file
    "config-file": (["--config-file", nova_conf], [], [conf_d]),
    "config-file+config-dir": (["--config-file", nova_conf, "--config-dir", conf_d], [], []),
    "no-arguments": ([], [nova_conf], [conf_d]),
}
out = {}
for style, (args, files, dirs) in styles.items():
    conf = cfg.ConfigOpts()
    conf.register_opts(compute.allocation_ratio_opts + compute.resource_tracker_opts)
    conf(args, project="nova", prog="nova-compute", default_config_files=files, default_config_dirs=dirs)
    out[style] = [conf.ram_allocation_ratio, conf.cpu_allocation_ratio, conf.reserved_host_memory_mb]
print(json.dumps(out))
"""


def oslo_view(nova_conf, conf_d):
    """What nova-compute would read: nova 34's own options parsed by oslo.config, per command-line style."""
    proc = subprocess.run([sys.executable, "-c", OSLO_VIEW, str(nova_conf), str(conf_d)], capture_output=True,
                          text=True, timeout=120, check=False)
    if proc.returncode != 0 and "No module named 'nova'" in proc.stderr:
        pytest.skip("nova is not installed in this venv (requirements.lock)")
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_show_sls_paths_are_under_root(minion):
    rc, ret = minion.call("state.show_sls", "host.overcommit")
    assert rc == 0, ret
    assert set(ret) == {"host-overcommit-nova-dropin", "host-overcommit-nova-conf", "host-overcommit-nova-conf-released",
                        "host-overcommit-ksm-previous", "host-overcommit-ksm-pages_to_scan",
                        "host-overcommit-ksm-sleep_millisecs", "host-overcommit-ksm-run", "host-overcommit-ksm-tmpfiles"}
    for sid, chunk in ret.items():
        for fun in ("file", "cmd"):
            for arg in chunk.get(fun, []):
                if isinstance(arg, dict) and "name" in arg:
                    assert str(minion.root) in arg["name"], (sid, arg)


def test_apply_dry_run_idempotent_then_clean(minion):
    original = minion.snapshot()
    nova_before = minion.nova_conf.read_text()

    # dry run: nothing written
    rc, ret = minion.call("state.apply", "host.overcommit", "test=True")
    assert rc == 0, ret
    assert minion.snapshot() == original

    rc, ret = minion.call("state.apply", "host.overcommit")
    assert rc == 0, ret
    states = states_by_id(ret)
    assert all(s["result"] for s in states.values()), ret

    # nova.conf: one line commented out with the marker, everything else byte for byte, mode kept
    expected = nova_before.replace("\nram_allocation_ratio = 3.0\n", f"\n{MARKER}ram_allocation_ratio = 3.0\n")
    assert minion.nova_conf.read_text() == expected
    assert oct(minion.nova_conf.stat().st_mode & 0o777) == "0o640"
    # the secret never shows in the state's return (nova.conf diff hidden)
    assert "s3cret" not in json.dumps(ret)
    dropin = (minion.root / DROPIN).read_text()
    assert dropin.endswith("[DEFAULT]\nram_allocation_ratio = 1.2\ncpu_allocation_ratio = 2.0\n"
                           "reserved_host_memory_mb = 4096\n"), dropin

    # what nova-compute reads now, whatever its command line
    view = oslo_view(minion.nova_conf, minion.root / "etc/nova/nova.conf.d")
    assert view == {style: [1.2, 2.0, 4096] for style in view}, view
    print(f"\noslo.config + nova 34 options after host.overcommit: {view}")

    # KSM now, the record of before, persistence
    assert [minion.ksm(k) for k in ("run", "pages_to_scan", "sleep_millisecs")] == ["1", "1000", "20"]
    assert json.loads((minion.root / PREVIOUS).read_text()) == {"run": "0", "pages_to_scan": "100",
                                                                "sleep_millisecs": "20"}
    tmpfiles = (minion.root / TMPFILES).read_text().splitlines()
    assert [line for line in tmpfiles if not line.startswith("#")] == [
        "w /sys/kernel/mm/ksm/pages_to_scan - - - - 1000",
        "w /sys/kernel/mm/ksm/sleep_millisecs - - - - 20",
        "w /sys/kernel/mm/ksm/run - - - - 1",
    ]

    rc, status = minion.call("host_overcommit.ksm_status", "page_size=4096")
    assert rc == 0, status
    assert (status["run"], status["run_state"], status["pages_to_scan"], status["saved_mb"]) == (1, "running", 1000,
                                                                                                  1024.0)
    assert status["persisted"] == [{"file": str(minion.root / TMPFILES), "line": 6, "value": "1"}]

    rc, nova = minion.call("host_overcommit.nova_config")
    assert rc == 0, nova
    assert nova["ram_allocation_ratio"] == 1.2 and nova["reserved_host_memory_mb"] == 4096
    assert nova["ram_target_source"] == f"ram_allocation_ratio in {minion.root / DROPIN}:9"
    assert nova["multiple_values"] == []

    # idempotent
    rc, ret = minion.call("state.apply", "host.overcommit")
    assert rc == 0, ret
    assert changed(ret) == {}

    # clean: nova.conf byte for byte, KSM back to the recorded values, our files gone
    rc, ret = minion.call("state.apply", "host.overcommit.clean")
    assert rc == 0, ret
    assert all(s["result"] for s in ret.values()), ret
    after = minion.snapshot()
    assert {k: v for k, v in after.items() if v != "dir"} == {k: v for k, v in original.items() if v != "dir"}
    assert minion.nova_conf.read_text() == nova_before
    assert oct(minion.nova_conf.stat().st_mode & 0o777) == "0o640"
    view = oslo_view(minion.nova_conf, minion.root / "etc/nova/nova.conf.d")
    assert view == {style: [3.0, None, 512] for style in view}, view
    rc, ret = minion.call("state.apply", "host.overcommit.clean")
    assert rc == 0 and changed(ret) == {}, ret


def test_why_the_marker_drop_in_alone_loses(tmp_path):
    """nova.conf's own ram_allocation_ratio beats a nova.conf.d drop-in when the unit passes only --config-file."""
    (tmp_path / "nova.conf.d").mkdir()
    (tmp_path / "nova.conf").write_text(NOVA_CONF)
    (tmp_path / "nova.conf.d/60-deskfleet-overcommit.conf").write_text("[DEFAULT]\nram_allocation_ratio = 1.2\n")
    view = oslo_view(tmp_path / "nova.conf", tmp_path / "nova.conf.d")
    assert view["config-file"][0] == 3.0, view
    assert view["config-file+config-dir"][0] == 1.2 and view["no-arguments"][0] == 1.2, view


@pytest.mark.skipif(shutil.which("systemd-tmpfiles") is None, reason="needs systemd-tmpfiles (package systemd)")
def test_tmpfiles_persistence_after_reboot(minion):
    rc, ret = minion.call("state.apply", "host.overcommit")
    assert rc == 0, ret
    # "reboot": the kernel's defaults again (sysfs replaces a value on write; these plain files are emptied
    # first because systemd-tmpfiles' `w` does not truncate a regular file)
    for key, value in (("run", ""), ("pages_to_scan", ""), ("sleep_millisecs", "")):
        (minion.root / KSM / key).write_text(value)
    proc = subprocess.run(["systemd-tmpfiles", f"--root={minion.root}", "--create", str(minion.root / TMPFILES)],
                          capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    assert [minion.ksm(k) for k in ("run", "pages_to_scan", "sleep_millisecs")] == ["1", "1000", "20"]
    rc, ret = minion.call("state.apply", "host.overcommit.clean")
    assert rc == 0, ret


def test_clean_restores_recorded_ksm_else_turns_it_off(minion):
    (minion.root / KSM / "run").write_text("1\n")  # KSM was already on before deskfleet
    rc, ret = minion.call("state.apply", "host.overcommit")
    assert rc == 0, ret
    assert json.loads((minion.root / PREVIOUS).read_text())["run"] == "1"
    rc, ret = minion.call("state.apply", "host.overcommit.clean")
    assert rc == 0, ret
    assert (minion.ksm("run"), minion.ksm("pages_to_scan")) == ("1", "100")

    rc, ret = minion.call("state.apply", "host.overcommit")
    assert rc == 0, ret
    (minion.root / PREVIOUS).unlink()  # record lost
    rc, ret = minion.call("state.apply", "host.overcommit.clean")
    assert rc == 0, ret
    assert (minion.ksm("run"), minion.ksm("pages_to_scan")) == ("0", "1000")  # off; scan settings left as they are


@pytest.mark.parametrize(
    "case, pillar, extra_file, needle",
    [
        ("ram-zero", {"nova": {"ram_allocation_ratio": 0}}, None,
         "deskfleet:host:overcommit:nova:ram_allocation_ratio must be above 0, not 0"),
        ("cpu-negative", {"nova": {"cpu_allocation_ratio": -1.0}}, None,
         "deskfleet:host:overcommit:nova:cpu_allocation_ratio must be above 0, not -1"),
        ("ram-above-ceiling", {"nova": {"ram_allocation_ratio": 1.8}}, None,
         "ram_allocation_ratio = 1.8 is above the hard ceiling of 1.5"),
        ("high-ram-without-ksm", {"nova": {"ram_allocation_ratio": 1.8}, "allow_high_ram_ratio": True,
                                  "ksm": {"enabled": False}}, None, "and KSM is disabled (deskfleet:host:overcommit:ksm:enabled)"),
        ("reserved-too-small", {"nova": {"reserved_host_memory_mb": 256}}, None,
         "reserved_host_memory_mb must be at least 512 (nova's default), not 256"),
        ("conflicting-drop-in", {}, ("etc/nova/nova.conf.d/50-local.conf", "[DEFAULT]\nram_allocation_ratio = 2.0\n"),
         "50-local.conf:2 sets ram_allocation_ratio = 2.0 but host.overcommit sets 1.2"),
    ],
)
def test_refusals_write_nothing(minion, case, pillar, extra_file, needle):
    if extra_file:
        path = minion.root / extra_file[0]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(extra_file[1])
    minion.set_pillar(pillar)
    before = minion.snapshot()
    rc, ret = minion.call("state.apply", "host.overcommit")
    assert rc != 0, ret
    assert list(states_by_id(ret)) == ["host-overcommit-settings"], ret
    state = states_by_id(ret)["host-overcommit-settings"]
    assert state["result"] is False and state["changes"] == {}
    assert state["comment"].startswith("Refusing host.overcommit: ") and needle in state["comment"], state["comment"]
    assert state["comment"].endswith("Nothing was written.")
    assert minion.snapshot() == before
    print(f"\n{case}: {state['comment']}")


def test_high_ram_ratio_allowed_with_ksm(minion):
    minion.set_pillar({"nova": {"ram_allocation_ratio": 1.8, "disk_allocation_ratio": 1.0},
                       "allow_high_ram_ratio": True})
    rc, ret = minion.call("state.apply", "host.overcommit")
    assert rc == 0, ret
    dropin = (minion.root / DROPIN).read_text()
    assert "ram_allocation_ratio = 1.8\n" in dropin and "disk_allocation_ratio = 1.0\n" in dropin
    assert minion.ksm("run") == "1"


def test_commit_ratio_against_libvirt_test_driver(minion, tmp_path):
    node = tmp_path / "node.xml"
    node.write_text(_node_xml(DOMAINS))
    uri = f"test://{node}"

    # before: nova.conf says 3.0 and nothing about the reserve (nova's 512): the host looks fine
    rc, before = minion.call("host_overcommit.commit_ratio", f"uri={uri}", "page_size=4096")
    assert rc == 0, before
    assert (before["committed_mb"], before["usable_mb"], before["target"]) == (13312.0, 15872.0, 3.0)
    assert before["ratio"] == round(13312 / 15872, 4) == 0.8387 and before["verdict"] == "ok", before

    rc, ret = minion.call("state.apply", "host.overcommit")
    assert rc == 0, ret

    # after: target 1.2, reserve 4096: 13312 / (16384 - 4096) = 13/12 > 0.9 x 1.2 -> warning
    rc, after = minion.call("host_overcommit.commit_ratio", f"uri={uri}", "page_size=4096")
    assert rc == 0, after
    assert [d["name"] for d in after["domains"]] == ["desk-001", "desk-002", "desk-003", "desk-004"]
    assert (after["committed_mb"], after["usable_mb"], after["reserved_host_memory_mb"]) == (13312.0, 12288.0, 4096)
    assert (after["ratio"], after["target"], after["verdict"]) == (1.0833, 1.2, "warning"), after
    assert after["target_source"].endswith("60-deskfleet-overcommit.conf:9")
    assert (after["headroom_mb"], after["mem_available_pct"], after["ksm_saved_mb"]) == (1433.6, 37.5, 1024.0)
    assert after["ratio_after_ksm"] == 1.0

    # every defined desktop booted: 17408 / 12288 = 17/12 > 1.2 -> critical
    rc, worst = minion.call("host_overcommit.commit_ratio", f"uri={uri}", "include_defined=True", "page_size=4096")
    assert rc == 0, worst
    assert (worst["committed_mb"], worst["ratio"], worst["verdict"]) == (17408.0, 1.4167, "critical"), worst
    assert worst["reasons"] == ["commit ratio 1.4167 is above the target 1.2"]
    print(f"\nbefore: {before['comment']}\nafter: {after['comment']}\nall defined: {worst['comment']}")


def test_old_pillar_key_still_works_with_a_deprecation_warning(minion):
    minion.set_pillar({"nova": {"ram_allocation_ratio": 1.3}}, key="host_overcommit")
    proc = minion.salt.run("state.apply", "host.overcommit")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    states = states_by_id(json.loads(proc.stdout)["local"])
    note = states["host-overcommit-pillar-deprecated"]
    assert note["result"] is True and note["changes"] == {}
    assert "pillar key host_overcommit is deprecated" in note["comment"] and "deskfleet:host:overcommit" in note["comment"]
    assert "pillar key host_overcommit is deprecated" in " ".join(note.get("warnings", []))
    assert "pillar key host_overcommit is deprecated" in proc.stderr  # the log warning
    assert "ram_allocation_ratio = 1.3\n" in (minion.root / DROPIN).read_text()  # the old key's settings applied
    # the module reads the old key too (root from it), and warns
    proc = minion.salt.run("host_overcommit.nova_config")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["local"]["nova_dir"] == f"{minion.root}/etc/nova"
    assert "pillar key host_overcommit is deprecated" in proc.stderr
