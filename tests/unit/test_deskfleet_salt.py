"""The one Salt glue module: role gate, error return, config lookups."""

import deskfleet_salt as glue


def test_virtual_names_the_role_it_needs():
    assert glue.virtual("vmpool", {"deskfleet": {"role": "vm"}}, role="vm") == "vmpool"
    refused = glue.virtual("vmpool", {"deskfleet": {"role": "tc"}}, role="vm")
    assert refused == (False, "vmpool: runs on the vm master only (deskfleet:role is 'tc')")
    assert glue.virtual("vmpool", {}, role="vm")[0] is False
    assert glue.virtual("host_net", {}) == "host_net"


def test_error_sets_the_retcode_and_keeps_extras():
    context = {}
    assert glue.error(context, "bad pool", pool="p1") == {"pool": "p1", "error": "bad pool", "retcode": 1}
    assert context == {"retcode": 1}
    assert glue.error(None, "x")["retcode"] == 1


def test_conf_and_settings_tolerate_missing_and_null_levels():
    opts = {"deskfleet": {"vm": {"pool_keeper": {"cloud_timeout": 3}, "rollouts": None}}}
    assert glue.conf(opts, "vm", "pool_keeper") == {"cloud_timeout": 3}
    assert glue.conf(opts, "vm", "rollouts") == {}
    assert glue.conf(opts, "tc", "enroll") == {}
    assert glue.conf({"deskfleet": None}, "vm") == {}
    assert glue.settings(opts, "vm:pool_keeper", {"cloud_timeout": 10, "cloud_retries": 1}) == {
        "cloud_timeout": 3, "cloud_retries": 1}
