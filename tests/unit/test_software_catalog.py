"""
The software catalog's rules without Salt (``_utils/software_catalog.py``, ``software_versions.py``):
what an entry must hold, the shipped catalog and pillar example, and version order.
"""

import hashlib
import pathlib

import jinja2
import pytest
import yaml

import software_catalog
import software_versions

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
SHA = "a" * 64


def msi(**extra):
    entry = {
        "name": "7-Zip",
        "version": "23.01",
        "source": "https://example.org/7z2301-x64.msi",
        "sha256": SHA.upper(),
        "args": "/qn /norestart",
        "detect": {"product_code": "{23170f69-40c1-2702-2301-000001000000}"},
    }
    entry.update(extra)
    return entry


def linux_only(**extra):
    variant = {
        "source": "salt://deskfleet-demo/deskfleet-demo-installer.sh",
        "sha256": SHA,
        "args": "--version-file /opt/x/VERSION --log /var/log/x.log",
        "detect": {"version_file": "/opt/x/VERSION"},
    }
    variant.update(extra)
    return {"version": "1.0.0", "linux": variant}


def test_validate_a_windows_msi_entry():
    entry = software_catalog.validate_entry("7zip", msi())
    assert entry["key"] == "7zip" and entry["name"] == "7-Zip" and entry["version"] == "23.01"
    win = entry["windows"]
    assert win["sha256"] == SHA  # lower-cased
    assert win["detect"] == {"product_code": "{23170F69-40C1-2702-2301-000001000000}"}
    assert win["success_codes"] == [0, 1641, 3010]
    assert win["timeout"] == software_catalog.DEFAULT_TIMEOUT
    assert entry["linux"] is None


def test_validate_registry_and_file_version_rules():
    reg = software_catalog.validate_entry(
        "softphone",
        msi(detect={"registry": {"key": "HKEY_LOCAL_MACHINE\\SOFTWARE\\Example\\Softphone", "value": "Version",
                                 "use_32bit_registry": True}}),
    )
    assert reg["windows"]["detect"] == {
        "registry": {"hive": "HKLM", "key": "SOFTWARE\\Example\\Softphone", "value": "Version",
                     "use_32bit_registry": True}
    }
    exe = software_catalog.validate_entry("npp", msi(detect={"file_version": "C:\\Program Files\\Notepad++\\notepad++.exe"}))
    assert exe["windows"]["detect"] == {"file_version": {"path": "C:\\Program Files\\Notepad++\\notepad++.exe"}}


def test_validate_a_linux_only_entry():
    entry = software_catalog.validate_entry("demo", linux_only())
    assert entry["windows"] is None
    assert entry["linux"]["detect"] == {"file_version": {"path": "/opt/x/VERSION", "pattern": None}}
    assert entry["linux"]["success_codes"] == [0]
    pattern = software_catalog.validate_entry(
        "demo", linux_only(detect={"file_version": {"path": "/opt/x/about", "pattern": r"version=(\S+)"}})
    )
    assert pattern["linux"]["detect"]["file_version"]["pattern"] == r"version=(\S+)"


@pytest.mark.parametrize(
    "entry, message",
    [
        (msi(version=23.01), "version must be a string (quote it"),
        (msi(sha256="abc"), "sha256 must be 64 hex"),
        (msi(sha256="g" * 64), "sha256 must be 64 hex"),
        (msi(source="ftp://example.org/x.msi"), "source must be salt://, http:// or https://"),
        (msi(source="C:\\temp\\x.msi"), "source must be salt://"),
        (msi(detect={"product_code": "23170F69"}), "product_code must look like"),
        (msi(detect={"product_code": "{X}", "file_version": "C:\\x.exe"}), "exactly one of"),
        (msi(detect={"registry": {"key": "SOFTWARE\\Vendor"}}), "must start with a hive"),
        (msi(detect={"file_version": {"path": "relative\\app.exe"}}), "absolute Windows path"),
        (msi(detect={"wmi": "x"}), "unknown detect rule"),
        (msi(sha265=SHA), "unknown field(s) sha265"),
        (msi(timeout=0), "timeout must be a positive"),
        (msi(remove={"script": "x"}), "remove must be"),
        ({"version": "1.0"}, "no installer"),
        ({"name": "x"}, "version is missing"),
        (linux_only(detect={"version_file": "relative/VERSION"}), "must be absolute"),
        (linux_only(detect={"file_version": {"path": "/x", "pattern": "no-group"}}), "exactly one group"),
        (dict(msi(), linux="not a mapping"), "linux must be a mapping"),
    ],
)
def test_validate_refuses_bad_entries(entry, message):
    with pytest.raises(software_catalog.CatalogError) as exc:
        software_catalog.validate_entry("pkg", entry)
    assert message in str(exc.value)


def test_catalog_entry_names_unknown_packages():
    with pytest.raises(software_catalog.CatalogError, match="unknown package 'nope'; the catalog has: 7zip"):
        software_catalog.catalog_entry({"7zip": msi()}, "nope")
    with pytest.raises(software_catalog.CatalogError, match="empty or missing"):
        software_catalog.catalog_entry(None, "7zip")
    assert software_catalog.hashes(software_catalog.catalog_entry({"7zip": msi()}, "7zip")) == {"windows": SHA}


def _render_sls(path, grains):
    return yaml.safe_load(jinja2.Template(path.read_text()).render(grains=grains))


def test_shipped_catalog_validates_and_pins_the_demo_installer():
    pillar = _render_sls(CHECKOUT / "pillar/vm/software.sls", {"deskfleet_lab_root": "/tmp/lab"})
    catalog = pillar["software"]["catalog"]
    demo = software_catalog.validate_entry("deskfleet-demo", catalog["deskfleet-demo"])
    installer = CHECKOUT / "salt_vm/fileroot/deskfleet-demo/deskfleet-demo-installer.sh"
    assert demo["linux"]["source"] == "salt://" + str(installer.relative_to(CHECKOUT / "salt_vm/fileroot"))
    assert demo["linux"]["sha256"] == hashlib.sha256(installer.read_bytes()).hexdigest()
    assert demo["linux"]["detect"]["file_version"]["path"] == "/tmp/lab/opt/deskfleet-demo/VERSION"
    assert f"VERSION={demo['version']}" in installer.read_text()
    for key, raw in catalog.items():
        software_catalog.validate_entry(key, raw)


def test_pillar_example_entries_validate():
    example = yaml.safe_load((CHECKOUT / "pillar/vm.software.pillar.example").read_text())
    entries = {k: software_catalog.validate_entry(k, v) for k, v in example["software"]["catalog"].items()}
    kinds = {next(iter(e["windows"]["detect"])) for e in entries.values() if e["windows"]}
    assert kinds == {"product_code", "registry", "file_version"}


@pytest.mark.parametrize(
    "left, right, expected",
    [
        ("1.0.0", "1.0.0", 0),
        ("8.6.9.0", "8.6.9", 0),
        ("1.10", "1.9", 1),
        ("23.01", "23.1", 0),
        ("1.0.1", "1.0", 1),
        ("1.0rc1", "1.0", -1),
        ("1.0.0.5", "1.0", 1),
        ("1.0a", "1.0", -1),
        ("2.0", "10.0", -1),
        ("4.2.0-beta", "4.2.0-alpha", 1),
    ],
)
def test_compare_versions(left, right, expected):
    assert software_versions.compare(left, right) == expected
    assert software_versions.compare(right, left) == -expected
