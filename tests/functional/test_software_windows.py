"""
The Windows branch of ``_modules/software.py``, which no minion in these tests
runs for real (there is no Windows minion here): the module is loaded
``configure_loader_modules``-style with ``__grains__`` of a Windows desktop and a
fake ``__salt__`` that records every call, and each test pins the exact Salt
calls (registry reads, cache, hash, msiexec / silent installer command line) and
their order. A last test loads the module through Salt's real loader.

What is simulated: the answers of ``reg.read_value``, ``cp.cache_file``,
``file.get_hash``, ``file.version`` and ``cmd.run_all`` on Windows. What is real:
the module code, the catalog rules, the version comparison.
"""

import pathlib

import pytest
import salt.config
import salt.loader

from tests.support.loading import load

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
SHA = "ab" * 32
CODE = "{23170F69-40C1-2702-2301-000001000000}"
UNINSTALL = f"SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\{CODE}"
CACHE = "C:\\ProgramData\\Salt Project\\Salt\\var\\cache\\salt\\minion"
CACHED_MSI = f"{CACHE}\\extrn_files\\base\\example.org\\7z2301-x64.msi"
CACHED_EXE = f"{CACHE}\\files\\base\\installers\\npp.exe"
NPP = "C:\\Program Files\\Notepad++\\notepad++.exe"

CATALOG = {
    "7zip": {
        "name": "7-Zip",
        "version": "23.01",
        "source": "https://example.org/7z2301-x64.msi",
        "sha256": SHA,
        "args": "/qn /norestart",
        "detect": {"product_code": CODE},
    },
    "npp": {
        "name": "Notepad++",
        "version": "8.6.9",
        "source": "salt://installers/npp.exe",
        "sha256": SHA,
        "args": "/S",
        "detect": {"file_version": {"path": NPP}},
        "remove": {"cmd": '"C:\\Program Files\\Notepad++\\uninstall.exe" /S'},
    },
    "softphone": {
        "version": "4.2.0",
        "source": "salt://installers/softphone-setup.exe",
        "sha256": SHA,
        "args": "/quiet",
        "detect": {"registry": {"key": "HKLM\\SOFTWARE\\Example\\Softphone", "value": "Version",
                                "use_32bit_registry": True}},
        "remove": {"args": "/uninstall /quiet"},
    },
    "linux-only": {
        "version": "1.0.0",
        "linux": {"source": "salt://x.sh", "sha256": SHA, "args": "", "detect": {"version_file": "/opt/x/VERSION"}},
    },
    "broken": {"version": 1.1, "source": "salt://x.msi", "sha256": SHA, "detect": {"product_code": CODE}},
}


software = load("_modules/software.py", "deskfleet_software_module")


class FakeSalt:
    """``__salt__`` that records each call and answers from a script (the last answer repeats)."""

    def __init__(self):
        self.calls = []
        self.answers = {}

    def answer(self, fun, *values):
        self.answers[fun] = list(values)

    def __contains__(self, fun):
        return fun in self.answers

    def __getitem__(self, fun):
        if fun not in self.answers:
            raise KeyError(f"unexpected Salt call {fun}")

        def call(*args, **kwargs):
            self.calls.append((fun, args, kwargs))
            queue = self.answers[fun]
            value = queue.pop(0) if len(queue) > 1 else queue[0]
            return value(*args, **kwargs) if callable(value) else value

        return call


def reg(vdata):
    """What ``reg.read_value`` returns: found, or the not-found shape."""
    if vdata is None:
        return {"success": False, "comment": "Cannot find key", "vdata": None}
    return {"success": True, "vdata": vdata, "vtype": "REG_SZ"}


def reg_call(key, vname, use_32bit_registry=False, hive="HKLM"):
    return ("reg.read_value", (), {"hive": hive, "key": key, "vname": vname, "use_32bit_registry": use_32bit_registry})


def run_call(cmd, timeout=1800):
    return ("cmd.run_all", (cmd,), {"python_shell": False, "timeout": timeout, "ignore_retcode": True})


@pytest.fixture
def salt_fake():
    return FakeSalt()


@pytest.fixture
def context():
    return {}


@pytest.fixture
def configure_loader_modules(salt_fake, context):
    return {
        software: {
            "__salt__": salt_fake,
            "__grains__": {"os_family": "Windows", "kernel": "Windows", "osfullname": "Microsoft Windows 11"},
            "__pillar__": {"software": {"catalog": CATALOG}},
            "__opts__": {"test": False},
            "__context__": context,
        }
    }


def test_install_msi_by_product_code(salt_fake):
    salt_fake.answer("reg.read_value", reg(None), reg(None), reg("23.01.00.0"))
    salt_fake.answer("cp.cache_file", CACHED_MSI)
    salt_fake.answer("file.get_hash", SHA.upper())
    salt_fake.answer("cmd.run_all", {"retcode": 0, "stdout": "", "stderr": ""})

    ret = software.install("7zip", version="23.01")

    assert salt_fake.calls == [
        reg_call(UNINSTALL, "DisplayVersion"),
        reg_call(UNINSTALL, "DisplayVersion", use_32bit_registry=True),
        ("cp.cache_file", ("https://example.org/7z2301-x64.msi",), {"source_hash": f"sha256={SHA}"}),
        ("file.get_hash", (CACHED_MSI,), {"form": "sha256"}),
        run_call(f'msiexec.exe /i "{CACHED_MSI}" /qn /norestart'),
        reg_call(UNINSTALL, "DisplayVersion"),
    ]
    assert ret["result"] is True
    assert ret["changes"] == {"installed": {"old": None, "new": "23.01.00.0"}}
    assert ret["installed"] == "23.01.00.0" and ret["retcode"] == 0
    assert "reboot_required" not in ret


def test_same_version_installed_changes_nothing(salt_fake, context):
    salt_fake.answer("reg.read_value", reg("23.01"))
    ret = software.install("7zip")
    assert salt_fake.calls == [reg_call(UNINSTALL, "DisplayVersion")]
    assert ret == {
        "name": "7zip",
        "version": "23.01",
        "installed": "23.01",
        "result": True,
        "changes": {},
        "comment": "7zip 23.01 is already installed",
    }
    assert "retcode" not in context


def test_found_in_the_32bit_registry_view(salt_fake):
    salt_fake.answer("reg.read_value", reg(None), reg("23.01"))
    ret = software.install("7zip")
    assert [c[2]["use_32bit_registry"] for c in salt_fake.calls] == [False, True]
    assert ret["result"] is True and ret["changes"] == {}


def test_newer_version_is_left_alone(salt_fake):
    salt_fake.answer("reg.read_value", reg("24.08"))
    ret = software.install("7zip")
    assert ret["result"] is True and ret["changes"] == {}
    assert "newer than 23.01; left alone" in ret["comment"]
    assert len(salt_fake.calls) == 1


def test_test_mode_reports_and_runs_nothing(salt_fake):
    salt_fake.answer("reg.read_value", reg("22.01"))
    ret = software.install("7zip", test=True)
    assert ret["result"] is None
    assert ret["changes"] == {"installed": {"old": "22.01", "new": "23.01"}}
    assert [c[0] for c in salt_fake.calls] == ["reg.read_value"]  # no cache, no installer


def test_test_mode_from_opts(salt_fake, configure_loader_modules):
    configure_loader_modules[software]["__opts__"]["test"] = True
    salt_fake.answer("reg.read_value", reg(None))
    assert software.install("7zip")["result"] is None
    assert "cmd.run_all" not in [c[0] for c in salt_fake.calls]


def test_sha256_mismatch_refuses_before_running_anything(salt_fake, context):
    salt_fake.answer("reg.read_value", reg(None))
    salt_fake.answer("cp.cache_file", CACHED_MSI)
    salt_fake.answer("file.get_hash", "cd" * 32)
    salt_fake.answer("file.remove", True)
    ret = software.install("7zip")
    assert salt_fake.calls[2:] == [
        ("cp.cache_file", ("https://example.org/7z2301-x64.msi",), {"source_hash": f"sha256={SHA}"}),
        ("file.get_hash", (CACHED_MSI,), {"form": "sha256"}),
        ("file.remove", (CACHED_MSI,), {}),
    ]
    assert ret["result"] is False
    assert "sha256 mismatch" in ret["comment"] and "nothing was run" in ret["comment"]
    assert context["retcode"] == 1


def test_source_that_cannot_be_fetched(salt_fake):
    salt_fake.answer("reg.read_value", reg(None))
    salt_fake.answer("cp.cache_file", False)
    ret = software.install("7zip")
    assert ret["result"] is False and "could not fetch https://example.org/7z2301-x64.msi" in ret["comment"]
    assert [c[0] for c in salt_fake.calls] == ["reg.read_value", "reg.read_value", "cp.cache_file"]


@pytest.mark.parametrize("code", [3010, 1641])
def test_reboot_exit_codes_are_success_with_reboot_required(salt_fake, code):
    salt_fake.answer("reg.read_value", reg(None), reg(None), reg("23.01"))
    salt_fake.answer("cp.cache_file", CACHED_MSI)
    salt_fake.answer("file.get_hash", SHA)
    salt_fake.answer("cmd.run_all", {"retcode": code, "stdout": "", "stderr": ""})
    ret = software.install("7zip")
    assert ret["result"] is True and ret["reboot_required"] is True
    assert ret["comment"] == "7zip 23.01 installed (reboot required)"


def test_installer_failure_reports_exit_code_and_output(salt_fake, context):
    salt_fake.answer("reg.read_value", reg(None))
    salt_fake.answer("cp.cache_file", CACHED_MSI)
    salt_fake.answer("file.get_hash", SHA)
    salt_fake.answer("cmd.run_all", {"retcode": 1603, "stdout": "x" * 5000, "stderr": "fatal error"})
    ret = software.install("7zip")
    assert ret["result"] is False and ret["retcode"] == 1603
    assert ret["comment"] == "the 7zip installer exited with 1603"
    assert ret["stderr"] == "fatal error" and len(ret["stdout"]) == software.OUTPUT_TAIL + 3
    assert salt_fake.calls[-1][0] == "cmd.run_all"  # no detection after a failed installer
    assert context["retcode"] == 1


def test_detection_must_agree_after_the_installer(salt_fake):
    salt_fake.answer("reg.read_value", reg(None))
    salt_fake.answer("cp.cache_file", CACHED_MSI)
    salt_fake.answer("file.get_hash", SHA)
    salt_fake.answer("cmd.run_all", {"retcode": 0, "stdout": "", "stderr": ""})
    ret = software.install("7zip")
    assert ret["result"] is False
    assert "detection reports not installed, not 23.01" in ret["comment"]


def test_exe_with_file_version_detection(salt_fake):
    salt_fake.answer("file.file_exists", False, True)
    salt_fake.answer("file.version", "8.6.9.0")
    salt_fake.answer("cp.cache_file", CACHED_EXE)
    salt_fake.answer("file.get_hash", SHA)
    salt_fake.answer("cmd.run_all", {"retcode": 0, "stdout": "", "stderr": ""})
    ret = software.install("npp")
    assert salt_fake.calls == [
        ("file.file_exists", (NPP,), {}),
        ("cp.cache_file", ("salt://installers/npp.exe",), {"source_hash": f"sha256={SHA}"}),
        ("file.get_hash", (CACHED_EXE,), {"form": "sha256"}),
        run_call(f'"{CACHED_EXE}" /S'),
        ("file.file_exists", (NPP,), {}),
        ("file.version", (NPP,), {}),
    ]
    assert ret["result"] is True and ret["installed"] == "8.6.9.0"  # 8.6.9.0 == 8.6.9


def test_registry_value_detection(salt_fake):
    salt_fake.answer("reg.read_value", reg("4.2.0"))
    ret = software.install("softphone")
    assert salt_fake.calls == [reg_call("SOFTWARE\\Example\\Softphone", "Version", use_32bit_registry=True)]
    assert ret["result"] is True and ret["changes"] == {}


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"version": "22.01"}, "the catalog has 7zip 23.01, not 22.01; refused"),
        ({"sha256": "cd" * 32}, "does not match the catalog's"),
        ({"sha256": "not-a-hash"}, "sha256 must be 64 hex characters"),
    ],
)
def test_pins_that_disagree_with_the_catalog_are_refused_without_any_call(salt_fake, context, kwargs, message):
    ret = software.install("7zip", **kwargs)
    assert ret["result"] is False and message in ret["comment"]
    assert salt_fake.calls == [] and context["retcode"] == 1


def test_catalog_problems_are_refused(salt_fake):
    assert "unknown package 'nope'" in software.install("nope")["comment"]
    assert "no windows installer" in software.install("linux-only")["comment"]
    assert "quote it" in software.install("broken")["comment"]
    assert salt_fake.calls == []


def test_remove_msi_by_product_code(salt_fake):
    salt_fake.answer("reg.read_value", reg("23.01"), reg(None), reg(None))
    salt_fake.answer("cmd.run_all", {"retcode": 0, "stdout": "", "stderr": ""})
    ret = software.remove("7zip")
    assert salt_fake.calls == [
        reg_call(UNINSTALL, "DisplayVersion"),
        run_call(f"msiexec.exe /x {CODE} /qn /norestart"),
        reg_call(UNINSTALL, "DisplayVersion"),
        reg_call(UNINSTALL, "DisplayVersion", use_32bit_registry=True),
    ]
    assert ret["result"] is True and ret["changes"] == {"installed": {"old": "23.01", "new": None}}


def test_remove_with_an_uninstall_command(salt_fake):
    salt_fake.answer("file.file_exists", True, False)
    salt_fake.answer("file.version", "8.6.9.0")
    salt_fake.answer("cmd.run_all", {"retcode": 0, "stdout": "", "stderr": ""})
    ret = software.remove("npp")
    assert run_call('"C:\\Program Files\\Notepad++\\uninstall.exe" /S') in salt_fake.calls
    assert ret["result"] is True


def test_remove_with_installer_args_checks_the_hash_first(salt_fake):
    cached = "C:\\cache\\softphone-setup.exe"
    salt_fake.answer("reg.read_value", reg("4.2.0"), reg(None))
    salt_fake.answer("cp.cache_file", cached)
    salt_fake.answer("file.get_hash", SHA)
    salt_fake.answer("cmd.run_all", {"retcode": 0, "stdout": "", "stderr": ""})
    ret = software.remove("softphone")
    assert [c[0] for c in salt_fake.calls] == [
        "reg.read_value", "cp.cache_file", "file.get_hash", "cmd.run_all", "reg.read_value"
    ]
    assert salt_fake.calls[3] == run_call(f'"{cached}" /uninstall /quiet')
    assert ret["result"] is True


def test_remove_when_not_installed_and_in_test_mode(salt_fake):
    salt_fake.answer("reg.read_value", reg(None))
    assert software.remove("7zip") == {
        "name": "7zip", "installed": None, "result": True, "changes": {}, "comment": "7zip is not installed"
    }
    salt_fake.answer("reg.read_value", reg("23.01"))
    ret = software.remove("7zip", test=True)
    assert ret["result"] is None and "cmd.run_all" not in [c[0] for c in salt_fake.calls]


def test_list_and_status(salt_fake):
    listed = software.list_()
    assert set(listed) == {"7zip", "npp", "softphone", "broken"}  # linux-only has no Windows installer
    assert listed["7zip"] == {"name": "7-Zip", "version": "23.01", "source": "https://example.org/7z2301-x64.msi",
                              "sha256": SHA, "detect": "product_code"}
    assert "quote it" in listed["broken"]["error"]
    salt_fake.answer("reg.read_value", reg("22.01"))
    assert software.status("7zip") == {"7zip": {"wanted": "23.01", "installed": "22.01", "state": "outdated"}}
    assert software.__func_alias__ == {"list_": "list"}


def test_the_module_loads_through_salts_loader_on_windows_grains(tmp_path):
    """Salt's real loader finds the module in module_dirs, imports the utils, passes __virtual__."""
    opts = salt.config.minion_config(None)
    opts.update(
        id="desk-0042",
        cachedir=str(tmp_path / "cache"),
        extension_modules=str(tmp_path / "extmods"),
        module_dirs=[str(CHECKOUT / "_modules")],
        utils_dirs=[str(CHECKOUT / "_utils")],
        file_client="local",
        grains={"os_family": "Windows", "kernel": "Windows"},
    )
    utils = salt.loader.utils(opts)
    mods = salt.loader.minion_mods(opts, utils=utils, whitelist=["software"],
                                   pillar={"software": {"catalog": CATALOG}})
    assert "software.install" in mods and "software.list" in mods and "software.status" in mods
    assert mods["software.list"]()["7zip"]["detect"] == "product_code"
