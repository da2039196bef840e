"""
The thin-client minion template (``salt_tc/minion/deskfleet-tc.conf``) as Salt
3008.3 reads it, and the tc master's capacity settings as the master reads them.
Salt's defaults are pinned beside them: a lost line or a moved default fails here.
"""


import salt.config
import yaml

from harness import saltconf

# setting: (shipped, Salt 3008.3 default)
MINION = {
    "auth_timeout": (120, 5),
    "random_reauth_delay": (60, 10),
    "acceptance_wait_time": (10, 10),
    "acceptance_wait_time_max": (120, 0),
    "recon_default": (1000, 1000),
    "recon_max": (10000, 10000),
    "recon_randomize": (True, True),
    "ping_interval": (0, 0),
    "master_alive_interval": (0, 0),
}


def _minion_opts(tmp_path, text):
    path = tmp_path / "minion"
    path.write_text(text)
    return salt.config.minion_config(str(path))


def test_template_parses_as_salt_minion_config_with_the_shipped_values(tmp_path):
    opts = _minion_opts(tmp_path, saltconf.TC_MINION_TEMPLATE.read_text())
    defaults = salt.config.DEFAULT_MINION_OPTS
    for key, (shipped, default) in MINION.items():
        assert opts[key] == shipped, (key, opts[key])
        assert defaults[key] == default, (key, "Salt's default moved: re-measure (make bench-swarm)")
    # hot multi-master: both tc masters listed, Salt's default master_type (README "Two tc masters, one inventory")
    assert opts["master"] == ["tc-master-1.example.invalid", "tc-master-2.example.invalid"]
    assert opts["master_type"] == "str" and opts["master_alive_interval"] == 0
    assert opts["autosign_grains"] == ["deskfleet_enroll"] and opts["grains"] == {"deskfleet_role": "tc"}


def test_template_agrees_with_the_lab_thin_clients_and_leaves_beacons_to_pillar():
    raw = yaml.safe_load(saltconf.TC_MINION_TEMPLATE.read_text())
    lab = saltconf.tc_minion_config("/")
    assert raw["loop_interval"] == lab["loop_interval"] == 1
    assert raw["autosign_grains"] == lab["autosign_grains"]
    assert raw["grains"]["deskfleet_role"] == lab["grains"]["deskfleet_role"]
    # the beacon comes from the tc master's pillar (pillar/tc/tc_status.sls); the id and key from enrollment
    assert not {"beacons", "id", "master_port"} & set(raw)
    assert saltconf.tc_minion_template("10.0.0.9")["master"] == "10.0.0.9"


def test_tc_master_names_its_auth_pool(tmp_path):
    conf = saltconf.lab_master_config("tc", tmp_path / "etc")
    conf.update(root_dir=str(tmp_path), user="root")
    (tmp_path / "master").write_text(yaml.safe_dump(conf))
    opts = salt.config.master_config(str(tmp_path / "master"))
    assert opts["worker_pools"] == {
        "auth": {"worker_count": 1, "commands": ["_auth"]},
        "default": {"worker_count": 4, "commands": ["*"]},
    }
    assert opts["zmq_backlog"] == 4096 and opts["max_open_files"] == 100000
    # without the explicit pools Salt 3008.3 folds everything, _auth included, into one pool
    conf.pop("worker_pools")
    (tmp_path / "master").write_text(yaml.safe_dump(conf))
    assert salt.config.master_config(str(tmp_path / "master"))["worker_pools"] == {
        "default": {"worker_count": 5, "commands": ["*"]}
    }
