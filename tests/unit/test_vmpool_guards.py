"""
Fast tests of the keeper's guards, each failing when its guard is broken: the keeper lock
(two concurrent passes never overshoot), bounded cloud calls (a really hung socket), errors
that must reach the exit code, and the sender check on start events (real Salt key store).
The cloud is requests-mock behind a real openstacksdk Connection (see test_vmpool_cloud_faults).
"""

import concurrent.futures
import contextlib
import fcntl
import json
import os
import socket
import threading
import time

import pytest

import salt.config
import pool_plan
from tests.unit.test_vmpool_cloud_faults import NOVA, PLACEMENT, boots, cloud, runner  # noqa: F401  (fixtures)


def servers_side(cloud_mock, delay=0.0):
    """A tiny Nova: POST /servers adds a BUILD server that the next listing returns."""
    made = []

    def listing(request, context):
        time.sleep(delay)  # widen the race between listing and booting
        return {"servers": [dict(s) for s in made]}

    def create(request, context):
        body = json.loads(request.body)["server"]
        made.append({"id": f"id-{len(made)}", "name": body["name"], "status": "BUILD", "metadata": body["metadata"], "links": []})
        context.status_code = 202
        return {"server": {"id": made[-1]["id"], "links": []}}

    cloud_mock.get(NOVA + "/servers/detail", json=listing)
    cloud_mock.post(NOVA + "/servers", json=create)
    return made


# ---- the keeper lock ------------------------------------------------------------------------


def test_concurrent_passes_never_overshoot_thanks_to_the_lock(runner, cloud):
    made = servers_side(cloud, delay=0.3)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: runner.reconcile(), range(4)))
    assert all("error" not in r for r in results), [r.get("error") for r in results]
    assert len(made) == 2  # spares 2: without the lock every pass lists 0 and boots 2


def test_lock_is_broken_means_overshoot(runner, cloud, monkeypatch):
    """The same race with the lock replaced by a no-op: proves the test above tests the lock."""
    monkeypatch.setattr(runner, "_lock", lambda timeout: contextlib.nullcontext())
    made = servers_side(cloud, delay=0.3)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        list(pool.map(lambda _: runner.reconcile(), range(4)))
    assert len(made) > 2


def test_a_held_lock_is_an_error_after_lock_timeout_not_a_traceback(runner, cloud, tmp_path):
    servers_side(cloud)
    runner.__opts__["deskfleet"]["vm"]["pool_keeper"]["lock_timeout"] = 1
    path = tmp_path / "deskfleet" / "vmpool.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)  # another pass, stuck
        t0 = time.monotonic()
        result = runner.replenish("sales")
        assert time.monotonic() - t0 < 10
    assert result["retcode"] == 1 and "keeper busy" in result["error"]
    assert runner.__context__["retcode"] == 1
    assert runner.alerts[-1]["kind"] == "lock"
    assert not boots(cloud)


# ---- a really hung API ----------------------------------------------------------------------


@pytest.fixture
def hung_api():
    """A TCP socket that accepts connections (kernel backlog) and never answers."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(64)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


def test_hung_nova_gives_up_in_bounded_time_and_releases_the_lock(runner, hung_api, tmp_path):
    """The runner's own connect (clouds.yaml -> openstacksdk) against a socket that never answers."""
    clouds = tmp_path / "clouds.yaml"
    entry = {
        "auth_type": "admin_token",
        "auth": {"endpoint": hung_api + "/v2.1", "token": "t"},
        "compute_endpoint_override": hung_api + "/v2.1",
        "placement_endpoint_override": hung_api + "/placement",
        "placement_api_version": "1",
    }
    clouds.write_text(json.dumps({"clouds": {"hung": entry}}))
    runner.__opts__["deskfleet"]["vm"].update(cloud="hung", clouds_yaml=str(clouds))
    runner.__opts__["deskfleet"]["vm"]["pool_keeper"].update(cloud_timeout=1, cloud_retries=1)
    out = {}
    worker = threading.Thread(target=lambda: out.update(result=runner.reconcile()), daemon=True)
    t0 = time.monotonic()
    worker.start()
    worker.join(30)  # a daemon thread: if the guard is broken the test fails here instead of hanging
    took = time.monotonic() - t0
    assert "result" in out, f"reconcile still hanging after {took:.0f} s"
    result = out["result"]
    assert result["retcode"] == 1 and result["error"].startswith("cloud error"), result
    assert runner.__context__["retcode"] == 1 and runner.alerts[-1]["kind"] == "cloud"
    assert took < 15, took  # (1 retry + 1) x 1 s per call and a little back-off, not minutes
    with runner._lock(0.5):  # released: taken at once
        pass


# ---- errors reach the exit code -----------------------------------------------------------------


def test_boot_refused_image_name_instead_of_id_fails_the_run(runner, cloud):
    servers_side(cloud)
    cloud.post(NOVA + "/servers", status_code=400, json={"badRequest": {"code": 400, "message": "Image win11 could not be found."}})
    result = runner.reconcile()
    assert result["retcode"] == 1 and "could not be found" in result["error"]
    assert result["pools"]["sales"]["health"] == "backoff"
    assert any(a.get("pool") == "sales" for a in runner.alerts)


def test_unknown_flavor_fails_the_run_and_the_pool_health(runner, cloud):
    servers_side(cloud)
    cloud.get(NOVA + "/flavors/f1", status_code=404, json={"itemNotFound": {"code": 404, "message": "no"}})
    cloud.get(NOVA + "/flavors/detail", json={"flavors": []})
    cloud.get(NOVA + "/flavors", json={"flavors": []})
    result = runner.reconcile()
    assert result["retcode"] == 1 and "unknown flavor f1" in result["error"]
    assert result["pools"]["sales"]["health"] != "ok" and not boots(cloud)


def test_placement_listing_nothing_fails_the_run(runner, cloud):
    servers_side(cloud)
    cloud.get(PLACEMENT + "/resource_providers", json={"resource_providers": []})
    result = runner.reconcile()
    assert result["retcode"] == 1 and "placement lists no compute hosts" in result["error"]
    assert result["pools"]["sales"]["health"] != "ok"


def test_servers_are_listed_with_a_name_filter(runner, cloud):
    servers_side(cloud)
    runner.reconcile()
    listings = [r for r in cloud.request_history if r.path.endswith("/servers/detail")]
    assert listings and all(r.qs.get("name") == ["^dfp-"] for r in listings)


def test_one_bad_pool_fails_the_run_but_the_others_are_kept(runner, cloud, monkeypatch):
    made = servers_side(cloud)
    good, bad = pool_plan.validate_pools({"sales": {"flavor": "f1", "image": "i", "network": "n", "spares": 2}}), {
        "broken": "pool broken: spares: is required"
    }
    monkeypatch.setattr(runner, "_pools", lambda: (good, bad))
    result = runner.reconcile()
    assert result["retcode"] == 1 and "pool broken: spares: is required" in result["error"]
    assert result["pools"]["sales"]["boots"] == 2 and len(made) == 2
    status = runner.status()
    assert status["retcode"] == 1 and "sales" in status["pools"]


def test_a_pool_short_too_long_fires_an_alert(runner, cloud, monkeypatch):
    servers_side(cloud)
    cloud.post(NOVA + "/servers", status_code=403, json={"forbidden": {"code": 403, "message": "quota"}})
    runner.__opts__["deskfleet"]["vm"]["pool_keeper"]["short_alert_after"] = 0
    runner.reconcile()
    result = runner.reconcile()
    assert [a for a in result["alerts"] if a["kind"] == "short" and a["pool"] == "sales"]
    assert any(a.get("kind") == "short" for a in runner.alerts)


# ---- the sender check on start events (a real Salt key store) ---------------------------------------


@pytest.fixture
def keys(runner, tmp_path):
    opts = dict(salt.config.DEFAULT_MASTER_OPTS, pki_dir=str(tmp_path / "pki"), cachedir=str(tmp_path), __role="master")
    for sub in ("minions", "minions_pre", "minions_rejected", "minions_denied"):
        os.makedirs(os.path.join(opts["pki_dir"], sub))
    runner.__opts__.update({k: opts[k] for k in ("pki_dir", "keys.cache_driver", "__role")})
    runner.__opts__.update({k: v for k, v in opts.items() if k not in runner.__opts__})

    def add(minion, state="minions"):
        with open(os.path.join(opts["pki_dir"], state, minion), "w") as fh:
            fh.write("-----BEGIN PUBLIC KEY-----\nMIIB\n-----END PUBLIC KEY-----\n")

    return add


def pool_server(cloud_mock, name, state=None, status="ACTIVE"):
    meta = {"deskfleet_pool": "sales"}
    if state:
        meta["deskfleet_state"] = state
    srv = {"id": f"id-{name}", "name": name, "status": status, "metadata": meta, "links": []}
    cloud_mock.get(NOVA + f"/servers/{name}", status_code=404, json={"itemNotFound": {"code": 404, "message": "x"}})
    cloud_mock.get(NOVA + "/servers/detail", json={"servers": [srv]})
    cloud_mock.get(NOVA + "/servers", json={"servers": [srv]})


def start(runner, vm, data_id=None):
    return runner.on_event(f"salt/minion/{vm}/start", {"id": data_id or vm})


def test_real_start_of_a_booting_desktop_passes(runner, cloud, keys):
    keys("dfp-sales-bbbb")
    pool_server(cloud, "dfp-sales-bbbb")
    assert start(runner, "dfp-sales-bbbb") == {"server": "dfp-sales-bbbb", "pool": "sales", "pool_member": True}


def test_forged_start_for_a_desktop_without_an_accepted_key_is_refused(runner, cloud, keys):
    """What a forged batched event looks like on the bus: tag and data.id both name the victim."""
    keys("dfp-sales-aaaa")  # the forger is accepted; the victim's key is still pending
    keys("dfp-sales-bbbb", "minions_pre")
    pool_server(cloud, "dfp-sales-bbbb")
    result = start(runner, "dfp-sales-bbbb")
    assert result["refused"] and "no accepted minion key" in result["reason"]
    assert runner.__context__["retcode"] == 1


def test_forged_start_for_a_seeded_desktop_that_does_not_answer_is_refused(runner, cloud, keys):
    """Seeded keys are accepted before boot: only the desktop's own answer proves the start event."""
    keys("dfp-sales-bbbb")
    pool_server(cloud, "dfp-sales-bbbb")
    runner.answered["dfp-sales-bbbb"] = False
    result = start(runner, "dfp-sales-bbbb")
    assert result["refused"] and "did not answer a ping" in result["reason"]


def test_forged_start_for_a_taken_desktop_is_refused(runner, cloud, keys):
    keys("dfp-sales-bbbb")
    pool_server(cloud, "dfp-sales-bbbb", state="taken")
    assert "already taken" in start(runner, "dfp-sales-bbbb")["reason"]


def test_start_with_a_mismatching_id_is_refused(runner, cloud, keys):
    keys("dfp-sales-bbbb")
    pool_server(cloud, "dfp-sales-bbbb")
    assert "carries id" in start(runner, "dfp-sales-bbbb", data_id="dfp-sales-aaaa")["reason"]


def test_a_degraded_pool_fails_every_pass_until_reset(runner, cloud):
    servers_side(cloud)
    cloud.post(NOVA + "/servers", status_code=400, json={"badRequest": {"code": 400, "message": "Invalid imageRef"}})
    runner.__opts__["deskfleet"]["vm"]["pool_keeper"].update(backoff_base=0, degraded_after=2)
    runner.reconcile()
    runner.reconcile()
    attempts = len(boots(cloud))
    third = runner.reconcile()
    assert len(boots(cloud)) == attempts  # degraded: no more boots
    assert third["retcode"] == 1 and "degraded (last error: boot refused" in third["error"] and "vmpool.reset sales" in third["error"]
    assert runner.status()["pools"]["sales"]["health"] == "degraded"
    # every pass says so on the bus too, with its own kind (README "Metrics and alerts")
    degraded = [a for a in runner.alerts if a["kind"] == "degraded"]
    assert degraded and {a["pool"] for a in degraded} == {"sales"} and "vmpool.reset sales" in degraded[-1]["message"]
    runner.reset("sales")
    assert runner.status()["pools"]["sales"]["health"] == "ok"


def test_bad_keeper_settings_are_an_error_naming_the_key(runner, cloud):
    servers_side(cloud)
    runner.__opts__["deskfleet"]["vm"]["pool_keeper"]["cloud_timeout"] = "ten"
    result = runner.reconcile()
    assert result["retcode"] == 1 and "deskfleet:vm:pool_keeper:cloud_timeout" in result["error"]
    assert not boots(cloud)
