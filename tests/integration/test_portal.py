"""
The portal and its roles, on real masters with salt-api (rest_cherrypy) from the shipped
``80-portal.conf`` (Salt's file eauth in place of PAM, one lab user per role: ``harness.saltconf``):

- tc master, in a real headless Chromium: a wrong password is refused; the viewer logs in
  and sees the seats by site and status and the firmware, a thin client's hostile facts
  (markup in its firmware and site) shown as text with nothing run; logging out revokes
  the token.
- The roles on the API itself: what a viewer, an operator and the broker may and may not
  call on each master, and no client but the runners.
"""

import time

import pytest
import requests
import yaml

from harness import saltconf, tcroot
from harness.lab import wait_for
from tests.integration.conftest import enrolled_minion
from tests.support import browser
from tests.support.minions import running as minions_running

HOSTILE_SEAT = "tc-por-0001"
HOSTILE_FIRMWARE = "<img src=x onerror=document.title=1>"
HOSTILE_SITE = "<script>document.title=2</script>"
POOL = "portal-pool"


def _token(url, user, password=None):
    resp = requests.post(f"{url}/login", json={"username": user, "password": password or saltconf.portal_password(user),
                                                 "eauth": "file"}, headers={"Accept": "application/json"}, timeout=60)
    assert resp.status_code == 200, (user, resp.status_code, resp.text[:300])
    return resp.json()["return"][0]["token"]


def _call(url, token, fun, client="runner", **kwarg):
    resp = requests.post(f"{url}/", json=[{"client": client, "fun": fun, "kwarg": kwarg}],
                         headers={"Accept": "application/json", "X-Auth-Token": token}, timeout=300)
    return resp.status_code, (resp.json()["return"][0] if resp.status_code == 200 else resp.text)


def _url(master):
    return f"http://127.0.0.1:{master.config['rest_cherrypy']['port']}"


@pytest.fixture(scope="module")
def tc_api(tc_master):
    with tc_master.salt_api_daemon().started(start_timeout=180):
        yield _url(tc_master)


@pytest.fixture(scope="module")
def hostile_seat(tc_master, thin_clients, tmp_path_factory):
    """A thin client whose asset facts carry markup; retired at the end (the package's tc master is shared)."""
    base = tmp_path_factory.mktemp("portal-seat")
    root = tcroot.make(base / HOSTILE_SEAT, 77, firmware=HOSTILE_FIRMWARE, site=HOSTILE_SITE)
    factory = enrolled_minion(tc_master, HOSTILE_SEAT, root, base)
    try:
        with minions_running(tc_master, [factory], HOSTILE_SEAT):
            run = tc_master.salt_run_cli(timeout=120)
            wait_for(lambda: (r := run.run("tc_inventory.show", HOSTILE_SEAT)).returncode == 0
                     and r.data.get("firmware") == HOSTILE_FIRMWARE, 300, 2, what="the hostile seat's firmware stored")
            yield HOSTILE_SEAT
    finally:
        tc_master.salt_run_cli(timeout=120).run("seat.retire", HOSTILE_SEAT)


def test_tc_portal_in_a_browser_shows_seats_and_keeps_hostile_facts_inert(tc_api, hostile_seat, tmp_path):
    from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel

    with browser.chromium(tmp_path) as driver:
        browser.login(driver, f"{tc_api}/portal", "viewer", "wrong", "file")
        browser.wait_text(driver, "#login-error", "login refused (401)")

        browser.login(driver, f"{tc_api}/portal", "viewer", saltconf.portal_password("viewer"), "file")
        browser.wait_text(driver, "#master", "tc master")
        sites = browser.wait_text(driver, "#section-sites", "LON")
        assert "MAN" in sites and "online" in sites, sites
        firmware = browser.wait_text(driver, "#section-firmware", HOSTILE_FIRMWARE)
        assert "13.1.0" in firmware and "12.9.4" in firmware, firmware
        assert HOSTILE_SITE in driver.find_element(By.ID, "section-sites").text
        # shown as text, never parsed: no element the markup would make, nothing it would run
        assert driver.title == "deskfleet portal", driver.title
        assert driver.find_elements(By.TAG_NAME, "img") == []
        assert len(driver.find_elements(By.TAG_NAME, "script")) == 1
        token = driver.execute_script("return state.token")
        assert "session_id=" not in driver.execute_script("return document.cookie")  # the header carries the token
        driver.save_screenshot(str(tmp_path / "tc-portal.png"))

        driver.find_element(By.ID, "logout").click()
        browser.wait_text(driver, "#status", "logged out")
        assert driver.find_element(By.ID, "login").is_displayed()
        assert driver.find_elements(By.CSS_SELECTOR, "#sections section") == []
    code, _ = _call(tc_api, token, "portal.view")
    assert code == 401, "the token still works after logout"


def test_tc_roles_on_the_api(tc_api, thin_clients):
    viewer = _token(tc_api, "viewer")
    code, view = _call(tc_api, viewer, "portal.view")
    assert code == 200 and view["master"] == "tc" and {s["id"] for s in view["sections"]} >= {"sites", "firmware", "offline"}
    code, listed = _call(tc_api, viewer, "tc_inventory.list", site="LON")
    assert code == 200 and [r["seat"] for r in listed] == ["tc-0001"], listed
    for fun, kwarg in (("seat.retire", {"minion_id": "tc-0001"}), ("enroll.issue", {"minion_id": "tc-9999"}),
                       ("message.send", {"tgt": "*", "text": "hi"})):
        code, _ = _call(tc_api, viewer, fun, **kwarg)
        assert code == 401, f"viewer ran {fun}"
    code, text = _call(tc_api, viewer, "test.ping", client="local")
    assert code == 400 and "Client disabled" in text, text  # nothing is published to thin clients through the API
    code, page = _call(tc_api, viewer, "portal.view", page=0)
    assert code == 200 and page.get("parameter") == "page" and page.get("retcode") == 1, page
    assert requests.post(f"{tc_api}/login", json={"username": "broker", "password": saltconf.portal_password("broker"),
                                                  "eauth": "file"}, timeout=60).status_code == 401  # no broker here
    ret = thin_clients["tc-0001"]  # still there: nothing above touched it
    assert ret.is_running()


@pytest.fixture(scope="module")
def vm_api(salt_factories, tmp_path_factory):
    """A vm master with one pool in its pillar (no cloud: the roles and the broker's event need none)."""
    etc = tmp_path_factory.mktemp("vm-portal-etc")
    pillar = tmp_path_factory.mktemp("vm-portal-pillar")
    (pillar / "pools.sls").write_text(yaml.safe_dump({"deskfleet": {"pools": {POOL: {
        "flavor": "desk.small", "image": "win11", "network": "desk-net", "spares": 1, "max_size": 2}}}}))
    conf = saltconf.lab_master_config("vm", etc)
    conf["pillar_roots"]["base"].insert(0, str(pillar))
    conf["reactor"] = []  # the taken event is what is tested; no keeper pass against a cloud that is not there
    master = salt_factories.salt_master_daemon("vm-portal", overrides=conf)
    with master.started(), master.salt_api_daemon().started(start_timeout=180):
        yield master, _url(master)


def test_vm_roles_and_the_brokers_call(vm_api, event_listener):
    master, url = vm_api
    viewer, operator, broker = (_token(url, u) for u in ("viewer", "operator", "broker"))
    for token, fun, kwarg in ((viewer, "vmpool.drain", {"pool": POOL}), (viewer, "maintenance.start", {"hosts": ["cmp-01"]}),
                              (viewer, "software.cancel", {"id": "x"}), (viewer, "password.show", {"vm": "desk-0001"}),
                              (broker, "vmpool.status", {}), (broker, "vmpool.drain", {"pool": POOL}),
                              (broker, "portal.view", {}), (operator, "password.show", {"vm": "desk-0001"}),
                              (operator, "vmpool.taken", {"pool": POOL})):
        code, _ = _call(url, token, fun, **kwarg)
        assert code == 401, f"{fun} was allowed"
    code, cancelled = _call(url, operator, "software.cancel", id="no-such-rollout")  # allowed; refused by the runner
    assert code == 200 and "unknown rollout" in cancelled.get("error", ""), cancelled

    start = time.time()
    code, fired = _call(url, broker, "vmpool.taken", pool=POOL)
    assert code == 200 and fired == {"pool": POOL, "fired": "deskfleet/pool/taken"}, fired
    seen = event_listener.wait_for_events([(master.id, "deskfleet/pool/taken")], after_time=start, timeout=120)
    assert seen.found_all_events, "the broker's call fired no event"
    assert [e.data.get("pool") for e in seen.matches] == [POOL]
    code, unknown = _call(url, broker, "vmpool.taken", pool="no-such-pool")
    assert code == 200 and unknown.get("parameter") == "pool" and POOL in unknown["error"], unknown
