"""
The vm master's ``maintenance`` runner called through Salt's runner loader with
the shipped vm master config, a Nova lab as the cloud, a pool pillar, a store of
its own and simulated host actions (no real compute host): what the cloud tests
and the roll benchmark drive. ``spawn`` runs a call in a new process (its own
process group), as a restarted vm master would.
"""

import json
import pathlib
import subprocess
import sys

import yaml

from harness.vmrunner import VmRunner

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]


class MaintenanceRunner:
    def __init__(self, root, lab, pools, **maintenance):
        import salt.config  # pylint: disable=import-outside-toplevel

        root = pathlib.Path(root)
        self.keeper = VmRunner(root, lab, pools)  # the pool keeper on the same master config and store
        self.conf_path = root / "master.conf"
        self.hosts_file = root / "hosts.json"
        conf = yaml.safe_load(self.conf_path.read_text())
        conf["deskfleet"]["vm"]["maintenance"] = dict(
            host_actions="simulated", simulated_state=str(self.hosts_file), **maintenance
        )
        self.conf_path.write_text(yaml.safe_dump(conf))
        self.opts = salt.config.master_config(str(self.conf_path))

    def __call__(self, fun, *args, **kwargs):
        """``maintenance.<fun>(*args, **kwargs)`` in this process."""
        import salt.runner  # pylint: disable=import-outside-toplevel

        with salt.runner.RunnerClient(self.opts) as client:
            return client.cmd(f"maintenance.{fun}", list(args), kwarg=kwargs, print_event=False)

    def spawn(self, fun, **kwargs):
        """``maintenance.<fun>`` in a new process group; its stdout ends with ``RESULT <json>``."""
        script = (
            "import json, sys, salt.config, salt.runner\n"
            f"opts = salt.config.master_config({str(self.conf_path)!r})\n"
            "with salt.runner.RunnerClient(opts) as c:\n"
            f"    out = c.cmd('maintenance.{fun}', [], kwarg=json.loads(sys.argv[1]), print_event=False)\n"
            "print('RESULT ' + json.dumps(out, default=str))\n"
        )
        return subprocess.Popen(  # pylint: disable=consider-using-with
            [sys.executable, "-c", script, json.dumps(kwargs)], cwd=str(CHECKOUT),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
        )

    @staticmethod
    def result(output):
        """The JSON result a ``spawn`` printed (Salt may log more lines after it at exit)."""
        return json.JSONDecoder().raw_decode(output.decode().split("RESULT ", 1)[1])[0]

    def hosts_state(self):
        return json.loads(self.hosts_file.read_text()) if self.hosts_file.exists() else {}
