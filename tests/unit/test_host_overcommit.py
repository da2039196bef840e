"""
Unit tests for ``_modules/host_overcommit.py`` (issue 6): /proc/meminfo and oslo-style ini parsing, the effective
nova settings and how nova 34 resolves an unset ram_allocation_ratio, the refusal rules of ``host.overcommit``,
the commit ratio and its verdict from fake meminfo + fake libvirt domains, KSM savings, and the formula's
defaults kept equal to the module's.
"""

import json
import pathlib
import subprocess
import sys

import pytest

from tests.support.loading import load
import yaml

import host_formula
import host_ksm
from host_fake_salt import READ, fake_salt
import host_libvirt
import host_memory_commit
import host_nova_conf

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
FORMULA = CHECKOUT / "states/host/overcommit"


hm = load("_modules/host_overcommit.py")

GIB_KB = 1024 * 1024
# a 16 GiB host (trimmed /proc/meminfo; values in kB)
MEMINFO = """\
MemTotal:       16777216 kB
MemFree:         1048576 kB
MemAvailable:    6291456 kB
Buffers:          102400 kB
Cached:          2097152 kB
HugePages_Total:       0
Hugepagesize:       2048 kB
"""

NOVA_CONF = """\
[DEFAULT]
# ram_allocation_ratio = 9.9
#ram_allocation_ratio = <None>
transport_url = rabbit://nova:secret@ctl:5672/
my_ip=10.0.0.5
ram_allocation_ratio = 3.0
reserved_host_memory_mb: 2048
enabled_apis = osapi_compute,
  metadata

[libvirt]
ram_allocation_ratio = 7.0
virt_type = kvm
"""


# ----------------------------------------------------------------------------- parsing


def test_parse_meminfo():
    info = host_memory_commit.parse_meminfo(MEMINFO)
    assert info["MemTotal"] == 16 * GIB_KB
    assert info["MemAvailable"] == 6 * GIB_KB
    assert info["HugePages_Total"] == 0
    assert host_memory_commit.parse_meminfo("garbage\nMemTotal: x kB\n") == {}


def test_parse_ini_oslo_style():
    entries = host_nova_conf.parse_ini(NOVA_CONF)
    assert ("DEFAULT", "transport_url", "rabbit://nova:secret@ctl:5672/", 4) in entries
    assert ("DEFAULT", "my_ip", "10.0.0.5", 5) in entries
    assert ("DEFAULT", "ram_allocation_ratio", "3.0", 6) in entries
    assert ("DEFAULT", "reserved_host_memory_mb", "2048", 7) in entries  # ':' separator
    assert ("libvirt", "ram_allocation_ratio", "7.0", 12) in entries
    keys = [key for _, key, _, _ in entries]
    assert "metadata" not in keys  # continuation line, not a key
    assert keys.count("ram_allocation_ratio") == 2  # comments are not settings


def test_parse_ini_quotes_case_and_marker():
    text = '[DEFAULT]\nRAM_Allocation_Ratio = "1.1"\n#deskfleet-overcommit# ram_allocation_ratio = 3.0\n'
    assert host_nova_conf.parse_ini(text) == [("DEFAULT", "ram_allocation_ratio", "1.1", 2)]


def test_nova_config_files_order(tmp_path):
    nova = tmp_path / "etc/nova"
    (nova / "nova.conf.d").mkdir(parents=True)
    (nova / "nova-compute.conf.d").mkdir()
    for name in ("nova.conf", "nova-compute.conf", "nova.conf.d/70-b.conf", "nova.conf.d/10-a.conf",
                 "nova.conf.d/README", "nova-compute.conf.d/05-c.conf"):
        (nova / name).write_text("[DEFAULT]\n")
    files = [str(pathlib.Path(f).relative_to(nova)) for f in host_nova_conf.config_files(str(nova), "nova-compute")]
    assert files == ["nova.conf", "nova-compute.conf", "nova.conf.d/10-a.conf", "nova.conf.d/70-b.conf",
                     "nova-compute.conf.d/05-c.conf"]
    assert host_nova_conf.config_files(str(tmp_path / "missing")) == []


def test_effective_nova_last_file_wins_and_default_section_only():
    eff = host_nova_conf.effective([
        ("/etc/nova/nova.conf", NOVA_CONF),
        ("/etc/nova/nova.conf.d/60-deskfleet-overcommit.conf", "[DEFAULT]\nram_allocation_ratio = 1.2\n"),
    ])
    ram = eff["ram_allocation_ratio"]
    assert (ram["value"], ram["source"], ram["line"]) == ("1.2", "/etc/nova/nova.conf.d/60-deskfleet-overcommit.conf", 2)
    assert [r["value"] for r in ram["set_in"]] == ["3.0", "1.2"]  # [libvirt]'s 7.0 is not nova's option
    assert eff["reserved_host_memory_mb"]["value"] == "2048"
    assert eff["cpu_allocation_ratio"]["value"] is None


# ----------------------------------------------------------------------------- nova's defaults


@pytest.mark.parametrize(
    "text, expect_target, expect_source",
    [
        ("[DEFAULT]\nram_allocation_ratio = 1.2\n", 1.2, "ram_allocation_ratio in f:2"),
        # 0.0 means "unset" to nova (nova/objects/compute_node.py): initial_ram_allocation_ratio applies
        ("[DEFAULT]\nram_allocation_ratio = 0.0\ninitial_ram_allocation_ratio = 1.3\n", 1.3,
         "initial_ram_allocation_ratio in f:3 (ram_allocation_ratio unset)"),
        ("[DEFAULT]\n", 1.0, "nova default: ram_allocation_ratio unset -> initial_ram_allocation_ratio 1.0 (nova 34)"),
    ],
)
def test_resolve_ram_target(text, expect_target, expect_source):
    eff = host_nova_conf.effective([("f", text)])
    assert host_nova_conf.resolve_ram_target(eff) == (expect_target, expect_source)


def test_resolve_reserved_default_512():
    assert host_nova_conf.resolve_reserved_mb(host_nova_conf.effective([("f", "[DEFAULT]\n")])) == (512, "nova default (512)")
    assert host_nova_conf.resolve_reserved_mb(host_nova_conf.effective([("f", "[DEFAULT]\nreserved_host_memory_mb = 4096\n")]))[0] == 4096


def test_nova_34_defaults_match():
    """NOVA_DEFAULTS against the option definitions of the nova in this venv (separate process: oslo's global CONF)."""
    code = (
        "import json\nfrom nova.conf import compute\n"
        "opts = compute.allocation_ratio_opts + compute.resource_tracker_opts\n"
        "print(json.dumps({o.name: o.default for o in opts}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=False)
    if proc.returncode != 0 and "No module named 'nova'" in proc.stderr:
        pytest.skip("nova is not installed in this venv (requirements.lock)")
    assert proc.returncode == 0, proc.stderr
    defaults = json.loads(proc.stdout)
    for key, value in host_nova_conf.NOVA_DEFAULTS.items():
        assert defaults[key] == value, key
    assert defaults["ram_allocation_ratio"] is None and defaults["initial_ram_allocation_ratio"] == 1.0


def test_conflicts_only_for_different_values():
    eff = host_nova_conf.effective([
        ("/n/nova.conf", "[DEFAULT]\nram_allocation_ratio = 3.0\n"),
        ("/n/nova-compute.conf", "[DEFAULT]\nram_allocation_ratio = 1.20\ncpu_allocation_ratio = 4\n"),
        ("/n/nova.conf.d/60-deskfleet-overcommit.conf", "[DEFAULT]\nram_allocation_ratio = 1.2\n"),
    ])
    wanted = {"ram_allocation_ratio": 1.2, "cpu_allocation_ratio": 2.0, "disk_allocation_ratio": None}
    found = host_nova_conf.conflicts(eff, wanted, ignore=("/n/nova.conf", "/n/nova.conf.d/60-deskfleet-overcommit.conf"))
    assert found == [{"key": "cpu_allocation_ratio", "source": "/n/nova-compute.conf", "line": 3, "value": "4",
                      "wanted": 2.0}]


# ----------------------------------------------------------------------------- refusal rules


def _check(**over):
    args = dict(ram_allocation_ratio=1.2, cpu_allocation_ratio=2.0, reserved_host_memory_mb=4096)
    args.update(over)
    return host_memory_commit.check_settings(**args)


@pytest.mark.parametrize(
    "over, needle",
    [
        ({"ram_allocation_ratio": 0}, "ram_allocation_ratio must be above 0, not 0"),
        ({"cpu_allocation_ratio": -1}, "cpu_allocation_ratio must be above 0, not -1"),
        ({"ram_allocation_ratio": True}, "ram_allocation_ratio must be a number"),
        ({"cpu_allocation_ratio": "lots"}, "cpu_allocation_ratio must be a number"),
        ({"disk_allocation_ratio": 0.0}, "disk_allocation_ratio must be above 0"),
        ({"reserved_host_memory_mb": 256}, "reserved_host_memory_mb must be at least 512"),
        ({"reserved_host_memory_mb": 511}, "must be at least 512 (nova's default), not 511"),
        ({"reserved_host_memory_mb": 1024.5}, "reserved_host_memory_mb must be a whole number"),
        ({"ram_allocation_ratio": 1.6}, "above the hard ceiling of 1.5 (deskfleet:host:overcommit:ram_ratio_ceiling). Lower it"),
        ({"ram_allocation_ratio": 1.6, "allow_high_ram_ratio": "yes"}, "set deskfleet:host:overcommit:allow_high_ram_ratio: true"),
        ({"ram_allocation_ratio": 1.6, "allow_high_ram_ratio": True, "ksm_enabled": False}, "KSM is disabled"),
        ({"ram_allocation_ratio": 1.3, "ram_ratio_ceiling": 1.25}, "hard ceiling of 1.25"),
        ({"pages_to_scan": 0}, "ksm:pages_to_scan must be at least 1"),
        ({"reserved_host_memory_mb": 16384, "mem_total_kb": 16 * GIB_KB}, "is not below this host's MemTotal (16384 MiB)"),
    ],
)
def test_refusals(over, needle):
    problems = _check(**over)
    assert problems and any(needle in p for p in problems), problems


@pytest.mark.parametrize(
    "over",
    [
        {},
        {"reserved_host_memory_mb": 512},
        {"ram_allocation_ratio": 1.5},  # at the ceiling is allowed
        {"ram_allocation_ratio": 1.8, "allow_high_ram_ratio": True, "ksm_enabled": True},
        {"ram_allocation_ratio": "1.1", "cpu_allocation_ratio": 4, "disk_allocation_ratio": 1.0},
        {"ksm_enabled": False, "pages_to_scan": 0},  # KSM settings are not used when KSM is left alone
    ],
)
def test_accepted(over):
    assert _check(**over) == []


# ----------------------------------------------------------------------------- verdict and report


@pytest.mark.parametrize(
    "ratio, target, available, expect",
    [
        (0.5, 1.2, 0.50, "ok"),
        (1.08, 1.2, 0.50, "ok"),  # exactly 90 % of the target
        (1.0801, 1.2, 0.50, "warning"),
        (1.2, 1.2, 0.50, "warning"),  # at the target, not above it
        (1.2001, 1.2, 0.50, "critical"),
        (0.5, 1.2, 0.0999, "warning"),
        (0.5, 1.2, 0.10, "ok"),
        (0.5, 1.2, 0.0499, "critical"),
        (None, 1.2, 0.5, "critical"),
        (0.5, 1.2, None, "ok"),
    ],
)
def test_verdict_thresholds(ratio, target, available, expect):
    state, reasons = host_memory_commit.verdict(ratio, target, available)
    assert state == expect, reasons
    assert bool(reasons) == (expect != "ok")


def _domains(*sizes_mib, active=True):
    return [{"name": f"desk-{i}", "active": active, "max_kib": mib * 1024, "current_kib": mib * 1024}
            for i, mib in enumerate(sizes_mib)]


def test_commit_report_exact_figures():
    info = host_memory_commit.parse_meminfo(MEMINFO)
    ksm = {"run": 1, "pages_sharing": 262144, "ksm_zero_pages": 0}
    report = host_memory_commit.commit_report(info, _domains(4096, 4096, 3072, 2048), 4096, 1.2, "t", "r", ksm=ksm, page_size=4096)
    # committed 13312 MiB / usable (16384 - 4096) 12288 MiB = 13/12
    assert report["committed_mb"] == 13312.0 and report["usable_mb"] == 12288.0
    assert report["ratio"] == round(13312 / 12288, 4) == 1.0833
    assert report["verdict"] == "warning" and "above 90% of the target 1.2" in report["reasons"][0]
    assert report["headroom_mb"] == round(1.2 * 12288 - 13312, 1) == 1433.6
    assert report["mem_available_pct"] == 37.5
    assert report["ksm_saved_mb"] == 1024.0  # 262144 pages x 4 KiB
    assert report["ratio_after_ksm"] == round((13312 - 1024) / 12288, 4) == 1.0
    assert report["ratio_of_target_pct"] == 90.3


def test_commit_report_ok_and_critical():
    info = host_memory_commit.parse_meminfo(MEMINFO)
    ok = host_memory_commit.commit_report(info, _domains(4096, 4096), 4096, 1.2)
    assert (ok["verdict"], ok["ratio"]) == ("ok", round(8192 / 12288, 4))
    over = host_memory_commit.commit_report(info, _domains(4096, 4096, 4096, 4096), 4096, 1.2)
    assert (over["verdict"], over["ratio"]) == ("critical", round(16384 / 12288, 4))
    assert over["headroom_mb"] < 0
    # MemAvailable alone makes it critical
    starving = host_memory_commit.commit_report({"MemTotal": 16 * GIB_KB, "MemAvailable": 800 * 1024}, _domains(1024), 4096, 1.2)
    assert starving["verdict"] == "critical" and "MemAvailable is 4.9% of MemTotal" in starving["reasons"][0]
    # nothing usable
    broke = host_memory_commit.commit_report({"MemTotal": 4 * GIB_KB}, _domains(1024), 4096, 1.2)
    assert broke["verdict"] == "critical" and broke["ratio"] is None
    with pytest.raises(ValueError):
        host_memory_commit.commit_report({}, [], 512, 1.0)


class FakeDomain:
    def __init__(self, name, max_mib, current_mib=None, active=True, vanish=False):
        self._name, self._max, self._active, self._vanish = name, max_mib * 1024, active, vanish
        self._cur = (current_mib or max_mib) * 1024

    def name(self):
        return self._name

    def isActive(self):  # noqa: N802 - libvirt's name
        if self._vanish:
            raise LookupError("Domain not found")
        return 1 if self._active else 0

    def maxMemory(self):  # noqa: N802
        return self._max

    def info(self):
        return [1 if self._active else 5, self._max, self._cur, 2, 0]


class FakeConn:
    def __init__(self, domains):
        self.domains = domains

    def listAllDomains(self, flags=0):  # noqa: N802
        return list(self.domains)


def test_domain_memory_running_and_defined():
    conn = FakeConn([FakeDomain("b", 4096, 2048), FakeDomain("a", 2048), FakeDomain("off", 8192, active=False),
                     FakeDomain("gone", 1024, vanish=True)])
    running = host_libvirt.domain_memory(conn, errors=(LookupError,))
    assert [(d["name"], d["max_kib"], d["current_kib"]) for d in running] == [("a", 2097152, 2097152),
                                                                             ("b", 4194304, 2097152)]
    everything = host_libvirt.domain_memory(conn, include_defined=True, errors=(LookupError,))
    assert sum(d["max_kib"] for d in everything) == (4096 + 2048 + 8192) * 1024


def test_ksm_summary_and_savings():
    values = {field: None for field in host_ksm.KSM_FIELDS}
    values.update(run=1, pages_sharing=1000, ksm_zero_pages=24, pages_to_scan=1000, sleep_millisecs=20)
    summary = host_ksm.summary(values, 4096)
    assert summary["run_state"] == "running" and summary["available"]
    assert summary["saved_bytes"] == 1024 * 4096 and summary["saved_mb"] == 4.0
    missing = host_ksm.summary({}, 4096)
    assert missing["run_state"] == "unavailable" and not missing["available"] and missing["saved_bytes"] == 0


# ----------------------------------------------------------------------------- formula defaults


DEFAULTS = host_formula.layers("overcommit", "Debian", READ)


def test_shipped_defaults_pass_the_refusal_rules():
    data = DEFAULTS
    assert host_memory_commit.check_settings(data["nova"]["ram_allocation_ratio"], data["nova"]["cpu_allocation_ratio"],
                             data["nova"]["reserved_host_memory_mb"], data["nova"]["disk_allocation_ratio"],
                             data["ksm"]["enabled"], data["allow_high_ram_ratio"], data["ram_ratio_ceiling"],
                             data["ksm"]["pages_to_scan"], data["ksm"]["sleep_millisecs"]) == []
    assert DEFAULTS["nova"]["service"]["name"] == "nova-compute"
    assert host_formula.layers("overcommit", "RedHat", READ)["nova"]["service"]["name"] == "openstack-nova-compute"


def _ksm_root(tmp_path, sysfs="sys/kernel/mm/ksm"):
    (tmp_path / sysfs).mkdir(parents=True)
    (tmp_path / sysfs / "run").write_text("1\n")
    (tmp_path / sysfs / "pages_sharing").write_text("256\n")
    return str(tmp_path)


def test_module_reads_the_formula_defaults_file(tmp_path, monkeypatch):
    """No Python copy of defaults.yaml: the KSM path the module reads comes from the file it fetches."""
    root = _ksm_root(tmp_path)
    fetched = []
    monkeypatch.setattr(hm, "__grains__", {"os_family": "Debian"}, raising=False)
    monkeypatch.setattr(hm, "__salt__", fake_salt({"deskfleet": {"host": {"overcommit": {"root": root}}}},
                                                  fetched=fetched), raising=False)
    status = hm.ksm_status(page_size=4096)
    assert status["sysfs"] == root + "/sys/kernel/mm/ksm" and status["run_state"] == "running"
    assert status["saved_bytes"] == 256 * 4096
    assert "salt://host/overcommit/parameters/defaults.yaml" in fetched
    moved = _ksm_root(tmp_path / "other", "ksm")
    edited = READ("host/overcommit/parameters/defaults.yaml").replace("sysfs: /sys/kernel/mm/ksm", "sysfs: /ksm")
    monkeypatch.setattr(hm, "__salt__", fake_salt({"deskfleet": {"host": {"overcommit": {"root": moved}}}},
                                                  files={"host/overcommit/parameters/defaults.yaml": edited}), raising=False)
    assert hm.ksm_status(page_size=4096)["sysfs"] == moved + "/ksm"


def test_old_keys_still_work_with_a_deprecation_warning(tmp_path, monkeypatch, caplog):
    root = _ksm_root(tmp_path)
    monkeypatch.setattr(hm, "__grains__", {"os_family": "Debian"}, raising=False)
    monkeypatch.setattr(hm, "__salt__", fake_salt({"host_overcommit": {"root": root}}), raising=False)
    with caplog.at_level("WARNING"):
        assert hm.ksm_status(page_size=4096)["sysfs"] == root + "/sys/kernel/mm/ksm"
    assert "pillar key host_overcommit is deprecated" in caplog.text and "deskfleet:host:overcommit" in caplog.text
    caplog.clear()
    monkeypatch.setattr(hm, "__salt__", fake_salt(config={"host_memory": {"root": root}}), raising=False)
    with caplog.at_level("WARNING"):
        assert hm.ksm_status(page_size=4096)["sysfs"] == root + "/sys/kernel/mm/ksm"
    assert "config key host_memory:root is deprecated" in caplog.text


def test_pillar_example_keys_exist_in_defaults():
    example = yaml.safe_load((FORMULA / "pillar.example").read_text())["deskfleet"]["host"]["overcommit"]
    defaults = DEFAULTS

    def walk(ex, de, path):
        for key, value in ex.items():
            assert key in de, f"{path}{key} is not in defaults.yaml"
            if isinstance(value, dict):
                walk(value, de[key], f"{path}{key}:")

    walk(example, defaults, "deskfleet:host:overcommit:")
