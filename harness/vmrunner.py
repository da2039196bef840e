"""
The vm master's runners called in-process (salt.runner.RunnerClient) with the
shipped vm master config, a pool pillar of our own and a Nova lab as the cloud:
what the cloud tests and the pool benchmark drive. No daemon needed.
"""

import pathlib

import yaml

from harness import saltconf


class VmRunner:
    def __init__(self, root, lab, pools, **keeper_settings):
        import salt.config  # pylint: disable=import-outside-toplevel

        root = pathlib.Path(root)
        pillar = root / "pillar"
        pillar.mkdir(parents=True)
        (pillar / "top.sls").write_text("base:\n  '*':\n    - pools\n")
        (pillar / "pools.sls").write_text(yaml.safe_dump({"deskfleet": {"pools": pools}}))
        conf = saltconf.lab_master_config("vm", root / "etc")
        conf.pop("schedule", None)
        conf.pop("reactor", None)
        conf.update(root_dir=str(root / "master"), pillar_roots={"base": [str(pillar)]}, user="root")
        conf["deskfleet"]["vm"].update(cloud=lab.cloud, clouds_yaml=lab.clouds_yaml)
        conf["deskfleet"]["vm"]["pool_keeper"].update(keeper_settings)
        (root / "master.conf").write_text(yaml.safe_dump(conf))
        self.opts = salt.config.master_config(str(root / "master.conf"))
        for key in ("cachedir", "sock_dir", "pki_dir"):  # what a running master would have made
            pathlib.Path(self.opts[key]).mkdir(parents=True, exist_ok=True)
        (pathlib.Path(self.opts["cachedir"]) / "proc").mkdir(exist_ok=True)

    def __call__(self, fun, *args):
        """``vmpool.<fun>(*args)`` through Salt's runner loader."""
        import salt.runner  # pylint: disable=import-outside-toplevel

        with salt.runner.RunnerClient(self.opts) as client:
            return client.cmd(f"vmpool.{fun}", list(args), print_event=False)
