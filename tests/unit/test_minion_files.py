"""
Minions get only what runs on them (issue 11): the deskfleet ``_utils`` a served module, beacon or
util imports are served beside it (or the minion cannot load it), every served util is imported by
something served, and none of them is master-side code (the store, rollout engine, escrow vetting).
Read from the allow-list file roots ``salt_<role>/fileroot`` the masters serve.
"""

import ast
import pathlib

import pytest

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
UTILS = {p.stem for p in (CHECKOUT / "_utils").glob("*.py")}
MASTER_ONLY = {"deskfleet_store", "escrow_check", "escrow_rotation", "escrow_store", "rollout_engine", "rollout_lease",
               "rollout_schedule", "rollout_store", "pool_plan", "pool_cloud", "pool_events", "pool_health",
               "tc_assets", "tc_ingest_batch"}


def served(role, kind):
    folder = CHECKOUT / f"salt_{role}" / "fileroot" / kind
    return {p.stem: p for p in folder.glob("*.py")} if folder.is_dir() else {}


def deskfleet_imports(path):
    """The deskfleet ``_utils`` modules ``path`` imports, anywhere in the file (try blocks included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            found.add(node.module.split(".")[0])
    return found & UTILS


@pytest.mark.parametrize("role", ["vm", "tc"])
def test_served_code_imports_only_served_utils_and_no_master_code(role):
    utils = served(role, "_utils")
    files = {**served(role, "_modules"), **served(role, "_beacons"), **utils}
    missing = {f"{name}: {sorted(deskfleet_imports(path) - set(utils))}"
               for name, path in files.items() if deskfleet_imports(path) - set(utils)}
    assert not missing, f"served files import utils the minion does not get: {missing}"
    assert not set(utils) & MASTER_ONLY, sorted(set(utils) & MASTER_ONLY)
    imported = set().union(set(), *(deskfleet_imports(p) for p in files.values()))
    assert set(utils) <= imported, f"served but imported by nothing served: {sorted(set(utils) - imported)}"


def test_the_desktop_side_utils_import_no_master_code():
    """The files desktops run, checked by name as well: a new import of the store fails here."""
    for name in ("escrow", "software_catalog", "software_versions", "deskfleet_salt"):
        assert not deskfleet_imports(CHECKOUT / "_utils" / f"{name}.py") & MASTER_ONLY, name
