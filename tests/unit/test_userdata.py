"""
User-data retrieval logic without Salt: the profile allow-list (Windows and Linux
paths), traversal, the size cap, the desktop's claims checked against what
arrived, the quarantine (0600, outside served dirs) and the audit.
"""

import hashlib
import os

import pytest

import deskfleet_store
import userdata
import userdata_path

ROOTS = userdata_path.DEFAULT_ROOTS


def conf(tmp_path, **raw):
    return userdata.settings(dict({"max_bytes": 1000}, **raw), str(tmp_path / "cache"), 1, [str(tmp_path / "srv")])


@pytest.mark.parametrize("path, want", [
    ("/home/alice/notes.txt", "/home/alice/notes.txt"),
    ("/home//alice/./docs/a.txt", "/home/alice/docs/a.txt"),
    ("C:\\Users\\alice\\Documents\\report.xlsx", "C:\\Users\\alice\\Documents\\report.xlsx"),
    ("c:/users/Alice/Desktop/x.txt", "C:\\users\\Alice\\Desktop\\x.txt"),
])
def test_profile_paths_are_allowed_and_normalised(path, want):
    assert userdata_path.check(path, ROOTS[userdata_path.flavor_of(path)])["path"] == want


@pytest.mark.parametrize("path, why", [
    ("/home/alice/../bob/secret", "contains '..'"),
    ("/home/alice/..", "contains '..'"),
    ("C:\\Users\\alice\\..\\..\\Windows\\System32\\config\\SAM", "contains '..'"),
    ("/etc/shadow", "not a file inside a user profile"),
    ("/home/alice", "not a file inside a user profile"),  # the profile itself, not a file in it
    ("/homex/alice/a", "not a file inside a user profile"),
    ("C:\\Windows\\System32\\config\\SAM", "not a file inside a user profile"),
    ("D:\\Users\\alice\\a.txt", "not a file inside a user profile"),
    ("C:\\Users\\Public\\a.txt", "not a user's profile"),
    ("C:\\Users\\alice\\a.txt:hidden", "alternate data streams"),
    ("\\\\server\\share\\a", "not an absolute local path"),
    ("relative/a.txt", "not an absolute local path"),
    ("//home/alice/a", "not an absolute local path"),
    ("/home/alice/a\x00b", "control characters"),
    ("", "is required"),
])
def test_paths_outside_the_allow_list_are_refused(path, why):
    roots = ROOTS["windows"] + ROOTS["linux"]
    with pytest.raises(userdata_path.PathError, match=why) as exc:
        userdata_path.check(path, roots)
    assert exc.value.field == "path"


@pytest.mark.parametrize("real, ok", [
    ("/home/alice/docs/a.txt", True),
    ("/home/bob/a.txt", False),  # a link into another user's profile
    ("/etc/shadow", False),
    ("/home/alice", False),
])
def test_within_checks_the_resolved_path(real, ok):
    assert userdata_path.within(real, "/home/alice", "linux") is ok


def test_within_windows_is_case_insensitive_and_strips_the_long_prefix():
    assert userdata_path.within("\\\\?\\C:\\USERS\\ALICE\\a.txt", "C:\\Users\\alice", "windows")
    assert not userdata_path.within("C:\\Windows\\win.ini", "C:\\Users\\alice", "windows")


def test_request_checks_name_the_field(tmp_path):
    c = conf(tmp_path)
    ok = userdata.check_request("desk-0042", "/home/alice/a.txt", None, c)
    assert ok["max_bytes"] == 1000 and ok["roots"] == ["/home"] and ok["flavor"] == "linux"
    for args, field in ((("desk-*", "/home/a/b", None), "desktop"), (("desk-1", "/etc/passwd", None), "path"),
                        (("desk-1", "/home/a/b", 1001), "max_bytes"), (("desk-1", "/home/a/b", "big"), "max_bytes")):
        with pytest.raises(userdata.UserdataError) as exc:
            userdata.check_request(*args, c)
        assert exc.value.field == field


def test_settings_refuse_a_quarantine_inside_a_served_dir_and_a_cap_over_file_recv(tmp_path):
    with pytest.raises(userdata.UserdataError, match="overlaps the served directory") as exc:
        conf(tmp_path, quarantine=str(tmp_path / "srv" / "q"))
    assert exc.value.field == "userdata:quarantine"
    with pytest.raises(userdata.UserdataError) as exc:
        conf(tmp_path, max_bytes=2 * 1024 * 1024)  # file_recv_max_size is 1 MB here
    assert exc.value.field == "userdata:max_bytes"
    assert conf(tmp_path)["quarantine"] == str(tmp_path / "cache" / "deskfleet" / "userdata-quarantine")


def _received(tmp_path, data):
    path = tmp_path / "inbox" / "file"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return str(path)


def test_quarantine_stores_0600_with_sha256(tmp_path):
    data = b"quarterly figures\n"
    sha = hashlib.sha256(data).hexdigest()
    q = str(tmp_path / "q")
    done = userdata.quarantine(_received(tmp_path, data), q, "desk-1", "r" * 32, "C:\\Users\\a\\b c.txt", 100,
                               (len(data), sha))
    assert done == {"stored": os.path.join(q, "desk-1", "r" * 32 + "-b_c.txt"), "size": len(data), "sha256": sha}
    assert open(done["stored"], "rb").read() == data
    assert os.stat(done["stored"]).st_mode & 0o777 == 0o600
    assert os.stat(os.path.join(q, "desk-1")).st_mode & 0o777 == 0o700


@pytest.mark.parametrize("data, claimed, why", [
    (b"x" * 101, (101, hashlib.sha256(b"x" * 101).hexdigest()), "over the cap of 100"),
    (b"abc", (3, "0" * 64), "the desktop claimed"),
    (b"abc", (4, hashlib.sha256(b"abc").hexdigest()), "the desktop claimed"),
])
def test_quarantine_refuses_oversize_and_mismatch_and_keeps_nothing(tmp_path, data, claimed, why):
    q = tmp_path / "q"
    with pytest.raises(userdata.UserdataError, match=why):
        userdata.quarantine(_received(tmp_path, data), str(q), "desk-1", "r" * 32, "/home/a/f", 100, claimed)
    assert not list(q.rglob("*-f"))


def test_quarantine_refuses_nothing_arrived_and_a_link(tmp_path):
    with pytest.raises(userdata.UserdataError, match="nothing arrived"):
        userdata.quarantine(str(tmp_path / "none"), str(tmp_path / "q"), "d", "r" * 32, "/home/a/f", 100, (0, "0" * 64))
    os.symlink("/etc/hostname", tmp_path / "link")
    with pytest.raises(userdata.UserdataError, match="not a regular file"):
        userdata.quarantine(str(tmp_path / "link"), str(tmp_path / "q"), "d", "r" * 32, "/home/a/f", 100, (0, "0" * 64))


@pytest.mark.parametrize("answer", ["ERROR", {"size": -1, "sha256": "0" * 64}, {"size": 1, "sha256": "xyz"},
                                    {"size": True, "sha256": "0" * 64}])
def test_malformed_answers_are_refused(answer):
    with pytest.raises(userdata.UserdataError):
        userdata.check_answer(answer)


def test_audit_rows(store_db):
    conn = deskfleet_store.connect(store_db, userdata.MIGRATIONS)
    userdata.record(conn, 1.0, "a" * 32, "ops", "desk-1", "/etc/shadow", "refused", "path: outside")
    userdata.record(conn, 2.0, "b" * 32, "ops", "desk-1", "/home/a/f", "fetched", "", 3, "0" * 64, "/q/x")
    rows = userdata.audit(conn, desktop="desk-1")
    assert [(r["result"], r["path"]) for r in rows] == [("fetched", "/home/a/f"), ("refused", "/etc/shadow")]
    assert userdata.audit(conn, desktop="desk-2") == []
    conn.close()
