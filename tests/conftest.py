"""
Shared test set-up. Each tier lives in its own folder and is marked after it,
so ``pytest -m lab`` (or ``make test T="-m lab"``) selects one tier.
"""

import logging
import os
import pathlib
import sys

import pytest

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(CHECKOUT))
from tests.support.loading import add_code_paths  # noqa: E402  pylint: disable=wrong-import-position

# Plain imports of deskfleet's Salt-free logic, as Salt's loader makes them importable.
add_code_paths()

TIERS = ("unit", "functional", "integration", "cloud", "lab")


@pytest.fixture(autouse=True, scope="session")
def _no_deferred_salt_log_handler():
    """
    ``import salt`` parks a deferred handler on the root logger and flushes it at exit to
    a stream pytest has closed by then ("Logging error ... I/O operation on closed file").
    Keep it off for the session; pytest's own capture still sees every record.
    """
    from salt._logging import impl as salt_logging  # pylint: disable=import-outside-toplevel

    handler = salt_logging.get_temp_handler()
    if handler is None or handler not in logging.root.handlers:
        yield
        return
    logging.root.removeHandler(handler)
    try:
        yield
    finally:
        logging.root.addHandler(handler)


def pytest_collection_modifyitems(items):
    for item in items:
        parts = pathlib.Path(str(item.fspath)).relative_to(CHECKOUT / "tests").parts
        if parts and parts[0] in TIERS:
            item.add_marker(getattr(pytest.mark, parts[0]))


# CI has every prerequisite: there, a skipped test means a broken set-up, not a choice.
_SKIPPED = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session, exitstatus):
    if os.environ.get("CI") and _SKIPPED and exitstatus == 0:
        session.exitstatus = 1
        print(f"\nCI=true but {len(_SKIPPED)} test(s) were skipped, e.g. {_SKIPPED[0]}: failing the run")


@pytest.fixture(scope="session")
def salt_factories_config():
    """Every salt-factories daemon gets 180 s per start attempt (default 60): a loaded 2-core box needs it."""
    return {"start_timeout": 180}
