"""
What deskfleet publishes, as Salt's real loader sees it: every function of
``_modules`` (what ``salt <minion> mod.fun`` reaches) and ``_runners`` (what
``salt-run`` reaches) is pinned here. Helpers are ``_private`` or live in
``_utils``; a new public function must be meant for ops, have a docstring with
``CLI Example:``, and be added to the pins below on purpose.
"""

import pathlib

import pytest
import salt.config
import salt.loader

CHECKOUT = pathlib.Path(__file__).resolve().parents[2]

MODULES = {
    "desktop_notice": ["send"],
    "filedist": ["check", "push"],
    "host_boot_order": ["check_order"],
    "host_dnsmasq": ["audit", "instances", "version"],
    "host_overcommit": ["commit_ratio", "ksm_status", "nova_config", "validate"],
    "host_ovs_ports": ["audit", "repair", "verify"],
    "host_rabbitmq": ["audit", "sockets", "validate"],
    "local_password": ["commit", "last", "policy", "prepare", "rotate"],
    "profile_file": ["push"],
    "seat_notice": ["show"],
    "software": ["install", "list", "remove", "status"],
}

# runner -> (the master role it loads on, its functions)
RUNNERS = {
    "activity": ("tc", ["now", "plan", "plan_check", "plan_load", "report", "series", "tick"]),
    "enroll": ("tc", ["accept", "audit", "issue", "list", "pending", "revoke"]),
    "message": ("tc vm", ["audit", "send"]),  # desktops on the vm master, seats on the tc master
    "maintenance": ("vm", ["abort", "plan", "resume", "start", "status", "tick"]),
    "portal": ("tc vm", ["view"]),  # what the portal page shows, on either master
    "seat": ("tc", ["retire"]),
    "filedist": ("vm", ["distribute"]),
    "password": ("vm", ["audit", "collect", "history", "rotate", "rotate_due", "show", "status"]),
    "software": ("vm", ["cancel", "schedule", "status", "tick"]),
    "tc_inventory": ("tc", ["list", "report", "show", "summary"]),
    "userdata": ("vm", ["audit", "fetch"]),
    "vmpool": ("vm", ["drain", "mark_ready", "on_event", "reclaim", "reclaimable", "reconcile", "replenish", "reset",
                      "status", "taken"]),
}


def _published(loader, name):
    loader._load_all()  # pylint: disable=protected-access
    return sorted(key.split(".", 1)[1] for key in loader if key.startswith(name + "."))


@pytest.fixture(scope="module")
def minion_functions(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("loader")
    opts = salt.config.minion_config(None)
    opts.update(
        id="desk-0001",
        cachedir=str(tmp / "cache"),
        extension_modules=str(tmp / "extmods"),
        module_dirs=[str(CHECKOUT / "_modules")],
        utils_dirs=[str(CHECKOUT / "_utils")],
        file_client="local",
        grains={"kernel": "Linux", "os_family": "Debian", "id": "desk-0001"},
    )
    utils = salt.loader.utils(opts)
    return salt.loader.minion_mods(opts, utils=utils, whitelist=sorted(MODULES))


def _runners(tmp, role):
    opts = salt.config.master_config(None)
    opts.update(
        cachedir=str(tmp / role),
        extension_modules=str(tmp / role / "extmods"),
        runner_dirs=[str(CHECKOUT / "_runners")],
        utils_dirs=[str(CHECKOUT / "_utils")],
        deskfleet={"role": role},
    )
    return salt.loader.runner(opts, utils=salt.loader.utils(opts), whitelist=sorted(RUNNERS))


@pytest.fixture(scope="module")
def runner_functions(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runners")
    return {role: _runners(tmp, role) for role in ("tc", "vm")}


def _missing_cli_example(loader, name, functions):
    return [fun for fun in functions if "CLI Example:" not in (loader[f"{name}.{fun}"].__doc__ or "")]


@pytest.mark.parametrize("name", sorted(MODULES))
def test_execution_module_publishes_only_ops_functions(minion_functions, name):
    assert _published(minion_functions, name) == MODULES[name]
    assert _missing_cli_example(minion_functions, name, MODULES[name]) == []


@pytest.mark.parametrize("name", sorted(RUNNERS))
def test_runner_publishes_only_ops_functions(runner_functions, name):
    role, functions = RUNNERS[name]
    loader = runner_functions[role.split()[0]]
    assert _published(loader, name) == functions
    assert _missing_cli_example(loader, name, functions) == []


@pytest.mark.parametrize("role", ["tc", "vm"])
def test_each_master_loads_only_its_own_runners(runner_functions, role):
    """The other master's runners refuse to load (their ``__virtual__`` checks ``deskfleet:role``)."""
    loaded = {key.split(".", 1)[0] for key in runner_functions[role] if key.split(".", 1)[0] in RUNNERS}
    assert loaded == {name for name, (owner, _) in RUNNERS.items() if role in owner.split()}


def test_every_deskfleet_module_and_runner_is_pinned():
    assert sorted(p.stem for p in (CHECKOUT / "_modules").glob("*.py")) == sorted(MODULES)
    assert sorted(p.stem for p in (CHECKOUT / "_runners").glob("*.py")) == sorted(RUNNERS)
