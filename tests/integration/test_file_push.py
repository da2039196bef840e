"""
File distribution through the real vm master and a real desktop minion:
atomic replace, hash mismatch refused (old file intact), resumed HTTP download,
idempotence, salt:// source, batched runner.
"""

import hashlib
import os
import pathlib

import pytest

from tests.support.rangehttp import RangeServer

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]


def sha(data):
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def files(tmp_path):
    src = tmp_path / "www"
    src.mkdir()
    payload = os.urandom(3 * 1024 * 1024 + 123)
    (src / "agent.bin").write_bytes(payload)
    with RangeServer(src) as server:
        yield server, payload


def push(vm_master, *args, **kwargs):
    cli = vm_master.salt_cli(timeout=120)
    ret = cli.run("filedist.push", *args, *(f"{k}={v}" for k, v in kwargs.items()), minion_tgt="desk-0001")
    assert ret.returncode in (0, 1), ret
    return ret.data


def test_http_push_is_atomic_idempotent_and_sets_mode(vm_master, desktop_vm, files, tmp_path):
    server, payload = files
    dest = tmp_path / "deploy" / "agent.bin"
    ret = push(vm_master, server.url("agent.bin"), str(dest), sha(payload), mode="0640")
    assert ret["result"] is True and ret["copied"] is True, ret
    assert dest.read_bytes() == payload and (dest.stat().st_mode & 0o777) == 0o640
    assert not [p for p in dest.parent.iterdir() if p.name.endswith(".part")]
    again = push(vm_master, server.url("agent.bin"), str(dest), sha(payload), mode="0640")
    assert again["result"] is True and again["copied"] is False and again["changes"] == {}
    dry = push(vm_master, server.url("agent.bin"), str(tmp_path / "other.bin"), sha(payload), test=True)
    assert dry["result"] is None and not (tmp_path / "other.bin").exists()


def test_hash_mismatch_is_refused_and_old_file_kept(vm_master, desktop_vm, files, tmp_path):
    server, payload = files
    dest = tmp_path / "agent.bin"
    dest.write_bytes(b"the old, working version")
    ret = push(vm_master, server.url("agent.bin"), str(dest), "ab" * 32)
    assert ret["result"] is False and "mismatch" in ret["comment"]
    assert dest.read_bytes() == b"the old, working version"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".part")]


def test_interrupted_download_resumes(vm_master, desktop_vm, files, tmp_path):
    server, payload = files
    dest = tmp_path / "agent.bin"
    dest.write_bytes(b"old")
    server.cut_after = 1024 * 1024 + 7
    first = push(vm_master, server.url("agent.bin"), str(dest), sha(payload))
    assert first["result"] is False and "kept for resume" in first["comment"]
    assert dest.read_bytes() == b"old"  # nothing half-written went live
    kept = int(first["comment"].split("transfer failed, ")[1].split(" bytes")[0])
    assert 0 < kept <= 1024 * 1024 + 7
    second = push(vm_master, server.url("agent.bin"), str(dest), sha(payload))
    assert second["result"] is True and second["resumed_from"] == kept, second
    assert dest.read_bytes() == payload
    assert server.requests[-1][1] == f"bytes={kept}-" and server.requests[-1][2] == 206


def test_salt_source_and_batched_runner(vm_master, desktop_vm, tmp_path):
    # a file the vm master serves (its file root holds no test files)
    src = "salt://deskfleet-demo/deskfleet-demo-installer.sh"
    data = (CHECKOUT / "salt_vm" / "fileroot" / "deskfleet-demo" / "deskfleet-demo-installer.sh").read_bytes()
    dest = tmp_path / "hello.txt"
    ret = vm_master.salt_run_cli(timeout=180).run(
        "filedist.distribute", "desk-0001", src, str(dest), f"sha256={sha(data)}", "batch=1"
    )
    assert ret.returncode == 0, ret
    assert ret.data["succeeded"] == 1 and ret.data["copied"] == ["desk-0001"], ret.data
    assert dest.read_bytes() == data
    bad = vm_master.salt_run_cli(timeout=60).run("filedist.distribute", "nomatch-*", src, str(dest), f"sha256={sha(data)}")
    assert bad.returncode == 1 and "matches no accepted minion" in bad.data["error"]


def test_distribute_exits_1_when_minions_fail_and_refuses_dotdot_dest(vm_master, desktop_vm, tmp_path):
    src = "salt://deskfleet-demo/deskfleet-demo-installer.sh"
    dest = tmp_path / "hello.txt"
    run = vm_master.salt_run_cli(timeout=180).run
    # every minion fails (the hash matches no file): not a silent success
    failed = run("filedist.distribute", "desk-0001", src, str(dest), f"sha256={'ab' * 32}", "batch=1")
    assert failed.returncode == 1, failed
    assert failed.data["failed"] == ["desk-0001"] and failed.data["succeeded"] == 0
    assert "1 of 1 minions failed: desk-0001" in failed.data["error"] and not dest.exists()
    # '..' in dest: refused before anything is published, the error names the field
    sneaky = f"{tmp_path}/deploy/../../escape.txt"
    refused = run("filedist.distribute", "desk-0001", src, sneaky, f"sha256={'ab' * 32}")
    assert refused.returncode == 1 and "dest must not contain '..'" in refused.data["error"], refused
    # the minion refuses it as well (called directly, bypassing the runner)
    ret = push(vm_master, src, sneaky, "ab" * 32)
    assert ret["result"] is False and "'..'" in ret["comment"]
