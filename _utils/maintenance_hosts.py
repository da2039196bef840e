"""
Host actions for rolling maintenance: what happens on the compute host itself
(stop guests → libvirt → Open vSwitch, reboot, start OVS → libvirt, verify).
The roll engine (``maintenance_roll``) sees only this interface:

    ping(host) -> bool, boot_id(host) -> str | None, stop(host) -> dict, reboot(host),
    start(host) -> dict, verify(host) -> {"ok": bool, "checks": {name: {"ok": bool, ...}}}

``SaltHosts`` runs them through the vm master's LocalClient on the host's minion
(the host's minion id is its nova-compute host name). ``SimulatedHosts`` keeps a
boot id per host in a JSON file: the cloud tier has no real host (said so in
every result it returns), and the file lets a restarted runner see the same hosts.
"""

import json
import os
import time
import uuid

STOP_ORDER = ("guests", "libvirt", "ovs")
START_ORDER = ("ovs", "libvirt")
UNITS = {
    "libvirt": "libvirtd",
    "ovs": "openvswitch-switch",
}
# The host-side Salt functions the verify step runs, in ONE place: host modules are being
# renamed/split (issue 11); rename them here only. {check: (function, args)}
CHECKS = {
    "ovs_ports": ("state.apply", ["host.ovs_ports"]),  # audit -> repair -> verify (states/host/ovs_ports.sls)
    "dnsmasq": ("host_dnsmasq.audit", []),
    "memory": ("host_overcommit.commit_ratio", []),
}
CHECK_TIMEOUT = {"ovs_ports": 300, "dnsmasq": 60, "memory": 60}


class SimulatedHosts:
    """
    Hosts recorded in ``path`` (JSON). ``fail`` maps host -> action that fails
    (``ping``, ``verify``, ...); a reboot keeps the host silent for ``reboot_seconds``.
    """

    def __init__(self, path, fail=None, reboot_seconds=0.0, clock=time.time):
        self.path = path
        self.fail = dict(fail or {})
        self.reboot_seconds = reboot_seconds
        self.clock = clock

    def _load(self):
        try:
            with open(self.path, encoding="utf-8") as fh:
                return json.load(fh)
        except FileNotFoundError:
            return {}

    def _save(self, state):
        tmp = f"{self.path}.{os.getpid()}.tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            json.dump(state, fh)
        os.replace(tmp, self.path)

    def _host(self, host):
        state = self._load()
        entry = state.setdefault(host, {"boot_id": uuid.uuid4().hex, "boots": 0, "log": []})
        return state, entry

    def _act(self, host, action):
        state, entry = self._host(host)
        entry["log"].append(action)
        if action == "reboot":
            entry["boot_id"] = uuid.uuid4().hex
            entry["boots"] += 1
            entry["down_until"] = self.clock() + self.reboot_seconds
        self._save(state)
        if self.fail.get(host) == action:
            raise RuntimeError(f"simulated failure of {action} on {host}")
        return entry

    def _down(self, entry):
        return self.clock() < entry.get("down_until", 0)

    def ping(self, host):
        return self.fail.get(host) != "ping" and not self._down(self._host(host)[1])

    def boot_id(self, host):
        state, entry = self._host(host)
        self._save(state)
        return None if self._down(entry) else entry["boot_id"]

    def stop(self, host):
        for part in STOP_ORDER:
            self._act(host, f"stop {part}")
        return {"stopped": list(STOP_ORDER), "simulated": True}

    def reboot(self, host):
        self._act(host, "reboot")

    def start(self, host):
        for part in START_ORDER:
            self._act(host, f"start {part}")
        return {"started": list(START_ORDER), "simulated": True}

    def verify(self, host):
        self._act(host, "verify")
        return {"ok": True, "simulated": True, "checks": {c: {"ok": True} for c in ("ovs_ports", "dnsmasq", "memory")}}

    def log(self, host):
        return self._host(host)[1]["log"]


class SaltHosts:
    """
    Host actions through Salt: ``call(host, fun, args, timeout, kwargs=None)`` runs
    one execution-module function on the host's minion and returns its result, or
    None when the minion did not answer (the runner wraps LocalClient.cmd).
    ``check_kwargs`` ({check: {kwarg: value}}) narrows a verify check, e.g.
    ``{"dnsmasq": {"pidfiles": [...]}}`` to audit only the host's own DHCP instances.
    """

    def __init__(self, call, check_kwargs=None):
        self.call = call
        self.check_kwargs = dict(check_kwargs or {})
        unknown = set(self.check_kwargs) - set(CHECKS)
        if unknown:
            raise ValueError(f"verify_kwargs: unknown check(s) {sorted(unknown)}; known: {sorted(CHECKS)}")

    def ping(self, host):
        return self.call(host, "test.ping", [], 10) is True

    def boot_id(self, host):
        value = self.call(host, "file.read", ["/proc/sys/kernel/random/boot_id"], 10)
        return value.strip() if isinstance(value, str) and value.strip() else None

    def _run(self, host, cmd):
        out = self.call(host, "cmd.run_all", [cmd], 300)
        if not isinstance(out, dict) or out.get("retcode") != 0:
            raise RuntimeError(f"{host}: {cmd!r} failed: {(out or {}).get('stderr') if isinstance(out, dict) else out}")
        return out

    def stop(self, host):
        # libvirt-guests shuts guests down first, then the daemons in reverse start order
        for part, cmd in (
            ("guests", "systemctl stop libvirt-guests.service"),
            ("libvirt", f"systemctl stop {UNITS['libvirt']}.service"),
            ("ovs", f"systemctl stop {UNITS['ovs']}.service"),
        ):
            self._run(host, cmd)
        return {"stopped": list(STOP_ORDER)}

    def reboot(self, host):
        # the minion goes down with the host: no answer is the expected outcome
        self.call(host, "system.reboot", [], 10)

    def start(self, host):
        for part in START_ORDER:
            self._run(host, f"systemctl start {UNITS[part]}.service")
        return {"started": list(START_ORDER)}

    def verify(self, host):
        checks = {}
        for name, (fun, args) in CHECKS.items():
            kwargs = self.check_kwargs.get(name)
            extra = (kwargs,) if kwargs else ()
            checks[name] = self.call(host, fun, list(args), CHECK_TIMEOUT[name], *extra)
        out = {name: {"ok": _ok(name, value), "result": value} for name, value in checks.items()}
        return {"ok": all(c["ok"] for c in out.values()), "checks": out}


def _ok(name, value):
    """Each check's own idea of success; anything else (no answer, an error string) is a failure."""
    if not isinstance(value, dict):
        return False
    if name == "ovs_ports":  # a state run: every state True
        return bool(value) and all(isinstance(r, dict) and r.get("result") is True for r in value.values())
    if name == "dnsmasq":  # host_dnsmasq.audit: no error-level finding
        return value.get("ok") is True
    return value.get("verdict") in ("ok", "warning")  # host_overcommit.commit_ratio: not critical
