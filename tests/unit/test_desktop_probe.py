"""The start-event proof: the desktop's own answer in the job cache, with a deadline."""

import desktop_probe


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def sleep(self, seconds):
        self.now += seconds


def probe(returns_by_poll, timeout=5.0, jid="20261130000000000001"):
    clock, polls, sent = Clock(), [], []

    def lookup(got):
        assert got == jid
        polls.append(clock.now)
        return returns_by_poll[min(len(polls), len(returns_by_poll)) - 1]

    def publish(minion_id):
        sent.append(minion_id)
        return jid

    ok = desktop_probe.answers(publish, lookup, "dfp-a", timeout=timeout, clock=clock, sleep=clock.sleep)
    return ok, sent, polls


def test_the_desktops_own_true_return_proves_it():
    ok, sent, polls = probe([{}, {}, {"dfp-a": True}])
    assert ok and sent == ["dfp-a"] and len(polls) == 3


def test_no_return_until_the_deadline_is_no_proof():
    ok, _, polls = probe([{}], timeout=5.0)
    assert not ok and polls[-1] >= 5.0


def test_another_minions_return_or_a_non_true_answer_is_no_proof():
    assert not probe([{"dfp-b": True, "dfp-a": "True"}])[0]


def test_nothing_published_is_no_proof():
    assert not desktop_probe.answers(lambda m: "", lambda j: {"dfp-a": True}, "dfp-a", clock=Clock(), sleep=lambda s: None)
