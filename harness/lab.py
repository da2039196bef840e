"""
A throwaway Salt lab for the demo and the benchmarks: real salt-master and
salt-minion processes on 127.0.0.1, configured from the shipped files (see
``harness.saltconf``), all state under one temp dir, every process stopped on
exit. The tests use pytest-salt-factories instead; both start masters from the
same ``lab_master_config``.
"""

import json
import os
import pathlib
import socket
import subprocess
import sys

import yaml

from harness import saltconf
from harness.proc import free_port, spawn, stop_groups  # noqa: F401  (free_port: callers import it from here)
from harness.wait import wait_for  # tests and the demo import it from here too

BIN = pathlib.Path(sys.executable).parent


def last_json(text):
    """The last JSON document in ``text`` (salt-run prints progress events before the return)."""
    decoder, pos, last = json.JSONDecoder(), 0, None
    text = text.strip()
    while pos < len(text):
        last, end = decoder.raw_decode(text, pos)
        pos = end
        while pos < len(text) and text[pos].isspace():
            pos += 1
    return last


class Daemon:
    kind = None

    def __init__(self, lab, name, config):
        self.lab = lab
        self.name = name
        self.root = lab.base / name
        self.conf_dir = self.root / "conf"
        self.conf_dir.mkdir(parents=True, exist_ok=True)
        config = dict(config, root_dir=str(self.root), user=lab.user)
        (self.conf_dir / self.kind).write_text(yaml.safe_dump(config))
        self.config = config
        self.proc = None

    def start(self):
        argv = [str(BIN / f"salt-{self.kind}"), "-c", str(self.conf_dir), "-l", "warning"]
        self.proc = spawn(argv, self.root / f"{self.kind}.out")
        return self

    def stop(self, timeout=20):
        """SIGTERM the daemon's process group; SIGKILL it past ``timeout``."""
        stop_daemons([self], timeout)


def stop_daemons(daemons, timeout=20):
    """Stop daemons all at once (a salt-minion takes 10-20 s to act on SIGTERM)."""
    stop_groups([d.proc for d in daemons if d.proc is not None], grace=timeout)


class Master(Daemon):
    kind = "master"

    def __init__(self, lab, name, config):
        config = dict(
            config,
            interface="127.0.0.1",
            publish_port=free_port(),
            ret_port=free_port(),
            log_level_logfile="info",
        )
        super().__init__(lab, name, config)
        import salt.config  # pylint: disable=import-outside-toplevel

        self.opts = salt.config.master_config(str(self.conf_dir / "master"))

    def _cli(self, tool, *args, timeout=120):
        cmd = [str(BIN / tool), "-c", str(self.conf_dir), "--out=json", *args]
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
        if out.returncode != 0 and not out.stdout.strip():
            raise RuntimeError(f"{' '.join(cmd[:1] + cmd[3:])} failed ({out.returncode}): {out.stderr[-800:]}")
        return last_json(out.stdout)

    def run(self, fun, *args, timeout=120):
        """``salt-run fun args`` → parsed JSON."""
        return self._cli("salt-run", fun, *args, timeout=timeout)

    def salt(self, target, fun, *args, timeout=60):
        """``salt target fun args`` → ``{minion: return}``."""
        return self._cli("salt", "--static", "-t", str(timeout), target, fun, *args, timeout=timeout + 30)

    def keys(self):
        return self._cli("salt-key", "-L")

    def accept(self, minion_id):
        subprocess.run(
            [str(BIN / "salt-key"), "-c", str(self.conf_dir), "-y", "-a", minion_id],
            capture_output=True,
            check=True,
        )

    def wait_ready(self, timeout=90):
        sock = pathlib.Path(self.opts["sock_dir"]) / "master_event_pub.ipc"

        def ready():
            if not sock.exists():
                return False
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.config["ret_port"])) == 0

        return wait_for(ready, timeout, what=f"{self.name} to listen")

    def wait_minions(self, ids, timeout=120):
        ids = set(ids)

        def answered():
            try:
                got = self.salt(",".join(sorted(ids)), "test.ping", "-L", timeout=10) or {}
            except (RuntimeError, subprocess.TimeoutExpired):  # a master still starting, a loaded box
                return False
            return ids <= {m for m, v in got.items() if v is True}

        return wait_for(answered, timeout, interval=1, what=f"{sorted(ids)} to answer on {self.name}")


class Minion(Daemon):
    kind = "minion"

    def __init__(self, lab, name, master, config):
        config = dict(
            config,
            id=name,
            master="127.0.0.1",
            master_port=master.config["ret_port"],
            publish_port=master.config["publish_port"],
            acceptance_wait_time=1,
            random_reauth_delay=0,
            log_level_logfile="info",
        )
        super().__init__(lab, name, config)
        self.master = master


class Api:
    """salt-api beside a master, from the master's ``rest_cherrypy`` block: the portal and the broker's door."""

    def __init__(self, master):
        self.master = master
        self.name = f"{master.name}-api"
        self.port = master.config["rest_cherrypy"]["port"]
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc = None

    def start(self):
        argv = [str(BIN / "salt-api"), "-c", str(self.master.conf_dir), "-l", "warning"]
        self.proc = spawn(argv, self.master.root / "api.out")
        return self

    def wait_ready(self, timeout=120):
        def ready():
            with socket.socket() as s:
                return s.connect_ex(("127.0.0.1", self.port)) == 0

        return wait_for(ready, timeout, what=f"{self.name} to listen on {self.port}", proc=self.proc)

    def stop(self, timeout=20):
        stop_daemons([self], timeout)


class Lab:
    """``with Lab(tmpdir) as lab:`` … every daemon is stopped on exit."""

    def __init__(self, base, shipped_ports=False):
        self.base = pathlib.Path(base)
        self.shipped_ports = shipped_ports
        self.user = os.environ.get("USER") or __import__("pwd").getpwuid(os.getuid()).pw_name
        self.daemons = []

    def master(self, name, role, pillar_first=None, drop_schedule=(), **deskfleet):
        """
        A master from the shipped config. ``pillar_first``: a pillar dir searched before the
        shipped one (its SLS files shadow the shipped ones of the same name);
        ``drop_schedule``: schedule entries to leave out.
        """
        config = saltconf.lab_master_config(role, self.base / "etc", self.shipped_ports, **deskfleet)
        if pillar_first:
            config["pillar_roots"]["base"].insert(0, str(pillar_first))
        for job in drop_schedule:
            config.get("schedule", {}).pop(job, None)
        master = Master(self, name, config)
        self.daemons.append(master)
        return master

    def minion(self, name, master, **config):
        minion = Minion(self, name, master, config)
        self.daemons.append(minion)
        return minion

    def api(self, master):
        api = Api(master)
        self.daemons.append(api)
        return api

    def stop(self):
        stop_daemons(list(reversed(self.daemons)))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
        return False
