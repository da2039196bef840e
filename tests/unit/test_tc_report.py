"""
Unit tests for the thin-client fleet report (``_utils/tc_report.py``): one
self-contained HTML document with an inline SVG chart, status counts and the
list of offline seats.
"""

import html.parser
import re

import pytest

import deskfleet_store as store
import tc_assets
import tc_ingest_batch
import tc_report

NOW = 1_750_000_000.0
HB = 300


def seat(name, status, firmware="13.1.0", site="LON", last_seen=NOW - 10, **extra):
    out = {
        "seat": name,
        "status": status,
        "firmware": firmware,
        "site": site,
        "serial": f"SN-{name}",
        "mac": "52:54:00:00:00:01",
        "ips": ["10.20.0.3", "2001:db8::1"],
        "last_seen": last_seen,
    }
    out.update(extra)
    return out


FLEET = [
    seat("tc-0001", "online", "13.1.0", "LON"),
    seat("tc-0002", "online", "13.1.0", "MAN"),
    seat("tc-0003", "stale", "12.9.4", "MAN", last_seen=NOW - 600),
    seat("tc-0004", "offline", "12.9.4", "LON", last_seen=NOW - 7200),
    seat("tc-0005", "offline", None, None, last_seen=NOW - 86400, serial=None, mac=None, ips=[]),
    seat("tc-0006", "online", "13.2.0", "LON"),
]


class Doc(html.parser.HTMLParser):
    """Collects tags, attributes, table rows and the status tiles of a rendered report."""

    def __init__(self, text):
        super().__init__(convert_charrefs=True)
        self.tags = []
        self.attrs = []
        self.rows = []
        self.tiles = []
        self._row = None
        self._cell = None
        self._tile = None
        self.feed(text)
        self.close()

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend((tag, name, value) for name, value in attrs)
        if tag == "tr":
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = ""
        elif tag == "div" and ("class", "tile") in attrs:
            self._tile = ""

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None:
            self.rows.append(self._row)
            self._row = None
        elif tag == "div" and self._tile is not None:
            self.tiles.append(self._tile)
            self._tile = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell += data
        if self._tile is not None:
            self._tile += data + "|"


@pytest.fixture(scope="module")
def report():
    return tc_report.render(FLEET, NOW, HB, 3)


def test_report_is_one_html_document(report):
    assert report.startswith("<!DOCTYPE html>")
    assert report.rstrip().endswith("</html>")
    assert report.count("<html") == report.count("</html>") == 1
    assert report.count("<body") == report.count("</body>") == 1
    doc = Doc(report)
    assert doc.tags[0] == "html"
    assert "head" in doc.tags and "title" in doc.tags


def test_report_has_no_external_references_or_scripts(report):
    lowered = report.lower()
    for needle in ("src=", "href=", "<script", "<link", "<iframe", "<img", "url(", "@import", "javascript:"):
        assert needle not in lowered, needle
    doc = Doc(report)
    assert not [a for a in doc.attrs if a[1] in ("src", "href", "xlink:href") or a[1].startswith("on")]
    assert "script" not in doc.tags


def test_report_has_an_inline_svg_with_one_bar_per_firmware_version(report):
    assert report.count("<svg") == report.count("</svg>") == 1
    svg = report[report.index("<svg") : report.index("</svg>")]
    bars = re.findall(r"<rect[^>]*>\s*<title>([^<]*)</title>", svg)
    assert sorted(bars) == ["12.9.4: 2", "13.1.0: 2", "13.2.0: 1", "unknown: 1"]
    widths = {title.split(":")[0]: int(w) for w, title in re.findall(r'width="(\d+)"[^>]*><title>([^<]*)</title>', svg)}
    # bar length follows the count
    assert widths["13.1.0"] == widths["12.9.4"] > widths["13.2.0"] == widths["unknown"] > 0


def test_report_counts_seats_per_status(report):
    doc = Doc(report)
    tiles = {t.split("|")[1]: int(t.split("|")[0]) for t in doc.tiles}
    assert tiles == {"online": 3, "stale": 1, "offline": 2}
    assert "6 seats" in report


def test_report_lists_exactly_the_offline_seats(report):
    doc = Doc(report)
    header, *rows = doc.rows
    assert header == ["seat", "site", "serial", "MAC", "IP", "firmware", "last seen"]
    assert [r[0] for r in rows] == ["tc-0004", "tc-0005"]
    assert rows[0] == [
        "tc-0004",
        "LON",
        "SN-tc-0004",
        "52:54:00:00:00:01",
        "10.20.0.3, 2001:db8::1",
        "12.9.4",
        "2025-06-15 13:06:40 UTC",
    ]
    assert rows[1][1:6] == ["", "", "", "", ""]  # unknown facts are blank, not "None"
    assert "Offline seats (2)" in report
    for online in ("tc-0001", "tc-0002", "tc-0003", "tc-0006"):
        assert online not in report


def test_report_without_offline_seats_says_so():
    text = tc_report.render([seat("tc-0001", "online")], NOW, HB, 3)
    assert "No seat is offline." in text
    assert "<table" not in text
    assert "Offline seats (0)" in text


def test_report_of_an_empty_fleet_still_renders():
    text = tc_report.render([], NOW, HB, 3)
    doc = Doc(text)
    assert {t.split("|")[1]: int(t.split("|")[0]) for t in doc.tiles} == {"online": 0, "stale": 0, "offline": 0}
    assert text.count("<svg") == 1
    assert "<rect" not in text


def test_report_escapes_seat_site_and_firmware():
    evil = "<script>alert(1)</script>"
    fleet = [
        seat(evil, "offline", firmware=evil, site='"><img src=x onerror=alert(1)>', serial="<b>&</b>"),
        seat("tc-0002", "online", firmware="<svg onload=alert(2)>"),
    ]
    text = tc_report.render(fleet, NOW, HB, 3)
    lowered = text.lower()
    assert "<script" not in lowered
    assert "<img" not in lowered
    assert "<svg onload" not in lowered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in text
    doc = Doc(text)
    assert "script" not in doc.tags and "img" not in doc.tags
    assert doc.tags.count("b") == 3  # the three status tiles only, not the seat's serial
    assert not [a for a in doc.attrs if a[1] in ("src", "onerror", "onload")]
    assert doc.tags.count("svg") == 1
    # the text survives intact once unescaped
    assert doc.rows[1][0] == evil
    assert doc.rows[1][2] == "<b>&</b>"


def test_counts():
    c = tc_report.counts(FLEET)
    assert c["total"] == 6
    assert c["by_status"] == {"online": 3, "stale": 1, "offline": 2}
    assert c["by_firmware"] == {"12.9.4": 2, "13.1.0": 2, "13.2.0": 1, "unknown": 1}
    assert c["by_site"] == {"LON": 3, "MAN": 2, "unknown": 1}


def test_report_from_the_store(tmp_path):
    """What the runner does: seats() from the store straight into render()."""
    conn = store.connect(str(tmp_path / "db.sqlite"), tc_assets.MIGRATIONS)
    clock = [NOW - 5000]
    ing = tc_ingest_batch.Ingestor(conn, lambda *_: True, clock=lambda: clock[0])
    for i, (age, firmware) in enumerate([(10, "13.1.0"), (500, "13.1.0"), (5000, "12.9.4")], start=1):
        name = f"tc-{i:04d}"
        clock[0] = NOW - age
        ing.add(
            f"salt/beacon/{name}/tc_status/status",
            {
                "v": 1,
                "seat": name,
                "seq": 1,
                "ts": NOW - age,
                "reason": "start",
                "changed": [],
                "heartbeat": HB,
                "facts": {"firmware": firmware, "site": "LON", "ips": ["10.0.0.%d" % i]},
                "sig": "AAAA",
            },
        )
        ing.flush()
    found = tc_assets.seats(conn, NOW, HB, 3)
    conn.close()
    text = tc_report.render(found, NOW, HB, 3)
    doc = Doc(text)
    assert {t.split("|")[1]: int(t.split("|")[0]) for t in doc.tiles} == {"online": 1, "stale": 1, "offline": 1}
    assert [r[0] for r in doc.rows[1:]] == ["tc-0003"]
    assert doc.rows[1][4] == "10.0.0.3"
    assert sorted(re.findall(r"<title>([^<]*: \d+)</title>", text)) == ["12.9.4: 1", "13.1.0: 2"]
