"""The portal's pages as data (``_utils/portal_view.py``) and the shipped roles (``80-portal.conf``)."""

import ast
import pathlib

import pytest

import portal_view as pv
from harness import saltconf

RUNNERS = pathlib.Path(__file__).resolve().parents[2] / "_runners"


def seat(name, status, site="LON", firmware="13.2.0"):
    return {"seat": name, "status": status, "site": site, "firmware": firmware, "ip": "10.0.0.1", "last_seen": "t"}


def by_id(sections):
    return {s["id"]: s for s in sections}


def test_tc_page_counts_sites_and_firmware_and_pages_the_offline_list():
    seats = [seat(f"tc-{i:04d}", "offline", site="MAN") for i in range(30)] + [seat("tc-lon-1", "online"),
                                                                                seat("tc-lon-2", "stale", firmware="12.9")]
    page = by_id(pv.tc_sections(seats, {"accepted": 9, "forged": 1}, None, pages={"offline": 2, "stale": 1}, size=25))
    assert page["sites"]["rows"] == [["LON", 1, 1, 0, 2], ["MAN", 0, 0, 30, 30]]
    assert page["firmware"]["rows"][0] == ["13.2.0", 31, "97%"]
    offline = page["offline"]
    assert (offline["total"], offline["page"], offline["pages"], len(offline["rows"])) == (30, 2, 2, 5)
    assert offline["rows"][0][0] == "tc-0025"
    assert page["stale"]["rows"] == [["tc-lon-2", "LON", "12.9", "10.0.0.1", "t"]]
    assert page["ingest"]["rows"] == [["accepted", 9], ["forged", 1]]
    assert "activity" not in page  # no activity answer: no section pretending there is one


def test_a_page_past_the_end_shows_the_last_and_an_empty_list_says_so():
    sec = pv.section("offline", "Offline", ["seat"], [["a"], ["b"]], page=9, size=1)
    assert (sec["page"], sec["rows"]) == (2, [["b"]])
    assert pv.section("stale", "Stale", ["seat"], [])["note"] == "nothing to show"


def test_hostile_values_stay_plain_data():
    markup = "<img src=x onerror=alert(1)>"
    page = by_id(pv.tc_sections([seat("tc-1", "offline", site=markup, firmware={"nested": markup})], {}, None))
    assert page["offline"]["rows"][0][1] == markup  # a string stays a string: the browser sets it as text
    assert page["firmware"]["rows"][0][0] == str({"nested": markup})  # anything else becomes its text, never a structure


@pytest.mark.parametrize("page,size,pages,error", [
    (0, 25, None, "page: 1..n, got 0"), ("x", 25, None, "page: a whole number"), (1, 500, None, "size: 1..200"),
    (1, 25, {"offline": 0}, "pages: offline"), (1, 25, {"seats": 2}, "pages: unknown section 'seats'"),
    (1, 25, [2], "pages: a mapping"),
])
def test_bad_paging_names_the_parameter(page, size, pages, error):
    with pytest.raises(pv.UsageError, match=error):
        pv.paging(page, size)
        pv.section_pages(pages)


def test_vm_page_pools_rollouts_passwords_and_host_commit():
    pools = {"pools": {"win11": {"target": 2, "ready": 1, "in_flight": 1, "taken": 3, "health": "ok", "drained": False}}}
    rollouts = [{"id": "r1", "software": "7zip", "version": "24", "state": "running", "counts": {"pending": 3, "succeeded": 1}},
                {"id": "r0", "software": "7zip", "version": "23", "state": "completed", "counts": {}}]
    passwords = {"due": {"desk-2": "never escrowed", "desk-3": "in doubt"}, "in_doubt": {"desk-3": ["e1"]}, "ok": ["desk-1"]}
    providers = [{"name": "cmp-02", "inventories": {"VCPU": {"total": 8, "reserved": 0, "allocation_ratio": 4.0},
                                                  "MEMORY_MB": {"total": 8704, "reserved": 512, "allocation_ratio": 1.5}},
                  "usages": {"VCPU": 12, "MEMORY_MB": 4096}, "disabled": True},
                 {"name": "cmp-01", "inventories": {}, "usages": {}}]
    roll = {"id": "mt-1", "hosts": {"cmp-02": {"state": "running"}}}
    page = by_id(pv.vm_sections(pools, rollouts, passwords, providers, roll))
    assert page["pools"]["rows"] == [["win11", 2, 1, 1, 3, "ok", "no"]]
    assert page["pools"]["actions"][0]["fun"] == "vmpool.drain"
    assert page["rollouts"]["rows"] == [["r1", "7zip", "24", "running", "pending 3, succeeded 1"]]
    assert page["passwords"]["rows"] == [["desk-3", "in doubt", "e1"], ["desk-2", "due", "never escrowed"], ["desk-1", "ok", ""]]
    assert page["hosts"]["rows"] == [["cmp-01", "yes", "-", "-", "-"], ["cmp-02", "no", "1.50 of 4.0", "0.50 of 1.5", "running (mt-1)"]]
    unreadable = by_id(pv.vm_sections(pools, [], {}, "placement unreadable: timeout", None))["hosts"]
    assert unreadable["note"] == "placement unreadable: timeout" and unreadable["rows"] == []


def _runner_functions():
    """{"module.function"} the tree's runners define (``__func_alias__`` applied)."""
    found = set()
    for path in RUNNERS.glob("*.py"):
        tree = ast.parse(path.read_text())
        alias = {}
        for node in tree.body:
            if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "__func_alias__" for t in node.targets):
                alias = ast.literal_eval(node.value)
        for node in tree.body:
            if isinstance(node, ast.FunctionDef) and not node.name.startswith("_"):
                found.add(f"{path.stem}.{alias.get(node.name, node.name)}")
    return found


@pytest.mark.parametrize("role", ["tc", "vm"])
def test_shipped_roles_name_real_runners_and_no_secret_reader(role):
    conf = saltconf.shipped_master_config(role)
    roles = conf["deskfleet"]["portal"]["roles"]
    known = _runner_functions()
    for name, acl in roles.items():
        funs = [f for entry in acl for f in entry["@runner"]]
        assert set(funs) <= known, (name, set(funs) - known)
        assert not {"password.show", "userdata.fetch", "enroll.issue"} & set(funs), name
    assert conf["netapi_enable_clients"][0] == "runner" and "local" not in conf["netapi_enable_clients"]
    assert conf["external_auth"]["pam"]["deskfleet-viewers%"] == roles["viewer"]
    if role == "vm":
        assert [f for e in roles["broker"] for f in e["@runner"]] == ["vmpool.taken"]
    else:
        assert roles["broker"] == [] and "deskfleet-brokers%" not in conf["external_auth"]["pam"]


def test_tiles_are_read_off_the_sections():
    tc = pv.tc_sections([seat("a", "online"), seat("b", "offline"), seat("c", "offline", site="MAN")], {}, None)
    assert [(t["label"], t["value"]) for t in pv.tiles(tc)] == [("seats", 3), ("online", 1), ("stale", 0), ("offline", 2)]
    pools = {"pools": {"p1": {"ready": 2, "in_flight": 1, "taken": 4, "health": "ok"},
                       "p2": {"ready": 0, "in_flight": 0, "taken": 1, "health": "degraded"}}}
    vm = pv.vm_sections(pools, [], {"due": {"d1": "never escrowed"}, "ok": ["d2"]}, [], None)
    assert [(t["label"], t["value"], t["status"]) for t in pv.tiles(vm)] == [
        ("desktops ready", 2, ""), ("desktops in flight", 1, ""), ("desktops taken", 5, ""),
        ("pools not ok", 1, "degraded"), ("passwords due", 1, "due")]
