"""
Shared test set-up. Each tier lives in its own folder and is marked after it,
so ``pytest -m lab`` (or ``make test T="-m lab"``) selects one tier.
"""

import pathlib
import sys

import pytest

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
# Plain imports of deskfleet's Salt-free logic, as Salt's loader makes them importable.
for sub in ("_utils", "_beacons"):
    sys.path.insert(0, str(CHECKOUT / sub))
sys.path.insert(0, str(CHECKOUT))

TIERS = ("unit", "functional", "integration", "cloud", "lab")


def pytest_collection_modifyitems(items):
    for item in items:
        parts = pathlib.Path(str(item.fspath)).relative_to(CHECKOUT / "tests").parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))
