"""
Returns read from the job cache (_utils/job_returns.py): waits until every target
returned or the timeout, ignores returns of ids it did not target (clock passed in).
"""

import job_returns


def test_waits_for_every_target_then_stops():
    reads = iter([{}, {"a": {"return": True, "retcode": 0}},
                  {"a": {"return": True, "retcode": 0}, "b": {"return": "ERROR: x", "retcode": 1}}])
    now = [0.0]
    got = job_returns.wait(lambda: next(reads), ["a", "b"], 30, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert got == {"a": {"ret": True, "retcode": 0}, "b": {"ret": "ERROR: x", "retcode": 1}}
    assert now[0] == 1.0  # two polls of 0.5 s


def test_timeout_leaves_silent_targets_out_and_ignores_strangers():
    now = [0.0]
    cache = {"a": {"return": {"sent": True}}, "intruder": {"return": {"sent": True}}, "b": "not a dict"}
    got = job_returns.wait(lambda: cache, ["a", "b"], 5, clock=lambda: now[0], sleep=lambda s: now.__setitem__(0, now[0] + s))
    assert got == {"a": {"ret": {"sent": True}, "retcode": 0}}
    assert now[0] >= 5
