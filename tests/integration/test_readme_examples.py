"""
Every CLI example of README.md, run as written against the lab ``make lab-up`` starts.

The lab comes up through the same entry point as ``make lab-up`` (``python -m
harness.lab_up up``, without make's ``setup`` step), in the directory the README names
(``/tmp/deskfleet-lab``): both masters from the shipped config, the Nova lab with the pool,
thin clients, desktops. Each example runs in bash with the printed line sourced and its
block's ``use_tc``/``use_vm``; it must exit 0, or 1 where the README marks it ``[exits 1]``
(``harness/readme_examples.py`` reads the markers). Then the lab is broken on purpose
(one daemon killed: reported half-dead, ``up`` refuses) and ``down`` must leave no process.
"""

import json
import pathlib
import signal
import subprocess
import sys

import pytest

from harness import lab_build, lab_up, novalab, readme_examples, saltconf
from harness.lab import last_json
from harness.proc import signal_group
from harness.wait import wait_for
from tests.support import browser

LAB = lab_up.lab_dir(lab_up.DEFAULT_DIR)  # the README's examples name this directory
README = saltconf.CHECKOUT / "README.md"
MAX_NOT_RUN = 25  # README lines marked [not run: ...]; keep them few


def lab(*args, timeout=300):
    proc = subprocess.run([sys.executable, "-m", "harness.lab_up", *args, "--dir", str(LAB)], cwd=str(saltconf.CHECKOUT),
                          capture_output=True, text=True, timeout=timeout, check=False, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


@pytest.fixture(scope="module")
def running_lab():
    reason = novalab.missing()
    if reason:
        pytest.skip(reason)
    if LAB.exists():
        pytest.fail(f"{LAB} exists (a lab of yours?): make lab-down first; this test starts and stops its own")
    code, out, err = lab("up", timeout=lab_up.UP_TIMEOUT + 120)
    state = lab_up.read_state(LAB)
    try:
        assert code == 0, f"lab up failed ({code}):\n{out}\n{err}"
        assert out.strip().splitlines() == [f". {LAB / 'env.sh'}"], out  # ONE line on stdout: what to source
        yield state
    finally:
        if LAB.exists():  # a test failed half-way: still leave nothing behind
            lab("down", timeout=300)
        left = lab_up.leftovers(LAB, state)
        assert not left, f"processes of the lab left after down: {left}"


def test_lab_up_again_says_so_and_status_lists_every_daemon(running_lab):
    code, out, err = lab("up")
    assert code == 0 and "already up" in err and out.strip() == f". {LAB / 'env.sh'}", (code, out, err)
    code, out, _ = lab("status")
    assert code == 0 and f"lab at {LAB}: up" in out, out
    for name in ("supervisor", "novalab", "tc-master", "vm-master", "desk-0042", "desk-0043", "tc-lon-0042"):
        assert f"{name} " in out, out
    assert "tc-bhx-0001" in out and "DEAD" in out  # the seat switched off on purpose


def test_every_readme_example_exits_as_marked(running_lab):
    examples = readme_examples.examples(README.read_text())
    not_run = [e for e in examples if e.skip]
    assert len(not_run) <= MAX_NOT_RUN, [f"README:{e.line}: {e.skip}" for e in not_run]
    assert any(e.expect == 1 and not e.skip for e in examples), "no [exits 1] example: the errors are never shown"
    lines = []
    failed = readme_examples.run_all(README, LAB, say=lines.append)
    print("\n".join(lines))
    report = "\n".join(f"README:{e.line}: {e.switch} {e.command}\n  exit {code}, expected {e.expect}\n  {out[-600:]}"
                       for e, code, out in failed)
    assert not failed, f"{len(failed)} README example(s) did not exit as marked:\n{report}"
    ran = len(examples) - len(not_run)
    assert ran >= 50, f"only {ran} examples ran"


def test_vm_portal_shows_the_lab_refuses_a_viewers_drain_and_an_operator_drains(running_lab, tmp_path):
    """The vm master's portal in a real browser, on the lab's real pool and compute hosts."""
    from selenium.webdriver.common.by import By  # pylint: disable=import-outside-toplevel

    url = f"http://127.0.0.1:{saltconf.shipped_master_config('vm')['rest_cherrypy']['port']}/portal"
    with browser.chromium(tmp_path) as driver:
        browser.login(driver, url, "viewer", saltconf.portal_password("viewer"), "file")
        browser.wait_text(driver, "#master", "vm master")
        pools = browser.wait_text(driver, "#section-pools", lab_build.POOL)
        row = next(r for r in driver.find_elements(By.CSS_SELECTOR, "#section-pools tr") if lab_build.POOL in r.text)
        cells = [c.text for c in row.find_elements(By.TAG_NAME, "td")]
        # target 2, kept by the keeper as ready + in flight (the examples drained, refilled and took desktops)
        assert cells[1] == "2" and int(cells[2]) + int(cells[3]) == 2 and cells[5:7] == ["ok", "no"], (cells, pools)
        hosts = browser.wait_text(driver, "#section-hosts", "of 1.5")  # the lab's ram_allocation_ratio
        assert sum(1 for r in driver.find_elements(By.CSS_SELECTOR, "#section-hosts tr")) == 1 + 3, hosts
        browser.wait_text(driver, "#section-passwords", "desk-0042")
        driver.save_screenshot(str(tmp_path / "vm-portal.png"))
        row.find_element(By.CSS_SELECTOR, "button[data-fun='vmpool.drain']").click()
        browser.wait_text(driver, "#status", "refused: viewer may not run vmpool.drain")
        driver.find_element(By.ID, "logout").click()
        browser.wait_text(driver, "#status", "logged out")
        code, out, _ = _vm_cli("vmpool.status")
        assert code == 0 and last_json(out)["pools"][lab_build.POOL]["drained"] is False, out

        browser.login(driver, url, "operator", saltconf.portal_password("operator"), "file")
        browser.wait_text(driver, "#section-pools", lab_build.POOL)
        driver.find_element(By.CSS_SELECTOR, "#section-pools button[data-fun='vmpool.drain']").click()
        browser.wait_text(driver, "#status", f"vmpool.drain {lab_build.POOL}: done")
        browser.wait_text(driver, "#section-pools", "yes")  # the page re-read: drained
    try:
        code, out, _ = _vm_cli("vmpool.status")
        assert code == 0 and last_json(out)["pools"][lab_build.POOL]["drained"] is True, out
    finally:
        _vm_cli("vmpool.drain", lab_build.POOL, "undo=True")


def _vm_cli(*args):
    env_sh = LAB / "env.sh"
    proc = subprocess.run(["bash", "-c", f". {env_sh} && use_vm && salt-run --out=json {' '.join(args)}"],
                          capture_output=True, text=True, timeout=300, check=False, stdin=subprocess.DEVNULL)
    return proc.returncode, proc.stdout, proc.stderr


def test_half_dead_lab_is_reported_and_down_leaves_nothing(running_lab):
    victim = running_lab["components"]["tc-man-0001"]
    signal_group(victim, signal.SIGKILL)
    wait_for(lambda: not lab_up.alive(victim), 30, what="the killed thin client to go")
    code, out, _ = lab("status")
    assert code == 1 and "half-dead" in out and "tc-man-0001" in out, out
    code, _, err = lab("up")
    assert code == 1 and "half-dead" in err and "make lab-down" in err, err
    state = lab_up.read_state(LAB)
    code, out, err = lab("down")
    assert code == 0 and "no process of it left" in out, (out, err)
    assert not lab_up.leftovers(LAB, state), json.dumps(state)
    assert not any(lab_up.alive(pid) for pid in state["components"].values())
    assert not pathlib.Path(LAB).exists()
    code, out, _ = lab("status")
    assert code == 3 and "no lab" in out, out
