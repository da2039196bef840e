"""
``seat_notice.show`` on a thin client: the notice file the kiosk session watches,
written atomically under the seat's root (a temp dir here), readable by the kiosk
user; bad input leaves the last notice untouched.
"""

import json
import pathlib
import sys
import time

import pytest
from salt.exceptions import CommandExecutionError

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(CHECKOUT / "_modules"))
import seat_notice  # noqa: E402  pylint: disable=wrong-import-position

sys.path.remove(str(CHECKOUT / "_modules"))


@pytest.fixture
def configure_loader_modules(tmp_path):
    return {seat_notice: {"__grains__": {"kernel": "Linux", "deskfleet_lab_root": str(tmp_path)}}}


def test_notice_file_is_written_for_the_kiosk(tmp_path):
    before = time.time()
    got = seat_notice.show("Desktops in LON are down; IT is on it.", seconds=1800)
    path = tmp_path / "run" / "deskfleet" / "seat-notice.json"
    assert got == {"sent": True, "method": "notice-file", "path": str(path)}
    body = json.loads(path.read_text())
    assert body["text"] == "Desktops in LON are down; IT is on it." and body["seconds"] == 1800
    assert before <= body["shown_at"] <= time.time() and body["expires_at"] == body["shown_at"] + 1800
    assert path.stat().st_mode & 0o777 == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["seat-notice.json"]


@pytest.mark.parametrize("text, seconds", [("", 60), ("a\nb", 60), ("x" * 1025, 60), ("ok", 0), ("ok", "60")])
def test_bad_input_keeps_the_last_notice(tmp_path, text, seconds):
    seat_notice.show("first", seconds=60)
    path = tmp_path / "run" / "deskfleet" / "seat-notice.json"
    with pytest.raises(CommandExecutionError, match="seat_notice"):
        seat_notice.show(text, seconds=seconds)
    assert json.loads(path.read_text())["text"] == "first"
