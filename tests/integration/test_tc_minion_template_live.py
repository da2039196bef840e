"""
A thin client started from the shipped minion template (``salt_tc/minion/deskfleet-tc.conf``,
its master placeholder replaced by the test master's address) enrols with a real tc master
started from the shipped ``salt_tc/master.d`` (explicit worker pools included), signs in
through the master's own ``_auth`` pool, and its beacon reaches the inventory.
"""

import datetime
import json
import pathlib
import re
import signal
import subprocess
import sys
import time

import psutil

from harness import saltconf, tcroot
from harness.lab import wait_for
from tests.support.minions import running as minions_running

SEAT = "tc-tpl-0001"


def _template_overrides(master, lab_root):
    conf = saltconf.tc_minion_template(master=master.config["interface"])
    lab = saltconf.tc_minion_config(lab_root)
    conf["grains"] = dict(conf["grains"], **lab["grains"])
    return conf


def _enrolled_from_template(master, lab_root, tokens):
    """As ``conftest.enrolled_minion``, the minion config being the shipped template with the master substituted."""
    token = tokens / f"{SEAT}.token"
    ret = master.salt_run_cli(timeout=120).run("enroll.issue", SEAT, "serial=TC000901", f"path={token}")
    assert ret.returncode == 0, ret
    factory = master.salt_minion_daemon(SEAT, overrides=_template_overrides(master, lab_root))
    saltconf.enroll_device(token, SEAT, factory.config["pki_dir"], lab_root, factory.config_dir)
    return factory


def _workers(master):
    """{worker name: live process} of the master's request workers.

    Names come from the master's debug log ("Started 'MWorker-auth-0' with pid 123"), not from process titles:
    Salt appends each name to the title, which setproctitle cuts to the space of the original argv and
    environment, so on a lean environment the names fall off the end.
    """
    log = pathlib.Path(master.config["log_file"]).read_text()
    started = re.findall(r"Started '(MWorker-[\w-]+)' with pid (\d+)", log)
    live = {p.pid: p for p in psutil.Process(master.pid).children(recursive=True)}
    return {name: live[int(pid)] for name, pid in dict(started).items() if int(pid) in live}  # a restart: last pid


def _last_seen(master):
    ret = master.salt_run_cli(timeout=60).run("tc_inventory.show", SEAT)
    assert ret.returncode == 0, ret
    return datetime.datetime.fromisoformat(ret.data["last_seen"]).timestamp()


def _sign_in_waits_for_the_auth_pool(master, minion):
    """Auth worker stopped: beacon events still land (default pool), a fresh sign-in waits until it resumes."""
    auth = _workers(master)["MWorker-auth-0"]
    call = [str(pathlib.Path(sys.executable).parent / "salt-call"), "-c", str(minion.config_dir),
            "--out=json", "test.ping"]  # fmt: skip
    stopped_at = time.time()
    auth.send_signal(signal.SIGSTOP)
    try:
        proc = subprocess.Popen(call, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        # heartbeats every 4 s keep arriving through the default pool while auth is frozen
        wait_for(lambda: _last_seen(master) > stopped_at + 2, timeout=300, what="a beat while auth is stopped")
        assert proc.poll() is None, proc.communicate()
    finally:
        auth.send_signal(signal.SIGCONT)
    out, err = proc.communicate(timeout=240)
    assert proc.returncode == 0 and json.loads(out)["local"] is True, (out, err[-2000:])


def test_minion_from_template_signs_in_and_reports(tc_master, enroll_tokens, tmp_path):
    # the shipped pools run: one auth worker, four for everything else (not Salt's single catch-all pool of 5)
    def pools():
        names = sorted(_workers(tc_master))
        default = [n for n in names if n.startswith("MWorker-default-")]
        return default == [f"MWorker-default-{i}" for i in range(4)] and names

    try:
        names = wait_for(pools, timeout=300, what="4 default-pool workers")
    except TimeoutError as exc:
        raise AssertionError(f"{exc}; the master's workers: {sorted(_workers(tc_master))}") from None
    assert [n for n in names if n.startswith("MWorker-auth-")] == ["MWorker-auth-0"], names
    root = tcroot.make(tmp_path / SEAT, 901, firmware="13.4.0", site="LON")
    minion = _enrolled_from_template(tc_master, root, enroll_tokens)
    assert minion.config["master"] == "127.0.0.1" and minion.config["master_port"] == tc_master.config["ret_port"]
    assert minion.config["auth_timeout"] == 120 and minion.config["acceptance_wait_time_max"] == 120
    # pending until the enroll engine accepts; the template's 10 s acceptance wait, then signed in
    try:
        _signs_in_and_reports(tc_master, minion)
    finally:  # the tc master is the session's: later tests count its seats and sites
        ret = tc_master.salt_run_cli(timeout=120).run("seat.retire", SEAT)
        assert ret.returncode == 0 and ret.data["retired"] is True, ret


def _signs_in_and_reports(tc_master, minion):
    with minions_running(tc_master, [minion], SEAT, start_timeout=240):
        cli = tc_master.salt_cli(timeout=120)
        ret = cli.run("config.get", "auth_timeout", minion_tgt=SEAT)
        assert ret.returncode == 0 and ret.data == 120, ret

        def reported():
            ret = tc_master.salt_run_cli(timeout=60).run("tc_inventory.show", SEAT)
            return ret.returncode == 0 and ret.data.get("firmware") == "13.4.0" and ret.data

        shown = wait_for(reported, timeout=180, what=f"{SEAT} in the inventory")
        assert shown["serial"] == "TC000901" and shown["site"] == "LON", shown
        _sign_in_waits_for_the_auth_pool(tc_master, minion)
