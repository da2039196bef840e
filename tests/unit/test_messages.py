"""
Message logic (_utils/messages.py) without Salt: text and target checks, the
per-target rate limit (clock passed in), the verdict per target, the audit rows.
"""

import pytest

import deskfleet_store
import messages

LIMITS = messages.settings({"rate_limit": 2, "rate_window": 600})


@pytest.fixture
def conn(store_db):
    c = deskfleet_store.connect(store_db, messages.MIGRATIONS)
    yield c
    c.close()


def _clock(start=1000.0):
    now = [start]
    return now, (lambda: now[0])


def _delivered(targets):
    return {t: {"ret": {"sent": True, "method": "wall"}, "retcode": 0} for t in targets}


@pytest.mark.parametrize("text, why", [
    ("x" * 256, "is 256 characters, the limit is 255"),
    ("", "is required"),
    ("   ", "is required"),
    (None, "is required"),
    ("two\nlines", "one line"),
    ("bell\x07", "one line"),
])
def test_bad_text_names_the_field(text, why):
    with pytest.raises(messages.MessageError, match=why) as exc:
        messages.check_text(text, 255)
    assert exc.value.field == "text"


def test_text_at_the_limit_passes_stripped():
    assert messages.check_text("  " + "x" * 255 + " ", 255) == "x" * 255


@pytest.mark.parametrize("raw, field", [({"rate_limit": 0}, "messages:rate_limit"),
                                        ({"max_length": "long"}, "messages:max_length"),
                                        ({"timeout": True}, "messages:timeout")])
def test_bad_settings_name_the_key(raw, field):
    with pytest.raises(messages.MessageError) as exc:
        messages.settings(raw)
    assert exc.value.field == field


def test_targets_are_checked_and_deduplicated():
    assert messages.check_targets(["desk-2", "desk-1", "desk-2"], 10) == ["desk-1", "desk-2"]
    for bad, why in ((["../x"], "not a minion id"), ([], "matches no"), (["a", "b", "c"], "more than")):
        with pytest.raises(messages.MessageError, match=why):
            messages.check_targets(bad, 2)


def test_rate_limited_counts_only_the_window():
    assert not messages.rate_limited([100.0, 500.0], 1000.0, 2, 600)  # 100 is outside (1000-600, 1000]
    assert messages.rate_limited([500.0, 900.0], 1000.0, 2, 600)
    assert not messages.rate_limited([500.0], 1000.0, 2, 600)


def test_classify_each_target():
    returns = {
        "ok": {"ret": {"sent": True, "method": "msg"}, "retcode": 0},
        "err": {"ret": "ERROR: desktop_notice: msg failed (1): Error 5", "retcode": 1},
        "liar": {"ret": {"sent": True}, "retcode": 1},
        "odd": {"ret": ["sent"], "retcode": 0},
        "quiet": {"ret": "Minion did not return. [No response]\nThe minions may not have all finished", "retcode": 1},
    }
    got = messages.classify(["ok", "err", "liar", "odd", "gone", "quiet"], returns)
    assert {t: r for t, (r, _) in got.items()} == {
        "ok": "delivered", "err": "failed", "liar": "failed", "odd": "failed", "gone": "offline", "quiet": "offline"}
    assert "Error 5" in got["err"][1]


def test_too_frequent_is_refused_per_target_and_audited(conn):
    now, clock = _clock()
    published = []

    def publish(targets):
        published.append(list(targets))
        return _delivered(targets)

    for _ in range(2):
        ok = messages.deliver(conn, clock, publish, f"b{len(published)}", "vm", "ops", ["desk-1"], "hi", LIMITS)
        assert ok["ok"] and ok["targets"]["desk-1"]["result"] == "delivered"
        now[0] += 10
    third = messages.deliver(conn, clock, publish, "b3", "vm", "ops", ["desk-1", "desk-2"], "hi", LIMITS)
    assert third["ok"] is False
    assert third["targets"]["desk-1"] == {"result": "failed",
                                          "detail": "rate limited: 2 messages in the last 600 s (limit 2)"}
    assert third["targets"]["desk-2"]["result"] == "delivered"
    assert published[-1] == ["desk-2"], "a rate-limited target must not be published to"
    assert third["counts"] == {"delivered": 1, "failed": 1, "offline": 0}
    rows = messages.audit(conn, target="desk-1")
    assert [r["result"] for r in rows] == ["failed", "delivered", "delivered"]
    assert all(r["sender"] == "ops" and r["text"] == "hi" and r["master"] == "vm" for r in rows)
    now[0] += 600  # the window has passed
    assert messages.deliver(conn, clock, publish, "b4", "vm", "ops", ["desk-1"], "hi", LIMITS)["ok"]


def test_offline_does_not_count_against_the_limit(conn):
    _, clock = _clock()
    for batch in ("a", "b", "c"):
        got = messages.deliver(conn, clock, lambda t: {}, batch, "vm", "ops", ["desk-9"], "hi", LIMITS)
        assert got["targets"]["desk-9"]["result"] == "offline" and got["ok"] is False
    assert messages.deliver(conn, clock, _delivered, "d", "vm", "ops", ["desk-9"], "hi", LIMITS)["ok"]


def test_a_publish_that_raises_fails_every_target_and_leaves_no_row_sending(conn):
    _, clock = _clock()

    def boom(targets):
        raise RuntimeError("master bus down")

    got = messages.deliver(conn, clock, boom, "x", "tc", "ops", ["tc-1", "tc-2"], "hi", LIMITS)
    assert {v["result"] for v in got["targets"].values()} == {"failed"}
    assert "master bus down" in got["targets"]["tc-1"]["detail"]
    assert {r["result"] for r in messages.audit(conn)} == {"failed"}
