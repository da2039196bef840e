"""
Exact-request tier for the pool keeper: faults a real Nova will not produce on
demand (500s, timeouts, 409 conflicts), scripted with requests-mock behind a
real openstacksdk Connection. The runner module is loaded as a plain module
with its Salt dunders set by hand.
"""

import json

import openstack
import pytest
import requests
import requests_mock

import pool_plan
from tests.support.loading import load

NOVA = "http://nova.test/v2.1"
PLACEMENT = "http://nova.test/placement"
RP = "11111111-2222-3333-4444-555555555555"


@pytest.fixture
def runner(tmp_path, monkeypatch):
    mod = load("_runners/vmpool.py", "vmpool_runner")
    mod.__opts__ = {"id": "vm-master", "cachedir": str(tmp_path), "deskfleet": {"role": "vm", "vm": {"pool_keeper": {"backoff_base": 30}}}}
    mod.__context__ = {}
    pools = pool_plan.validate_pools(
        {"sales": {"flavor": "f1", "image": "img-1", "network": "net-1", "spares": 2, "max_size": 5, "max_in_flight": 2}}
    )
    monkeypatch.setattr(mod, "_pools", lambda: (pools, {}))
    mod.answered = {}  # desktop -> answers the ping (the integration test uses the real job cache)
    monkeypatch.setattr(mod.desktop_probe, "answers_ping", lambda opts, lookup, vm, timeout: mod.answered.get(vm, True))
    mod.alerts = []  # what would go on the master bus (the integration test checks the real bus)

    def alert(opts, tag, data):
        assert tag == mod.ALERT_TAG
        mod.alerts.append(data)

    monkeypatch.setattr(mod.glue, "alert", alert)
    return mod


@pytest.fixture
def cloud(runner, monkeypatch):
    with requests_mock.Mocker() as mock:
        nova_doc = {"version": {"id": "v2.1", "status": "CURRENT", "min_version": "2.1", "version": "2.96", "links": [{"rel": "self", "href": NOVA + "/"}]}}
        placement_doc = {"versions": [{"id": "v1.0", "min_version": "1.0", "max_version": "1.39", "status": "CURRENT", "links": [{"rel": "self", "href": PLACEMENT + "/"}]}]}
        for url, doc in ((NOVA, nova_doc), (NOVA + "/", nova_doc), (PLACEMENT, placement_doc), (PLACEMENT + "/", placement_doc)):
            mock.get(url, json=doc)
        mock.get(NOVA + "/flavors/f1", json={"flavor": {"id": "f1", "name": "desk.small", "ram": 2048, "vcpus": 1, "disk": 20}})
        mock.get(NOVA + "/servers/detail", json={"servers": []})
        mock.get(PLACEMENT + "/resource_providers", json={"resource_providers": [{"uuid": RP, "name": "cmp1", "generation": 1}]})
        mock.get(PLACEMENT + "/resource_providers?required=COMPUTE_STATUS_DISABLED", json={"resource_providers": []})
        inv = {"total": 65536, "reserved": 512, "allocation_ratio": 1.0, "max_unit": 65536, "min_unit": 1, "step_size": 1}
        mock.get(
            PLACEMENT + f"/resource_providers/{RP}/inventories",
            json={"resource_provider_generation": 1, "inventories": {"MEMORY_MB": inv, "VCPU": dict(inv, total=64, max_unit=64, reserved=0), "DISK_GB": dict(inv, total=900, max_unit=900, reserved=0)}},
        )
        mock.get(PLACEMENT + f"/resource_providers/{RP}/usages", json={"resource_provider_generation": 1, "usages": {"MEMORY_MB": 0}})

        def connect():
            return openstack.connection.Connection(
                auth_type="admin_token",
                auth={"endpoint": "http://nova.test", "token": "t"},
                compute_endpoint_override=NOVA,
                placement_endpoint_override=PLACEMENT,
                placement_api_version="1",
            )

        monkeypatch.setattr(runner, "_connect", connect)
        yield mock


def boots(mock):
    return [r for r in mock.request_history if r.method == "POST" and r.url.endswith("/servers")]


def test_boot_request_is_exactly_what_the_pool_says(runner, cloud):
    cloud.post(NOVA + "/servers", status_code=202, json={"server": {"id": "new", "links": []}})
    result = runner.reconcile()
    assert result["pools"]["sales"]["boots"] == 2 and len(boots(cloud)) == 2
    body = json.loads(boots(cloud)[0].text)["server"]
    assert body["name"].startswith("dfp-sales-") and len(body["name"]) == len("dfp-sales-") + 8
    assert (body["flavorRef"], body["imageRef"], body["networks"]) == ("f1", "img-1", [{"uuid": "net-1"}])
    assert body["metadata"] == {"deskfleet_pool": "sales"}


def test_a_500_on_listing_is_an_error_not_a_crash_and_boots_nothing(runner, cloud):
    cloud.get(NOVA + "/servers/detail", status_code=500, json={"computeFault": {"code": 500, "message": "boom"}})
    result = runner.reconcile()
    assert result["retcode"] == 1 and result["error"].startswith("cloud error")
    assert runner.__context__["retcode"] == 1
    assert not boots(cloud)


def test_a_timeout_is_an_error_not_a_crash(runner, cloud):
    cloud.get(NOVA + "/servers/detail", exc=requests.exceptions.ConnectTimeout)
    result = runner.reconcile()
    assert result["retcode"] == 1 and "cloud error" in result["error"]
    assert not boots(cloud)


def test_a_409_on_boot_backs_the_pool_off(runner, cloud):
    cloud.post(NOVA + "/servers", status_code=409, json={"conflictingRequest": {"code": 409, "message": "Quota exceeded"}})
    first = runner.reconcile()
    assert len(boots(cloud)) == 1  # stops at the first refusal instead of hammering the API
    assert first["errors"] and "boot refused" in first["errors"][0]
    assert first["pools"]["sales"]["health"] == "backoff"
    second = runner.reconcile()  # within the backoff window: no new attempt
    assert len(boots(cloud)) == 1 and second["pools"]["sales"]["boots"] == 0
    assert second["pools"]["sales"]["reason"] == "backoff"


def test_a_500_on_boot_is_recorded_and_later_calls_recover(runner, cloud, monkeypatch):
    cloud.post(NOVA + "/servers", [{"status_code": 500, "json": {"computeFault": {"code": 500, "message": "x"}}},
                                   {"status_code": 202, "json": {"server": {"id": "ok", "links": []}}}])
    runner.reconcile()
    assert runner.status()["pools"]["sales"]["failures"] == 1
    # after the backoff the keeper tries again and the boot goes through
    monkeypatch.setattr(pool_plan, "backoff_seconds", lambda *a: 0)
    again = runner.reconcile()
    assert again["pools"]["sales"]["boots"] == 2 and len(again["booted"]) >= 1


def test_error_servers_are_deleted_with_the_exact_request(runner, cloud):
    cloud.get(NOVA + "/servers/detail", json={"servers": [
        {"id": "bad-1", "name": "dfp-sales-deadbeef", "status": "ERROR", "metadata": {"deskfleet_pool": "sales"}, "links": []},
    ]})
    cloud.delete(NOVA + "/servers/bad-1", status_code=204)
    cloud.post(NOVA + "/servers", status_code=202, json={"server": {"id": "new", "links": []}})
    result = runner.reconcile()
    assert result["deleted"] == ["bad-1"]
    assert [r.method for r in cloud.request_history if r.url.endswith("/servers/bad-1")] == ["DELETE"]
    assert result["pools"]["sales"]["health"] == "backoff" and not boots(cloud)
