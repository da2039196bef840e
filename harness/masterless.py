"""
A masterless minion (``salt-call --local``) for tests that run this checkout's
states and modules through the real Salt state system without any daemon:

    minion = Masterless(tmp_path, minion_id="cmp-functional")
    minion.set_pillar("host_boot_order", {"host_boot_order": {"root": str(tmp_path / "root")}})
    rc, ret = minion.call("state.apply", "host.boot_order")

Everything the minion keeps (cache, logs, synced modules) stays under ``base``.
"""

import json
import pathlib
import subprocess
import sys

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
# the salt-call of the interpreter running the tests, so it loads the same Salt
SALT_CALL = pathlib.Path(sys.executable).parent / "salt-call"


def local_return(proc):
    """``json["local"]`` from a ``salt-call --out=json`` process; ValueError when its stdout is not that."""
    try:
        return json.loads(proc.stdout)["local"]
    except (KeyError, TypeError) as exc:
        raise ValueError(f"salt-call stdout has no 'local': {proc.stdout[:200]!r}") from exc


class Masterless:
    """A masterless minion (salt-call --local) serving this checkout's states and modules, with its own pillar."""

    def __init__(self, base, minion_id="lab-host", extra_config=None, pillar_root=None, checkout_modules=True,
                 log_level=None, salt_call=SALT_CALL):
        """
        ``pillar_root`` defaults to ``<base>/pillar``; one a test filled itself keeps
        its top.sls. ``checkout_modules=False`` leaves ``_modules`` out of
        ``module_dirs``, so the minion only has them once ``saltutil.sync_*`` (or
        ``sync_mods``) copied them from the fileserver, as on a real host.
        ``log_level`` is passed as ``--log-level`` on every call.
        """
        self.base = pathlib.Path(base)
        self.pillar_root = pathlib.Path(pillar_root) if pillar_root else self.base / "pillar"
        self.log_level = log_level
        self.salt_call = pathlib.Path(salt_call)
        self.pillars = []
        self.base.mkdir(parents=True, exist_ok=True)
        self.pillar_root.mkdir(parents=True, exist_ok=True)
        if not (self.pillar_root / "top.sls").exists():
            self._write_top()
        conf = {
            "id": minion_id,
            "file_client": "local",
            "root_dir": str(self.base / "salt"),
            "file_roots": {"base": [str(CHECKOUT / "states"), str(CHECKOUT)]},
            "pillar_roots": {"base": [str(self.pillar_root)]},
        }
        if checkout_modules:
            conf["module_dirs"] = [str(CHECKOUT / "_modules")]
        conf.update(extra_config or {})
        (self.base / "minion").write_text(json.dumps(conf, indent=1) + "\n")

    def _write_top(self):
        top = {"base": {"*": self.pillars}} if self.pillars else {"base": {}}
        (self.pillar_root / "top.sls").write_text(json.dumps(top, indent=1) + "\n")

    def set_pillar(self, name, data):
        """Write pillar ``name`` (JSON is valid YAML) and a top.sls giving every pillar set so far to '*'."""
        (self.pillar_root / f"{name}.sls").write_text(json.dumps(data, indent=1) + "\n")
        if name not in self.pillars:
            self.pillars.append(name)
        self._write_top()

    def run(self, *args, netns=None, timeout=300):
        """
        The finished ``salt-call --local --out=json --retcode-passthrough *args``
        process, inside ``ip netns exec <netns>`` when given (a name or a Netns).
        """
        cmd = [str(self.salt_call), "--local", "-c", str(self.base), "--out=json", "--retcode-passthrough"]
        if self.log_level:
            cmd.append(f"--log-level={self.log_level}")
        cmd += args
        if netns is not None:
            cmd = ["ip", "netns", "exec", getattr(netns, "name", netns), *cmd]
        return subprocess.run(cmd, capture_output=True, text=True, check=False, timeout=timeout)

    def call(self, *args, netns=None, timeout=300):
        """(returncode, data): data is ``json["local"]``, or stdout + stderr when salt-call printed no such JSON."""
        proc = self.run(*args, netns=netns, timeout=timeout)
        try:
            return proc.returncode, local_return(proc)
        except ValueError:
            return proc.returncode, proc.stdout + proc.stderr
