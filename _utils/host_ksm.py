"""
Kernel samepage merging (KSM) on a compute host: its sysfs values, the memory it saves and
the tmpfiles.d lines that turn it on at boot. Paths are passed in (tests use a temp root).
"""

import glob

from host_errors import read_text

KSM_FIELDS = (
    "run",
    "pages_to_scan",
    "sleep_millisecs",
    "pages_shared",
    "pages_sharing",
    "pages_unshared",
    "pages_volatile",
    "full_scans",
    "ksm_zero_pages",
    "use_zero_pages",
    "general_profit",
    "merge_across_nodes",
    "max_page_sharing",
)
KSM_RUN_STATES = {0: "stopped", 1: "running", 2: "unmerging"}
TMPFILES_DIRS = ("/etc/tmpfiles.d", "/run/tmpfiles.d", "/usr/lib/tmpfiles.d")


def _read_int(path):
    try:
        with open(path, encoding="ascii") as handle:
            return int(handle.read().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def read_values(base):
    """``{field: int or None}`` of the KSM sysfs directory ``base``."""
    return {field: _read_int(f"{base}/{field}") for field in KSM_FIELDS}


def saved_bytes(ksm, page_size):
    """Bytes KSM saves: (pages_sharing + ksm_zero_pages) x page size (kernel admin-guide/mm/ksm)."""
    pages = int(ksm.get("pages_sharing") or 0) + int(ksm.get("ksm_zero_pages") or 0)
    return pages * int(page_size)


def summary(values, page_size):
    """``ksm_status``'s dict from raw sysfs values (``{field: int or None}``)."""
    run = values.get("run")
    saved = saved_bytes(values, page_size)
    out = {field: values.get(field) for field in KSM_FIELDS}
    out.update(
        available=run is not None,
        run_state=KSM_RUN_STATES.get(run, "unavailable" if run is None else f"unknown ({run})"),
        page_size=int(page_size),
        saved_bytes=saved,
        saved_mb=round(saved / 1048576, 1),
    )
    return out


def persisted(root, sysfs):
    """tmpfiles.d lines (under root) that write ``<sysfs>/run`` at boot: ``[{"file", "line", "value"}]``."""
    found = []
    target = f"{sysfs.rstrip('/')}/run"
    for directory in TMPFILES_DIRS:
        for path in sorted(glob.glob(f"{root}{directory}/*.conf")):
            try:
                text = read_text(path)
            except Exception:  # pylint: disable=broad-except
                continue
            for lineno, line in enumerate(text.splitlines(), 1):
                fields = line.split()
                if len(fields) >= 7 and fields[0].startswith("w") and fields[1] == target:
                    found.append({"file": path, "line": lineno, "value": " ".join(fields[6:])})
    return found
