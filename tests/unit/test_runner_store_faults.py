"""
A store fault never reaches ops as a traceback: one store-touching function of each vm runner
(software, password, vmpool), over a store that was deleted after it was created (its marker is
still there), returns the store error with retcode 1 (``deskfleet_store.guard``). Each runner is
loaded as a plain module with its Salt dunders set by hand; the store is real SQLite.
"""

import importlib.util
import json
import pathlib

import pytest

import deskfleet_store

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


def load_runner(name, opts):
    spec = importlib.util.spec_from_file_location(f"{name}_runner_under_test", CHECKOUT / "_runners" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    mod.__opts__, mod.__context__, mod.__salt__ = opts, {}, {}
    assert mod.__virtual__() == name
    return mod


@pytest.fixture
def opts(tmp_path):
    db = tmp_path / "deskfleet.sqlite"
    # the store was created once (its marker names it) and then lost
    (tmp_path / ("deskfleet.sqlite" + deskfleet_store.MARKER_SUFFIX)).write_text(
        json.dumps({"store_id": "0123456789abcdef", "created_at": 1.0}))
    return {"id": "vm-master", "cachedir": str(tmp_path), "deskfleet": {"role": "vm", "vm": {"db": str(db)}}}


@pytest.mark.parametrize("runner, call", [
    ("software", lambda mod: mod.status()),
    ("software", lambda mod: mod.cancel("20250601-abcdef")),
    ("password", lambda mod: mod.history("desk-0001")),
    ("password", lambda mod: mod.audit()),
    ("vmpool", lambda mod: mod.reset("sales")),
])  # fmt: skip
def test_a_store_fault_is_an_error_return_with_retcode_1(opts, runner, call):
    mod = load_runner(runner, opts)
    result = call(mod)
    assert result["retcode"] == 1 and result["store_fault"] == "missing", result
    assert opts["deskfleet"]["vm"]["db"] in result["error"] and "is missing" in result["error"]
    assert mod.__context__["retcode"] == 1
