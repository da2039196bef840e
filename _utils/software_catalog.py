"""
The software catalog's rules (pillar ``software:catalog``): what an entry must hold, normalised for
both platforms. Used on the master (``software.schedule`` pins an entry) and on each desktop
(``_modules/software.py`` installs it), so this file carries no store or engine code.
"""

import re


class CatalogError(ValueError):
    """A catalog entry that cannot be used as it is."""


SHA256_RE = re.compile(r"^[0-9a-fA-F]{64}$")
GUID_RE = re.compile(r"^\{[0-9A-Fa-f]{8}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{4}-[0-9A-Fa-f]{12}\}$")
SOURCE_SCHEMES = ("salt://", "http://", "https://")
HIVES = {
    "HKLM": "HKLM",
    "HKEY_LOCAL_MACHINE": "HKLM",
    "HKCU": "HKCU",
    "HKEY_CURRENT_USER": "HKCU",
    "HKU": "HKU",
    "HKEY_USERS": "HKU",
    "HKCR": "HKCR",
    "HKEY_CLASSES_ROOT": "HKCR",
}
ENTRY_KEYS = {"name", "version", "source", "sha256", "args", "detect", "remove", "timeout", "success_codes", "linux"}
VARIANT_KEYS = ENTRY_KEYS - {"name", "version", "linux"}
DEFAULT_TIMEOUT = 1800
WINDOWS_SUCCESS = (0, 3010, 1641)  # 3010: reboot required, 1641: reboot started
REBOOT_CODES = (3010, 1641)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]{0,127}$")


def check_sha256(value, what="sha256"):
    """A sha256 as 64 hex characters (any case) → lower case; else :class:`CatalogError`."""
    if not isinstance(value, str) or not SHA256_RE.match(value.strip()):
        hint = "" if isinstance(value, str) else f" ({type(value).__name__}: quote it in YAML)"
        raise CatalogError(f"{what} must be 64 hex characters, got {str(value)[:80]!r}{hint}")
    return value.strip().lower()


def _text(key, field, value, allow_empty=False):
    if isinstance(value, bool) or not isinstance(value, str):
        hint = " (quote it: YAML reads 1.10 as the number 1.1)" if field == "version" else ""
        raise CatalogError(f"{key}: {field} must be a string{hint}, got {type(value).__name__} {value!r}")
    if not value.strip() and not allow_empty:
        raise CatalogError(f"{key}: {field} is empty")
    return value.strip()


def _windows_detect(key, rule):
    if not isinstance(rule, dict) or len(rule) != 1:
        raise CatalogError(
            f"{key}: detect needs exactly one of product_code, registry, file_version; got {rule!r}"
        )
    (kind, spec), = rule.items()
    if kind == "product_code":
        code = _text(key, "detect.product_code", spec)
        if not GUID_RE.match(code):
            raise CatalogError(f"{key}: detect.product_code must look like {{XXXXXXXX-XXXX-XXXX-XXXX-XXXXXXXXXXXX}}")
        return {"product_code": code.upper()}
    if kind == "registry":
        if not isinstance(spec, dict) or "key" not in spec:
            raise CatalogError(f"{key}: detect.registry needs key (HKLM\\SOFTWARE\\...) and value")
        full = _text(key, "detect.registry.key", spec["key"])
        hive, _, path = full.replace("/", "\\").partition("\\")
        if hive.upper() not in HIVES or not path:
            raise CatalogError(f"{key}: detect.registry.key must start with a hive (HKLM, HKCU, ...): {full!r}")
        value = spec.get("value", "DisplayVersion")
        return {
            "registry": {
                "hive": HIVES[hive.upper()],
                "key": path.strip("\\"),
                "value": _text(key, "detect.registry.value", value),
                "use_32bit_registry": bool(spec.get("use_32bit_registry", False)),
            }
        }
    if kind == "file_version":
        path = spec.get("path") if isinstance(spec, dict) else spec
        path = _text(key, "detect.file_version.path", path)
        if not re.match(r"^([A-Za-z]:\\|\\\\|%[A-Za-z_]+%)", path):
            raise CatalogError(f"{key}: detect.file_version.path must be an absolute Windows path: {path!r}")
        return {"file_version": {"path": path}}
    raise CatalogError(f"{key}: unknown detect rule {kind!r} (product_code, registry, file_version)")


def _linux_detect(key, rule):
    if not isinstance(rule, dict) or len(rule) != 1:
        raise CatalogError(f"{key}: linux detect needs exactly one of version_file, file_version; got {rule!r}")
    (kind, spec), = rule.items()
    if kind == "version_file":
        spec = {"path": spec} if isinstance(spec, str) else spec
        kind = "file_version"
    if kind != "file_version":
        raise CatalogError(f"{key}: unknown linux detect rule {kind!r} (version_file, file_version)")
    path = spec.get("path") if isinstance(spec, dict) else spec
    path = _text(key, "linux detect path", path)
    if not path.startswith("/"):
        raise CatalogError(f"{key}: linux detect path must be absolute: {path!r}")
    pattern = spec.get("pattern") if isinstance(spec, dict) else None
    if pattern is not None:
        try:
            if re.compile(_text(key, "detect pattern", pattern)).groups != 1:
                raise CatalogError(f"{key}: detect pattern must have exactly one group (the version)")
        except re.error as exc:
            raise CatalogError(f"{key}: detect pattern: {exc}") from exc
    return {"file_version": {"path": path, "pattern": pattern}}


def _variant(key, raw, platform):
    unknown = set(raw) - VARIANT_KEYS
    if unknown:
        raise CatalogError(f"{key}: unknown {platform} field(s) {', '.join(sorted(unknown))}")
    for field in ("source", "sha256", "detect"):
        if field not in raw:
            raise CatalogError(f"{key}: {platform} installer needs {field}")
    source = _text(key, "source", raw["source"])
    if not source.startswith(SOURCE_SCHEMES):
        raise CatalogError(f"{key}: source must be salt://, http:// or https://, got {source[:120]!r}")
    args = raw.get("args", "")
    args = "" if args is None else _text(key, "args", args, allow_empty=True)
    timeout = raw.get("timeout", DEFAULT_TIMEOUT)
    if isinstance(timeout, bool) or not isinstance(timeout, int) or timeout <= 0:
        raise CatalogError(f"{key}: timeout must be a positive number of seconds")
    codes = raw.get("success_codes", list(WINDOWS_SUCCESS if platform == "windows" else (0,)))
    if not isinstance(codes, list) or not codes or not all(type(c) is int for c in codes):  # noqa: E721 - no bools
        raise CatalogError(f"{key}: success_codes must be a list of exit codes")
    detect = _windows_detect(key, raw["detect"]) if platform == "windows" else _linux_detect(key, raw["detect"])
    remove = raw.get("remove")
    if remove is not None:
        if not isinstance(remove, dict) or len(remove) != 1 or not set(remove) <= {"args", "cmd"}:
            raise CatalogError(f"{key}: remove must be {{args: ...}} (run the installer) or {{cmd: ...}}")
        (rkind, rval), = remove.items()
        remove = {rkind: _text(key, f"remove.{rkind}", rval, allow_empty=rkind == "args")}
    return {
        "source": source,
        "sha256": check_sha256(raw["sha256"], f"{key}: sha256"),
        "args": args,
        "detect": detect,
        "remove": remove,
        "timeout": timeout,
        "success_codes": sorted(set(codes)),
    }


def validate_entry(key, raw):
    """
    Check one catalog entry and return it normalised::

        {"key", "name", "version", "windows": {...} or None, "linux": {...} or None}

    The Windows installer is the entry's top level (source, sha256, args, detect,
    optional remove/timeout/success_codes); ``linux`` holds the same fields for
    Linux minions. At least one of them must be there.
    """
    if not isinstance(key, str) or not NAME_RE.match(key):
        raise CatalogError(f"catalog key {str(key)[:80]!r} must be letters, digits and . _ + -")
    if not isinstance(raw, dict):
        raise CatalogError(f"{key}: the entry is not a mapping")
    unknown = set(raw) - ENTRY_KEYS
    if unknown:
        raise CatalogError(f"{key}: unknown field(s) {', '.join(sorted(unknown))}")
    if "version" not in raw:
        raise CatalogError(f"{key}: version is missing")
    version = _text(key, "version", raw["version"])
    name = _text(key, "name", raw.get("name", key))
    top = {k: v for k, v in raw.items() if k in VARIANT_KEYS}
    windows = _variant(key, top, "windows") if top else None
    linux = None
    if raw.get("linux") is not None:
        if not isinstance(raw["linux"], dict):
            raise CatalogError(f"{key}: linux must be a mapping")
        linux = _variant(key, raw["linux"], "linux")
    if windows is None and linux is None:
        raise CatalogError(f"{key}: no installer (top-level source/sha256/args/detect for Windows, or linux:)")
    return {"key": key, "name": name, "version": version, "windows": windows, "linux": linux}


def catalog_entry(catalog, key):
    """The validated entry ``key`` of a ``software:catalog`` mapping, or :class:`CatalogError`."""
    if not isinstance(catalog, dict) or not catalog:
        raise CatalogError("the software catalog (pillar software:catalog) is empty or missing")
    if key not in catalog:
        known = ", ".join(sorted(str(k) for k in catalog)[:20])
        raise CatalogError(f"unknown package {str(key)[:80]!r}; the catalog has: {known}")
    return validate_entry(key, catalog[key])


def hashes(entry):
    """The installer sha256 of each platform of a validated entry."""
    return {p: entry[p]["sha256"] for p in ("windows", "linux") if entry.get(p)}
