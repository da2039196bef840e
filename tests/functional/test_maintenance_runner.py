"""The maintenance runner through Salt's runner loader: role gate, request errors named, retcode 1, nothing stored."""

import pytest
import yaml

from harness import saltconf


def runners(tmp_path, role):
    import salt.config  # pylint: disable=import-outside-toplevel
    import salt.loader  # pylint: disable=import-outside-toplevel

    tmp_path.mkdir(parents=True, exist_ok=True)
    conf = saltconf.lab_master_config("vm", tmp_path / "etc")
    conf["deskfleet"]["role"] = role
    conf.pop("schedule", None)
    conf.update(root_dir=str(tmp_path / "master"), user="root")
    (tmp_path / "master.conf").write_text(yaml.safe_dump(conf))
    opts = salt.config.master_config(str(tmp_path / "master.conf"))
    return salt.loader.runner(opts), opts


def test_loaded_on_the_vm_master_only(tmp_path):
    vm, _ = runners(tmp_path / "vm", "vm")
    assert {"maintenance.plan", "maintenance.start", "maintenance.status", "maintenance.resume", "maintenance.abort"} <= set(vm)
    tc, _ = runners(tmp_path / "tc", "tc")
    assert "maintenance.plan" not in tc


@pytest.mark.parametrize(
    "kwargs, named",
    [
        ({"hosts": [], "reason": "kernel"}, "hosts must be a non-empty list"),
        ({"hosts": ["cmp-01"]}, "reason is required"),
        ({"hosts": ["cmp-01"], "reason": "kernel", "deadline": "yesterday"}, "deadline 'yesterday'"),
        ({"hosts": ["cmp-01"], "reason": "kernel", "batch": 0}, "batch must be an integer >= 1"),
    ],
)
def test_bad_requests_fail_with_the_field_named_and_touch_nothing(tmp_path, kwargs, named):
    loaded, _ = runners(tmp_path, "vm")
    for fun in ("maintenance.plan", "maintenance.start"):
        result = loaded[fun](**kwargs)
        assert result["retcode"] == 1 and named in result["error"], result
        assert loaded.pack["__context__"]["retcode"] == 1
    assert loaded["maintenance.status"]() == {"roll": None, "message": "no maintenance roll yet"}


def test_resume_and_abort_without_a_roll_fail(tmp_path):
    loaded, _ = runners(tmp_path, "vm")
    assert "no maintenance roll to resume" in loaded["maintenance.resume"]()["error"]
    assert "no active maintenance roll" in loaded["maintenance.abort"]()["error"]


def test_tick_leaves_finished_and_busy_rolls_alone(tmp_path):
    import fcntl  # pylint: disable=import-outside-toplevel
    import os  # pylint: disable=import-outside-toplevel

    import deskfleet_store  # pylint: disable=import-outside-toplevel
    import maintenance as mt  # pylint: disable=import-outside-toplevel
    import maintenance_journal as journal  # pylint: disable=import-outside-toplevel

    loaded, opts = runners(tmp_path, "vm")
    assert loaded["maintenance.tick"]() == {"roll": None, "action": "none"}
    db = journal.connect(deskfleet_store.default_path(opts, "vm"))
    try:
        rid = journal.create_roll(db, mt.validate_request({"hosts": ["cmp-01"], "reason": "k"}, mt.utcnow()), 0)
        lock = os.path.join(opts["cachedir"], "deskfleet", "maintenance.lock")
        with open(lock, "a+") as fh:  # a driver in another process holds the lock
            fcntl.flock(fh, fcntl.LOCK_EX)
            loaded["maintenance.status"]()  # (status never needs the lock)
            busy = loaded["maintenance.tick"]()
        assert busy == {"roll": rid, "action": "none", "reason": "driven by another process"}
        journal.set_roll_state(db, rid, "failed", 1, "verify failed")
        assert loaded["maintenance.tick"]() == {"roll": rid, "action": "none"}  # failed rolls wait for ops
    finally:
        db.close()


def test_a_damaged_store_is_a_store_fault_not_a_traceback(tmp_path):
    import deskfleet_store  # pylint: disable=import-outside-toplevel

    loaded, opts = runners(tmp_path, "vm")
    assert loaded["maintenance.status"]() == {"roll": None, "message": "no maintenance roll yet"}
    path = deskfleet_store.default_path(opts, "vm")
    with open(path, "wb"):
        pass  # truncated to 0 bytes while its marker says it existed
    result = loaded["maintenance.status"]()
    assert result["retcode"] == 1 and result["store_fault"] and loaded.pack["__context__"]["retcode"] == 1, result
