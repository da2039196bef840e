"""
A fresh pool desktop: a real minion that never ran ``saltutil.sync_all`` gets
exactly the minion-side steps of the shipped ``orchestration/pool_vm_ready.sls``
(rendered for it; the runner steps, check-sender and mark-ready, need the cloud
and are covered in tests/integration/test_pool_reactor.py), and afterwards a
password rotation and a software install work on it. The modules import
``_utils`` (escrow, software_catalog, ...): a baseline that syncs only the modules leaves
them unloadable, and this test fails. The ``win`` baseline state alone brings a never-synced
desktop the same code (utils, modules, the session beacon).
"""

import json
import pathlib
import shutil

import jinja2
import pytest
import yaml

from harness import saltconf
from tests.integration.test_password_escrow import ACCOUNT, make_root, shadow_hash, write_key_pair

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]
DESK = "dfp-fresh-0001"
DESK_WIN = "dfp-fresh-0002"


@pytest.fixture(scope="module")
def master(salt_factories, tmp_path_factory):
    etc = tmp_path_factory.mktemp("etc-fresh")
    _, pub, _ = write_key_pair(etc, "escrow", 2048)
    shutil.copy(pub, etc / "password-escrow.pub")
    overrides = saltconf.lab_master_config("vm", etc)
    overrides.pop("schedule", None)  # nothing but this test acts on the desktop
    factory = salt_factories.salt_master_daemon("vm-master-fresh", overrides=overrides)
    with factory.started(start_timeout=120):
        yield factory


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return make_root(tmp_path_factory.mktemp("root-fresh"))


@pytest.fixture(scope="module")
def desk(master, root):
    minion = master.salt_minion_daemon(DESK, overrides={
        "grains": {"deskfleet_role": "desktop", "deskfleet_lab_root": str(root)},
        "deskfleet": {"passwords": {"linux_root": str(root)}},
    })  # fmt: skip
    # a pool desktop boots with the key the keeper seeded (pending dfp-* keys are deleted by the enroll engine)
    saltconf.seed_desktop(master.config, DESK, minion.config["pki_dir"])
    with minion.started(start_timeout=120):  # started only: no sync_all, as a new pool desktop
        yield minion


@pytest.fixture(scope="module")
def desk_win(master):
    minion = master.salt_minion_daemon(DESK_WIN, overrides={"grains": {"deskfleet_role": "desktop"}})
    saltconf.seed_desktop(master.config, DESK_WIN, minion.config["pki_dir"])
    with minion.started(start_timeout=120):  # never synced
        yield minion


def orchestration_steps(vm):
    """The shipped pool_vm_ready orchestration rendered for ``vm``: [(id, kind, {arg: value})] in order."""
    env = jinja2.Environment()
    env.filters["json"] = json.dumps
    text = (CHECKOUT / "orchestration" / "pool_vm_ready.sls").read_text()
    rendered = env.from_string(text).render(pillar={"vm": vm})
    steps = []
    for step_id, body in yaml.safe_load(rendered).items():
        ((kind, args),) = body.items()
        merged = {}
        for item in args:
            merged.update(item)
        steps.append((step_id, kind, merged))
    return steps


def test_rotation_and_install_work_after_the_orchestration_baseline_on_a_never_synced_desktop(master, desk, root):
    cli = master.salt_cli(timeout=300)
    # fresh: deskfleet's modules are not on the desktop
    ret = cli.run("local_password.policy", minion_tgt=DESK)
    assert "local_password.policy" in str(ret.data) and "not available" in str(ret.data), ret

    steps = orchestration_steps(DESK)
    assert [k for _, k, _ in steps][0] == "salt.runner" and steps[0][2]["name"] == "vmpool.on_event"
    ran = []
    for step_id, kind, args in steps:
        if kind == "salt.runner":
            continue  # check-sender / mark-ready: the pool keeper and the cloud
        assert args["tgt"] == DESK, step_id
        if kind == "salt.function":
            extra = [f"{k}={json.dumps(v)}" for k, v in (args.get("kwarg") or {}).items()]
            ret = cli.run(args["name"], *(args.get("arg") or []), *extra, minion_tgt=DESK)
        elif kind == "salt.state":
            ret = cli.run("state.apply", args["sls"], minion_tgt=DESK)
            assert all(s["result"] for s in ret.data.values()), ret
        else:
            raise AssertionError(f"{step_id}: step kind {kind} is not handled by this test")
        assert ret.returncode == 0, (step_id, ret)
        ran.append(step_id)
    assert "desktop-baseline" in ran

    # password rotation through the vm master's runner
    rotated = master.salt_run_cli(timeout=240).run("password.rotate", DESK, ACCOUNT)
    assert rotated.returncode == 0 and list(rotated.data["rotated"]) == [DESK], rotated
    assert shadow_hash(root).startswith("$6$")
    # a catalog install
    ret = cli.run("software.install", "deskfleet-demo", minion_tgt=DESK)
    assert ret.data["result"] is True and ret.data["installed"] == "1.0.0", ret
    assert (root / "opt" / "deskfleet-demo" / "VERSION").read_text().strip() == "1.0.0"


def test_the_win_baseline_alone_brings_a_never_synced_desktop_its_code(master, desk_win):
    cli = master.salt_cli(timeout=300)
    wanted = {"local_password.rotate", "local_password.prepare", "software.install", "software.status"}
    listed = cli.run("sys.list_functions", "local_password", "software", minion_tgt=DESK_WIN)
    assert listed.returncode == 0 and not wanted & set(listed.data or []), listed  # fresh: none of it
    ret = cli.run("state.apply", "win", minion_tgt=DESK_WIN)
    assert ret.returncode == 0 and ret.data and all(s["result"] for s in ret.data.values()), ret
    listed = cli.run("sys.list_functions", "local_password", "software", minion_tgt=DESK_WIN)
    assert wanted <= set(listed.data), listed  # the modules load: their utils came with them
    beacons = cli.run("beacons.list_available", "return_yaml=False", minion_tgt=DESK_WIN)
    assert "desktop_session" in beacons.data, beacons
