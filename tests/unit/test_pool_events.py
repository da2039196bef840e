"""Which pool events the keeper acts on (``_utils/pool_events.py``): pure, lookups passed in."""

import pytest

import pool_events

# ---- the sender check on pool start events ---------------------------------------------------


POOLS = {"sales": {}}


def srv(name="dfp-sales-aaaa", status="ACTIVE", **meta):
    return {"name": name, "status": status, "metadata": dict({pool_events.POOL_KEY: "sales"}, **meta)}


def test_start_event_of_a_booting_pool_desktop_with_accepted_key_passes():
    assert pool_events.check_start("salt/minion/dfp-sales-aaaa/start", {"id": "dfp-sales-aaaa"}, srv(), True, POOLS) is None


@pytest.mark.parametrize(
    "tag, data, server, key, reason",
    [
        ("salt/minion/dfp-sales-aaaa/start", {"id": "dfp-sales-bbbb"}, srv(), True, "carries id"),
        ("salt/minion/dfp-sales-aaaa/start", {"id": "dfp-sales-aaaa"}, srv(), False, "no accepted minion key"),
        ("salt/minion/dfp-sales-aaaa/start", {}, None, True, "not a server"),
        ("salt/minion/dfp-sales-aaaa/start", {}, srv(name="dfp-sales-aaaab"), True, "not a server"),
        ("salt/minion/dfp-sales-aaaa/start", {}, srv(deskfleet_pool="ghost"), True, "not a desktop of a known pool"),
        ("salt/minion/dfp-sales-aaaa/start", {}, srv(deskfleet_state="taken"), True, "already taken"),
        ("salt/minion/dfp-sales-aaaa/start", {}, srv(deskfleet_state="ready"), True, "already ready"),
        ("salt/minion/dfp-sales-aaaa/start", {}, srv(status="BUILD"), True, "not ACTIVE"),
        ("salt/minion/a/b/start", {}, srv(), True, "not a minion start"),
    ],
)
def test_forged_or_premature_start_events_are_refused(tag, data, server, key, reason):
    assert reason in pool_events.check_start(tag, data, server, key, POOLS)


# ---- the whole check, with the lookups it asks in order ------------------------------------------


class Lookups:
    """Key, cloud and ping answers for one desktop; records what was asked."""

    def __init__(self, key=True, server=None, ping=True):
        self.key, self.server, self.ping, self.asked = key, server, ping, []

    def key_accepted(self, vm):
        self.asked.append(("key", vm))
        return self.key

    def find(self, vm):
        self.asked.append(("find", vm))
        return self.server

    def answers_ping(self, vm):
        self.asked.append(("ping", vm))
        return self.ping

    def check(self, tag="salt/minion/dfp-sales-aaaa/start", data=None):
        return pool_events.started_desktop(tag, data or {}, POOLS, self.key_accepted, self.find, self.answers_ping)


def test_a_booting_desktop_that_answers_a_ping_starts_the_ready_flow():
    lookups = Lookups(server=srv())
    assert lookups.check() == ("dfp-sales-aaaa", "sales")
    assert [a for a, _ in lookups.asked] == ["key", "find", "ping"]


def test_no_accepted_key_stops_before_the_cloud_and_the_ping():
    lookups = Lookups(key=False, server=srv())
    with pytest.raises(pool_events.Refused, match="no accepted minion key"):
        lookups.check()
    assert lookups.asked == [("key", "dfp-sales-aaaa")]


def test_a_forged_start_event_that_gets_no_ping_answer_is_refused():
    lookups = Lookups(server=srv(), ping=False)
    with pytest.raises(pool_events.Refused, match="did not answer a ping"):
        lookups.check()


@pytest.mark.parametrize(
    "tag, data, reason",
    [
        ("deskfleet/pool/taken", ["sales"], "not a mapping"),
        ("deskfleet/pool/takenx", {}, "not a pool event"),
        ("salt/minion/x/stop", {}, "not a pool event"),
    ],
)
def test_anything_but_a_mapping_on_a_pool_tag_is_refused(tag, data, reason):
    with pytest.raises(pool_events.Refused, match=reason):
        pool_events.kind(tag, data)


def test_the_two_kinds():
    assert pool_events.kind(pool_events.TAKEN_TAG, {}) == "taken"
    assert pool_events.kind("salt/minion/dfp-sales-aaaa/start", {}) == "start"


def _members(*pairs):
    return lambda sender, pool: (sender, pool) in pairs


@pytest.mark.parametrize(
    "data",
    [
        {"pool": "sales"},  # from the API / salt-run (no minion id)
        {"id": "vm-master", "pool": "sales"},  # the master itself
        {"id": "dfp-sales-aaaa", "data": {"pool": "sales"}},  # a desktop of that pool, via event.send
    ],
)
def test_taken_from_the_master_the_api_or_a_desktop_of_the_pool(data):
    assert pool_events.taken_pool(data, POOLS, "vm-master", _members(("dfp-sales-aaaa", "sales"))) == "sales"


@pytest.mark.parametrize(
    "data, reason",
    [
        ({"pool": "ghost"}, "unknown pool 'ghost'"),
        ({"pool": ["sales"]}, "unknown pool"),
        ({"id": "tc-0001", "pool": "sales"}, "tc-0001 is neither the master nor a desktop of pool sales"),
        ({"id": "dfp-sales-aaaa", "pool": "sales"}, "neither the master"),  # a desktop, of another pool
    ],
)
def test_taken_from_anyone_else_or_for_an_unknown_pool_is_refused(data, reason):
    with pytest.raises(pool_events.Refused, match=reason):
        pool_events.taken_pool(data, POOLS, "vm-master", _members(("dfp-sales-aaaa", "other")))
