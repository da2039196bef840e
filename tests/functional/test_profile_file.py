"""
``profile_file.push`` (the desktop half of ``userdata.fetch``) with the module's
dunders set the Salt way and a fake ``__salt__["cp.push"]`` pinning the exact
call. Linux: real files, links, a fifo and an oversize file in a temp profile
root. Windows (simulated: no Windows here): the path rules and the junction check
run for real; ``os.path.realpath`` and the staging copy are stood in for, since
no ``C:\\Users`` exists on this box.
"""

import hashlib
import os
import pathlib
import sys
from unittest.mock import MagicMock

import pytest
from salt.exceptions import CommandExecutionError

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(CHECKOUT / "_modules"))
import profile_file  # noqa: E402  pylint: disable=wrong-import-position

sys.path.remove(str(CHECKOUT / "_modules"))
RID = "0123456789abcdef" * 2


@pytest.fixture
def pushed():
    """cp.push stand-in: records the call and the staged bytes (the real one removes the source)."""
    seen = {}

    def push(path, upload_path=None, remove_source=False):
        seen.update(path=path, upload_path=upload_path, remove_source=remove_source, data=open(path, "rb").read(),
                    mode=os.stat(path).st_mode & 0o777)
        return True

    return MagicMock(side_effect=push), seen


@pytest.fixture
def configure_loader_modules(pushed, tmp_path):
    return {profile_file: {"__grains__": {"kernel": "Linux"}, "__salt__": {"cp.push": pushed[0]},
                           "__opts__": {"cachedir": str(tmp_path / "cache")}}}


@pytest.fixture
def home(tmp_path):
    alice = tmp_path / "home" / "alice"
    (alice / "docs").mkdir(parents=True)
    (tmp_path / "home" / "bob").mkdir()
    return tmp_path / "home"


def test_linux_file_is_staged_0600_and_pushed_with_the_exact_call(home, pushed):
    data = b"notes of alice\n" * 100
    (home / "alice" / "docs" / "notes.txt").write_bytes(data)
    got = profile_file.push(str(home / "alice" / "docs" / "notes.txt"), RID, 10_000, roots=[str(home)])
    mock, seen = pushed
    staged = os.path.join(profile_file.__opts__["cachedir"], "deskfleet-userdata", RID)
    mock.assert_called_once_with(staged, upload_path=f"userdata/{RID}/file", remove_source=True)
    assert seen["data"] == data and seen["mode"] == 0o600
    assert got["sha256"] == hashlib.sha256(data).hexdigest() and got["size"] == len(data)
    assert not os.path.exists(staged)


@pytest.mark.parametrize("make, why", [
    (lambda h: os.symlink("/etc/hostname", h / "alice" / "escape"), "outside"),
    (lambda h: os.symlink(h / "bob", h / "alice" / "bob-link"), "outside"),
    (lambda h: os.mkfifo(h / "alice" / "fifo"), "not a regular file"),
    (lambda h: (h / "alice" / "big").write_bytes(b"x" * 2001), "over the cap of 2000"),
    (lambda h: (h / "alice" / "dir").mkdir(), "not a regular file"),
])
def test_linux_links_out_devices_and_oversize_are_refused(home, pushed, make, why):
    make(home)
    name = {"escape": "escape", "bob-link": "bob-link/x"}
    target = next(p.name for p in (home / "alice").iterdir() if p.name != "docs")
    (home / "bob" / "x").write_text("bob's")
    with pytest.raises(CommandExecutionError, match=why):
        profile_file.push(str(home / "alice" / name.get(target, target)), RID, 2000, roots=[str(home)])
    pushed[0].assert_not_called()


def test_linux_link_inside_the_profile_is_followed(home, pushed):
    (home / "alice" / "docs" / "real.txt").write_text("inside")
    os.symlink("docs/real.txt", home / "alice" / "link.txt")
    got = profile_file.push(str(home / "alice" / "link.txt"), RID, 100, roots=[str(home)])
    assert got["real"] == str(home / "alice" / "docs" / "real.txt") and pushed[1]["data"] == b"inside"


@pytest.mark.parametrize("args, why", [
    (("/home/alice/a", "not-hex", 10), "request"),
    (("/home/alice/a", RID, 0), "max_bytes"),
    (("/home/alice/../../etc/shadow", RID, 10), "contains '..'"),
    (("/etc/shadow", RID, 10), "not a file inside a user profile"),
])
def test_bad_arguments_are_refused_before_any_read(pushed, args, why):
    with pytest.raises(CommandExecutionError, match=why):
        profile_file.push(*args)
    pushed[0].assert_not_called()


@pytest.fixture
def windows(monkeypatch, tmp_path):
    profile_file.__grains__["kernel"] = "Windows"
    staged_bytes = b"report"

    def stage(real, max_bytes, staged):
        pathlib.Path(staged).write_bytes(staged_bytes)
        return len(staged_bytes), hashlib.sha256(staged_bytes).hexdigest()

    monkeypatch.setattr(profile_file, "_stage", stage)
    return monkeypatch


def test_windows_profile_file_is_pushed_with_the_exact_call(windows, pushed):
    windows.setattr(profile_file.os.path, "realpath", lambda p: p)
    got = profile_file.push("c:/Users/alice/Documents/report.xlsx", RID, 100)
    staged = os.path.join(profile_file.__opts__["cachedir"], "deskfleet-userdata", RID)
    pushed[0].assert_called_once_with(staged, upload_path=f"userdata/{RID}/file", remove_source=True)
    assert got["path"] == "C:\\Users\\alice\\Documents\\report.xlsx" and got["size"] == 6


def test_windows_junction_out_of_the_profile_is_refused(windows, pushed):
    windows.setattr(profile_file.os.path, "realpath", lambda p: "C:\\Windows\\System32\\config\\SAM")
    with pytest.raises(CommandExecutionError, match="outside C:\\\\Users\\\\alice"):
        profile_file.push("C:\\Users\\alice\\AppData\\sam-link", RID, 100)
    pushed[0].assert_not_called()


@pytest.mark.parametrize("path, why", [
    ("C:\\Users\\alice\\..\\bob\\secret.txt", "contains '..'"),
    ("C:\\Users\\alice\\a.txt:stream", "alternate data streams"),
    ("C:\\Windows\\win.ini", "not a file inside a user profile"),
    ("/home/alice/a.txt", "not a windows path"),
    ("\\\\fileserver\\share\\a.txt", "not an absolute local path"),
])
def test_windows_paths_outside_profiles_are_refused(windows, pushed, path, why):
    with pytest.raises(CommandExecutionError, match=why):
        profile_file.push(path, RID, 100)
    pushed[0].assert_not_called()
