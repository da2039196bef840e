"""
The tc_inventory runner shell, loaded as a plain module with its Salt dunders set by hand over a real
SQLite store: usage errors exit 1 before any store is opened, reads never create the store or its
directory, an empty answer says so, report refuses a missing directory.
"""

import importlib.util
import pathlib

import pytest

import tc_assets
import tc_ingest_batch
import deskfleet_store

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def runner(tmp_path):
    spec = importlib.util.spec_from_file_location("tc_inventory_runner_under_test", CHECKOUT / "_runners" / "tc_inventory.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    db = tmp_path / "state" / "tc.sqlite"
    mod.__opts__ = {"id": "tc-master", "cachedir": str(tmp_path / "cache"), "deskfleet": {"role": "tc", "tc": {"db": str(db)}}}
    mod.__context__ = {}
    assert mod.__virtual__() == "tc_inventory"
    return mod


def test_reads_without_a_store_create_nothing_and_say_so(runner, tmp_path):
    assert runner.list_(site="XYZ") == {"seats": [], "note": "no seat matches site=XYZ"}
    assert runner.list_(counts=True)["total"] == 0
    assert runner.summary()["total"] == 0
    assert runner.show("tc-0001")["retcode"] == 1 and runner.__context__["retcode"] == 1
    assert runner.report()["parameter"] == "path"
    assert sorted(p.name for p in tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, param", [
    ({"fields": "seat,colour"}, "fields"), ({"limit": "0"}, "limit"), ({"sort": "-colour"}, "sort"),
    ({"status": "asleep"}, "status"), ({"idle_over": "soon"}, "idle_over"), ({"sit": "LON"}, "sit"),
])  # fmt: skip
def test_usage_errors_name_the_parameter_and_exit_1(runner, tmp_path, kwargs, param):
    ret = runner.list_(**kwargs)
    assert ret["retcode"] == 1 and ret["error"].startswith(f"{param}: ") and runner.__context__["retcode"] == 1, ret
    assert not (tmp_path / "state").exists()


def test_rows_over_a_real_store(runner, tmp_path, store_db):
    runner.__opts__["deskfleet"]["tc"]["db"] = store_db  # a SQLite file, or a PostgreSQL DSN
    conn = deskfleet_store.connect(runner.__opts__["deskfleet"]["tc"]["db"], tc_assets.MIGRATIONS)
    now = 1_800_000_000.0
    ingest = tc_ingest_batch.Ingestor(conn, lambda *a: True, clock=lambda: now, rate_limit=100)
    for n, site in ((1, "LON"), (2, "MAN")):
        ingest.add(f"salt/beacon/tc-{n:04d}/tc_status/status",
                   {"v": 2, "epoch": 1, "seat": f"tc-{n:04d}", "seq": 1, "ts": now, "reason": "start", "changed": [],
                    "heartbeat": 300, "sig": "c2ln", "facts": {"site": site, "idle_seconds": 10.0 * n}})
    ingest.flush()
    conn.close()
    assert runner.list_(site="man", fields="seat,site") == [{"seat": "tc-0002", "site": "MAN"}]
    assert [r["seat"] for r in runner.list_(sort="-idle")] == ["tc-0002", "tc-0001"]
    full = runner.list_(fields="all", limit=1)
    assert len(full) == 1 and full[0]["last_seen"].startswith("2027-01-15T") and full[0]["last_seen"][-6] in "+-"
    assert runner.show("tc-0001")["first_seen"] == full[0]["first_seen"]
    out = tmp_path / "r.html"
    assert runner.report(path=str(out))["seats"] == 2 and out.exists()
    assert "retcode" not in runner.__context__
