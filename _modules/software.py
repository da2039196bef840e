"""
Software pushes from the catalog in pillar (``software:catalog``, vm master).

Each catalog entry has a name, a version, an installer ``source`` (``salt://``
or ``http(s)://``) with its ``sha256``, silent ``args`` and a ``detect`` rule that
says which version is installed. The top level is the Windows installer; an
optional ``linux:`` block holds the same fields for Linux minions. See
``pillar/vm.software.pillar.example``.

- Idempotent by version: when the detect rule reports the catalog version, nothing
  is run (``result: True``, ``changes: {}``). A newer installed version is left alone.
- ``test=True`` reports what would change and changes nothing.
- The installer is cached (``cp.cache_file``) and its sha256 checked *before*
  anything runs; a mismatch removes the cached file and refuses.
- After the installer exits with a success code the detect rule must report the
  catalog version, or the install counts as failed.

Windows: the silent installer runs through ``cmd.run_all`` (``msiexec /i`` for an
``.msi``); detection reads ``HKLM\\SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall\\<product code>``
``DisplayVersion`` (64-bit view, then the 32-bit one) with ``reg.read_value``, any
registry value, or ``file.version`` of an executable. Exit codes 3010 and 1641 are
success with ``reboot_required: True``. This Windows branch is covered by
functional tests that pin the exact Salt calls it makes with faked ``__salt__``
functions; it is **not** exercised on a real Windows minion in this repository's
tests. The Linux branch (``sh`` installer, version-file detection) runs for real
in the integration tests.

The rollout runner (``salt-run software.schedule``) calls :func:`install` with the
version (and sha256, if ops pinned one) frozen at schedule time, so a catalog that
changed in between is refused rather than installed.
"""

import datetime
import logging
import shlex
import time

log = logging.getLogger(__name__)

__virtualname__ = "software"
__func_alias__ = {"list_": "list"}

UNINSTALL_KEY = "SOFTWARE\\Microsoft\\Windows\\CurrentVersion\\Uninstall"
OUTPUT_TAIL = 2000

try:
    # Salt puts the synced utils (extension_modules/utils) on sys.path while it loads modules.
    import deskfleet_salt as glue
    import software_catalog as catalog
    import software_versions

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils not synced to this minion
    glue, _MISSING = None, f"software: deskfleet utils not importable (saltutil.sync_utils?): {_exc}"


def __virtual__():
    return glue.virtual(__virtualname__, __opts__) if glue else (False, _MISSING)


# ---- helpers -----------------------------------------------------------------------


def _platform():
    if __grains__.get("os_family") == "Windows":
        return "windows"
    if __grains__.get("kernel") == "Linux":
        return "linux"
    return str(__grains__.get("kernel") or "unknown").lower()


def _catalog():
    software = __pillar__.get("software") or {}
    if not isinstance(software, dict):
        return {}
    return software.get("catalog") or {}


def _entry(name):
    """(validated entry, this platform's variant) or raise CatalogError."""
    entry = catalog.catalog_entry(_catalog(), name)
    platform = _platform()
    variant = entry.get(platform) if platform in ("windows", "linux") else None
    if variant is None:
        raise catalog.CatalogError(f"{name}: the catalog has no {platform} installer")
    return entry, variant


def _tail(text):
    text = text or ""
    return text if len(text) <= OUTPUT_TAIL else "..." + text[-OUTPUT_TAIL:]


def _reg(hive, key, vname, use_32bit_registry=False):
    ret = __salt__["reg.read_value"](hive=hive, key=key, vname=vname, use_32bit_registry=use_32bit_registry)
    if isinstance(ret, dict) and ret.get("success") and ret.get("vdata") not in (None, "", "(value not set)"):
        return str(ret["vdata"]).strip()
    return None


def _read_text(path):
    if not __salt__["file.file_exists"](path):
        return None
    return __salt__["file.read"](path)


def _detect(variant):
    """The installed version by the variant's detect rule, or None."""
    rule = variant["detect"]
    if "product_code" in rule:
        key = f"{UNINSTALL_KEY}\\{rule['product_code']}"
        return _reg("HKLM", key, "DisplayVersion") or _reg("HKLM", key, "DisplayVersion", use_32bit_registry=True)
    if "registry" in rule:
        spec = rule["registry"]
        return _reg(spec["hive"], spec["key"], spec["value"], use_32bit_registry=spec["use_32bit_registry"])
    spec = rule["file_version"]
    if _platform() == "windows":
        if not __salt__["file.file_exists"](spec["path"]):
            return None
        return str(__salt__["file.version"](spec["path"]) or "").strip() or None
    text = _read_text(spec["path"])
    if text is None:
        return None
    if spec.get("pattern"):
        import re  # pylint: disable=import-outside-toplevel

        match = re.search(spec["pattern"], text)
        return match.group(1).strip() if match else None
    return text.strip() or None


def _state(installed, wanted):
    if installed is None:
        return "missing"
    cmp = software_versions.compare(installed, wanted)
    return "current" if cmp == 0 else ("newer" if cmp > 0 else "outdated")


def _fetch(variant, ret):
    """Cache the installer and check its sha256. Returns the cached path or None (ret filled in)."""
    cached = __salt__["cp.cache_file"](variant["source"], source_hash=f"sha256={variant['sha256']}")
    if not cached:
        ret["comment"] = f"could not fetch {variant['source']}"
        return None
    actual = __salt__["file.get_hash"](cached, form="sha256")
    if str(actual).lower() != variant["sha256"]:
        __salt__["file.remove"](cached)
        ret["comment"] = (
            f"sha256 mismatch for {variant['source']}: the catalog says {variant['sha256']}, the file is {actual};"
            " refused, nothing was run"
        )
        return None
    return cached


def _command(cached, args, platform):
    """The installer command: a string on Windows (CreateProcess parses it), an argv list on Linux."""
    if platform == "windows":
        if cached.lower().endswith(".msi"):
            return f'msiexec.exe /i "{cached}" {args}'.strip()
        return f'"{cached}" {args}'.strip()
    argv = shlex.split(args)
    if cached.endswith(".sh"):
        return ["/bin/sh", cached, *argv]
    __salt__["file.set_mode"](cached, "0700")
    return [cached, *argv]


def _run(cmd, variant, ret):
    """Run ``cmd``; fill ``ret`` with retcode/output. True if the exit code is a success code."""
    out = __salt__["cmd.run_all"](cmd, python_shell=False, timeout=variant["timeout"], ignore_retcode=True)
    code = out.get("retcode")
    ret["retcode"] = code
    if code not in variant["success_codes"]:
        ret["stdout"], ret["stderr"] = _tail(out.get("stdout")), _tail(out.get("stderr"))
        return False
    if code in catalog.REBOOT_CODES:
        ret["reboot_required"] = True
    return True


def _refuse(ret, comment):
    """A failed install/remove: exit 1; the return keeps its shape (``retcode`` is the installer's own)."""
    ret.update(result=False, comment=comment)
    glue.error(__context__, comment)
    return ret


def _is_test(test):
    return bool(test) or bool(__opts__.get("test", False))


def _requested(ret, name, version, sha256, not_after):
    """(entry, variant) the job may install, or :class:`CatalogError` naming why not (``ret`` filled in)."""
    if not_after is not None:
        try:
            closed = time.time() > float(not_after)
        except (TypeError, ValueError):
            raise catalog.CatalogError(f"not_after must be epoch seconds, got {str(not_after)[:40]!r}") from None
        if closed:
            ret["window_closed"] = True
            end = datetime.datetime.fromtimestamp(float(not_after), datetime.timezone.utc).isoformat(timespec="seconds")
            raise catalog.CatalogError(f"not installed: the job arrived after its window closed at {end}")
    entry, variant = _entry(name)
    if sha256 is not None:
        sha256 = catalog.check_sha256(sha256)
    ret["version"] = entry["version"]
    if version is not None and str(version) != entry["version"]:
        raise catalog.CatalogError(f"the catalog has {name} {entry['version']}, not {version}; refused")
    if sha256 is not None and sha256 != variant["sha256"]:
        raise catalog.CatalogError(
            f"sha256 {sha256} does not match the catalog's {variant['sha256']} for {name}; refused")
    return entry, variant


# ---- public ---------------------------------------------------------------------------


def install(name, version=None, sha256=None, test=False, not_after=None):
    """
    Install catalog entry ``name`` unless its version is already installed.

    name
        the catalog key (``software:catalog:<name>`` in pillar)
    version
        refuse unless the catalog has exactly this version (the rollout pins it)
    sha256
        refuse unless this platform's installer in the catalog has this sha256
    not_after
        epoch seconds (the rollout's window end): later than that, nothing runs
        and the return says ``window_closed: True``
    test
        report what would change; change nothing

    Returns ``{name, version, installed, result, changes, comment}`` plus
    ``retcode``/``reboot_required``/``stdout``/``stderr`` when an installer ran.

    CLI Example:

    .. code-block:: bash

        salt 'desk-*' software.install 7zip
        salt 'desk-*' software.install 7zip version=23.01 test=True
    """
    ret = {"name": name, "version": version, "installed": None, "result": False, "changes": {}, "comment": ""}
    try:
        entry, variant = _requested(ret, name, version, sha256, not_after)
    except catalog.CatalogError as exc:
        return _refuse(ret, str(exc))
    wanted = entry["version"]
    before = _detect(variant)
    ret["installed"] = before
    state = _state(before, wanted)
    if state == "current":
        ret.update(result=True, comment=f"{name} {wanted} is already installed")
        return ret
    if state == "newer":
        ret.update(result=True, comment=f"{name} {before} is installed, newer than {wanted}; left alone")
        return ret
    if _is_test(test):
        ret.update(
            result=None,
            changes={"installed": {"old": before, "new": wanted}},
            comment=f"{name} {wanted} would be installed (now: {before or 'not installed'})",
        )
        return ret
    cached = _fetch(variant, ret)
    if cached is None:
        return _refuse(ret, ret["comment"])
    if not _run(_command(cached, variant["args"], _platform()), variant, ret):
        return _refuse(ret, f"the {name} installer exited with {ret['retcode']}")
    after = _detect(variant)
    ret["installed"] = after
    if after is None or software_versions.compare(after, wanted) != 0:
        found = after or "not installed"
        return _refuse(ret, f"the {name} installer succeeded but detection reports {found}, not {wanted}")
    ret.update(
        result=True,
        changes={"installed": {"old": before, "new": after}},
        comment=f"{name} {wanted} installed" + (" (reboot required)" if ret.get("reboot_required") else ""),
    )
    return ret


def remove(name, test=False):
    """
    Uninstall catalog entry ``name`` if its detect rule finds it. An MSI product
    code uninstalls with ``msiexec /x``; otherwise the entry's ``remove`` says how
    (``args`` for the cached installer, or a ``cmd``).

    CLI Example:

    .. code-block:: bash

        salt 'desk-0042' software.remove 7zip
        salt 'desk-0042' software.remove 7zip test=True
    """
    ret = {"name": name, "installed": None, "result": False, "changes": {}, "comment": ""}
    try:
        variant = _entry(name)[1]
    except catalog.CatalogError as exc:
        return _refuse(ret, str(exc))
    before = _detect(variant)
    ret["installed"] = before
    if before is None:
        ret.update(result=True, comment=f"{name} is not installed")
        return ret
    remove_rule = variant["remove"]
    product_code = variant["detect"].get("product_code")
    if remove_rule is None and product_code is None:
        return _refuse(ret, f"{name}: the catalog has no remove rule and no MSI product code")
    if _is_test(test):
        ret.update(result=None, changes={"installed": {"old": before, "new": None}}, comment=f"{name} would be removed")
        return ret
    platform = _platform()
    if remove_rule is None:
        cmd = f"msiexec.exe /x {product_code} /qn /norestart"
    elif "cmd" in remove_rule:
        cmd = remove_rule["cmd"] if platform == "windows" else shlex.split(remove_rule["cmd"])
    else:
        cached = _fetch(variant, ret)
        if cached is None:
            return _refuse(ret, ret["comment"])
        cmd = _command(cached, remove_rule["args"], platform)
    if not _run(cmd, variant, ret):
        return _refuse(ret, f"the {name} uninstaller exited with {ret['retcode']}")
    after = _detect(variant)
    ret["installed"] = after
    if after is not None:
        return _refuse(ret, f"the {name} uninstaller succeeded but detection still reports {after}")
    ret.update(result=True, changes={"installed": {"old": before, "new": None}}, comment=f"{name} removed")
    return ret


def list_():
    """
    The catalog as this minion sees it: every entry with an installer for its
    platform (name, version, source, sha256, detect rule), and entries that do
    not validate with their error.

    CLI Example:

    .. code-block:: bash

        salt 'desk-0042' software.list
    """
    platform = _platform()
    found = {}
    for key, raw in sorted(_catalog().items(), key=lambda kv: str(kv[0])):
        try:
            entry = catalog.validate_entry(key, raw)
        except catalog.CatalogError as exc:
            found[key] = {"error": str(exc)}
            continue
        variant = entry.get(platform)
        if variant is None:
            continue
        found[key] = {
            "name": entry["name"],
            "version": entry["version"],
            "source": variant["source"],
            "sha256": variant["sha256"],
            "detect": sorted(variant["detect"])[0],
        }
    return found


def status(name=None):
    """
    What is installed against what the catalog wants: per entry ``wanted``,
    ``installed`` and ``state`` (``current``, ``missing``, ``outdated``, ``newer``).

    CLI Example:

    .. code-block:: bash

        salt 'desk-*' software.status
        salt 'desk-0042' software.status 7zip
    """
    names = [name] if name is not None else sorted(list_())
    found = {}
    for key in names:
        try:
            entry, variant = _entry(key)
        except catalog.CatalogError as exc:
            found[key] = {"error": str(exc)}
            continue
        installed = _detect(variant)
        found[key] = {"wanted": entry["version"], "installed": installed, "state": _state(installed, entry["version"])}
    return found
