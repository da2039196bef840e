"""
``_utils/host_formula.py``: the host formulas' shape (parameters + OS-family layers + pillar.example each) and
the Python layering matching what ``states/host/map.jinja`` does with ``slsutil.merge`` for the states.
"""

import pytest
import salt.utils.dictupdate
import yaml

import host_formula
from host_fake_salt import READ, STATES

FORMULAS = ("boot_order", "dnsmasq", "overcommit", "ovs_ports", "rabbitmq")


def test_every_host_formula_has_the_template_shape():
    assert sorted(p.name for p in (STATES / "host").iterdir() if p.is_dir()) == sorted(FORMULAS)
    for feature in FORMULAS:
        base = STATES / "host" / feature
        for rel in ("parameters/defaults.yaml", "parameters/os_family/Debian.yaml",
                    "parameters/os_family/RedHat.yaml", "pillar.example", "init.sls"):
            assert (base / rel).is_file(), f"{feature}/{rel}"
    assert not list((STATES / "host").glob("*/map.jinja")), "one shared loader: states/host/map.jinja"


@pytest.mark.parametrize("feature", FORMULAS)
def test_pillar_example_is_under_the_feature_key_and_known_to_the_defaults(feature):
    example = yaml.safe_load((STATES / "host" / feature / "pillar.example").read_text())
    assert list(example) == ["deskfleet"] and list(example["deskfleet"]["host"]) == [feature]
    known = host_formula.merge(host_formula.layers(feature, "Debian", READ), host_formula.layers(feature, "RedHat", READ))

    def walk(ex, de, path):
        for key, value in ex.items():
            assert key in de or key == "os_family", f"{path}{key} is in pillar.example but not in parameters/"
            if isinstance(value, dict) and isinstance(de.get(key), dict) and de[key]:
                walk(value, de[key], f"{path}{key}:")

    walk(example["deskfleet"]["host"][feature], known, f"deskfleet:host:{feature}:")


@pytest.mark.parametrize("base, over", [
    ({"a": {"b": 1, "c": [1, 2]}, "d": 1}, {"a": {"c": [3]}, "d": None}),
    ({"a": {"b": {"x": 1}}}, {"a": {"b": 2}, "e": {"f": 1}}),
    ({"a": 1}, {}),
])
def test_merge_is_slsutil_recurse_without_list_merging(base, over):
    expected = salt.utils.dictupdate.merge(
        yaml.safe_load(yaml.safe_dump(base)), yaml.safe_load(yaml.safe_dump(over)), strategy="recurse", merge_lists=False)
    assert host_formula.merge(base, over) == expected


def test_layers_order_and_unknown_family():
    debian = host_formula.layers("boot_order", "Debian", READ)
    assert debian["ovs_opts_var"] == "OVS_CTL_OPTS" and debian["dependency"] == "Wants"
    assert host_formula.layers("boot_order", "RedHat", READ)["ovs_opts_var"] == "OPTIONS"
    assert host_formula.layers("boot_order", "Suse", READ) == debian
    cfg, notes = host_formula.settings("boot_order", "Debian", READ, new={"dependency": "Requires"},
                                       old={"dependency": "Wants", "verify": False}, old_key="host_boot_order")
    assert cfg["dependency"] == "Requires" and cfg["verify"] is False  # new over old over the files
    assert notes and "host_boot_order is deprecated" in notes[0]
    assert host_formula.settings("boot_order", "Debian", READ)[1] == []


def test_missing_defaults_file_is_an_error_naming_it():
    with pytest.raises(host_formula.HostError, match="salt://host/nothing/parameters/defaults.yaml"):
        host_formula.layers("nothing", "Debian", lambda rel: None)
