"""
``filedist.push`` run by several jobs at once into one directory (a re-run while the
first is still downloading, or two desktops on one disk): they take turns on a
directory lock, one places the file, the others find it there. The source is a real
HTTP server on loopback that streams slowly enough for the downloads to overlap.
"""

import concurrent.futures
import fcntl
import hashlib
import http.server
import os
import threading
import time

import pytest

from tests.support.loading import load

filedist = load("_modules/filedist.py")

PAYLOAD = os.urandom(2 * 1024 * 1024)
SHA = hashlib.sha256(PAYLOAD).hexdigest()


class SlowFile(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.send_header("Content-Length", str(len(PAYLOAD)))
        self.end_headers()
        for start in range(0, len(PAYLOAD), 64 * 1024):
            self.wfile.write(PAYLOAD[start:start + 64 * 1024])
            time.sleep(0.005)  # a slow link: the pushes overlap

    def log_message(self, *_args):
        pass


@pytest.fixture(scope="module")
def url():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), SlowFile)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/installer.bin"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def configure_loader_modules():
    return {filedist: {"__opts__": {"id": "desk-1"}, "__salt__": {}}}


def test_concurrent_pushes_to_one_path_take_turns_and_one_copies(url, tmp_path):
    dest = str(tmp_path / "drop" / "installer.bin")
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: filedist.push(url, dest, SHA, mode="0640"), range(4)))
    assert all(r["result"] is True for r in results), results
    assert sorted(r["copied"] for r in results) == [False, False, False, True], results
    assert [r["comment"] for r in results if not r["copied"]] == ["already has this content"] * 3
    with open(dest, "rb") as fh:
        assert fh.read() == PAYLOAD
    assert os.listdir(tmp_path / "drop") == ["installer.bin"]  # no partial file, no lock file
    assert oct(os.stat(dest).st_mode & 0o777) == "0o640"


def test_a_push_that_cannot_get_its_turn_says_so_and_changes_nothing(url, tmp_path, monkeypatch):
    monkeypatch.setattr(filedist, "LOCK_WAIT", 1)
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another push holds the directory
        ret = filedist.push(url, str(tmp_path / "installer.bin"), SHA)
    finally:
        os.close(fd)
    assert ret["result"] is False and f"another push into {tmp_path} held it for over 1 s" in ret["comment"], ret
    assert os.listdir(tmp_path) == []


def test_dry_run_takes_no_lock(url, tmp_path):
    fd = os.open(tmp_path, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        ret = filedist.push(url, str(tmp_path / "installer.bin"), SHA, test=True)
    finally:
        os.close(fd)
    assert ret["result"] is None and ret["comment"] == f"would place {url}", ret
