"""
What ops give ``software.schedule`` (``_utils/rollout_schedule.py``): times, the window,
batches and failure thresholds.
"""

import pytest

import rollout_schedule

NOW = 1_750_000_000.0


def test_parse_time_forms():
    assert rollout_schedule.parse_time("now", NOW) == NOW
    assert rollout_schedule.parse_time(None, NOW) == NOW
    assert rollout_schedule.parse_time("+30m", NOW) == NOW + 1800
    assert rollout_schedule.parse_time("+2h", NOW) == NOW + 7200
    assert rollout_schedule.parse_time("+1d", NOW) == NOW + 86400
    assert rollout_schedule.parse_time(NOW + 5, NOW) == NOW + 5
    assert rollout_schedule.parse_time("2025-06-01T22:00:00Z", NOW) == 1748815200.0
    assert rollout_schedule.parse_time("2025-06-02T00:00:00+02:00", NOW) == 1748815200.0
    for bad in ("tomorrow", "+3w", True, -5, "2025-13-01"):
        with pytest.raises(rollout_schedule.ScheduleError, match="is not a time"):
            rollout_schedule.parse_time(bad, NOW, "start")


def test_window_checks():
    rollout_schedule.check_window(NOW - 60, NOW + 60, NOW)  # already open: fine
    with pytest.raises(rollout_schedule.ScheduleError, match="before it starts"):
        rollout_schedule.check_window(NOW + 7200, NOW + 3600, NOW)
    with pytest.raises(rollout_schedule.ScheduleError, match="in the past"):
        rollout_schedule.check_window(NOW - 7200, NOW - 3600, NOW)


@pytest.mark.parametrize("spec, total, size", [(2, 10, 2), ("2", 10, 2), ("25%", 10, 3), ("25%", 8, 2),
                                               ("1%", 3, 1), ("100%", 7, 7), (5, 3, 5)])
def test_batch_size(spec, total, size):
    assert rollout_schedule.batch_size(spec, total) == size


@pytest.mark.parametrize("spec", [0, "0%", "150%", "1.5", "two", "-1", True])
def test_batch_size_refuses(spec):
    with pytest.raises(rollout_schedule.ScheduleError):
        rollout_schedule.batch_size(spec, 10)


@pytest.mark.parametrize(
    "spec, total, limit", [(0, 10, 0), (20, 10, 20), ("20%", 10, 2), ("25%", 3, 0), ("100%", 4, 4)]
)
def test_fail_limit(spec, total, limit):
    assert rollout_schedule.fail_limit(spec, total) == limit
