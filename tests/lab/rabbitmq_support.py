"""
Lab pieces for the RabbitMQ keepalive test (issue 5): a real RabbitMQ node in a
network namespace with every path under a temp dir, a stateful firewall
namespace (conntrack with a short established timeout, ``ct state invalid``
dropped), masterless ``salt-call`` runs inside a namespace, and a real AMQP
client (pika) run as a subprocess in the client namespace.

Run as a script, this file is that AMQP client (see ``client_main``): it needs
only pika, not the test harness.
"""

import json
import os
import pathlib
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time

RABBIT_BIN = pathlib.Path("/usr/lib/rabbitmq/bin")  # the real scripts: /usr/sbin ones `su rabbitmq` and reset HOME
TOOLS = ("nft", "ss", "sysctl", "epmd")


def missing_rabbit_pieces():
    """Why the RabbitMQ lab cannot run here, or None (root, ip, nft, ss, RabbitMQ, pika, salt-call)."""
    from harness.masterless import SALT_CALL  # pylint: disable=import-outside-toplevel
    from harness.netns import missing  # pylint: disable=import-outside-toplevel

    reason = missing(*TOOLS)
    if reason:
        return reason
    for tool in ("rabbitmq-server", "rabbitmqctl"):
        if not (RABBIT_BIN / tool).exists():
            return f"lab tier needs RabbitMQ ({RABBIT_BIN / tool}; apt package rabbitmq-server, see tools/apt-packages.txt)"
    if not SALT_CALL.exists():
        return f"lab tier needs salt-call next to {sys.executable}"
    try:
        import pika  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import
    except ImportError:
        return "lab tier needs the pika AMQP client in the venv (requirements.lock)"
    return None


# --------------------------------------------------------------------------
# network: server <-> firewall <-> client
# --------------------------------------------------------------------------

SERVER_IP = "10.197.1.1"
CLIENT_IP = "10.197.2.1"
FW_TABLE = "dfl_rabbit_fw"


def build_firewall_lab(topo, established_timeout):
    """Three namespaces: srv (10.197.1.1) -- fw -- cli (10.197.2.1), routed through fw.

    fw is a stateful firewall like the ones that cut idle AMQP flows: conntrack
    forgets an established TCP flow after ``established_timeout`` idle seconds,
    does not pick up mid-stream flows (``nf_conntrack_tcp_loose=0``), and nft
    drops what conntrack calls invalid, silently (no RST, no ICMP).
    """
    srv, fw, cli = topo.ns("srv"), topo.ns("fw"), topo.ns("cli")
    topo.link(srv, "s0", fw, "f0", f"{SERVER_IP}/24", "10.197.1.254/24")
    topo.link(cli, "c0", fw, "f1", f"{CLIENT_IP}/24", "10.197.2.254/24")
    srv.run(["ip", "route", "add", "default", "via", "10.197.1.254"])
    cli.run(["ip", "route", "add", "default", "via", "10.197.2.254"])
    fw.run(["sysctl", "-qw", "net.ipv4.ip_forward=1"])
    ruleset = (
        f"table inet {FW_TABLE} {{\n"
        "  chain forward {\n"
        "    type filter hook forward priority 0; policy accept;\n"
        "    ct state invalid counter drop\n"
        "  }\n"
        "}\n"
    )
    fw.run(["nft", "-f", "-"], input=ruleset)
    # conntrack is live in fw now (the ct rule): its per-netns knobs exist
    fw.run(["sysctl", "-qw", f"net.netfilter.nf_conntrack_tcp_timeout_established={int(established_timeout)}"])
    fw.run(["sysctl", "-qw", "net.netfilter.nf_conntrack_tcp_loose=0"])
    cli.run(["ping", "-c1", "-W2", SERVER_IP])
    return srv, fw, cli


def fw_invalid_drops(fw):
    """Packets the firewall dropped as ct state invalid so far."""
    out = fw.run(["nft", "-j", "list", "table", "inet", FW_TABLE]).stdout
    for item in json.loads(out).get("nftables", []):
        rule = item.get("rule")
        if rule:
            for expr in rule.get("expr", []):
                if "counter" in expr:
                    return int(expr["counter"]["packets"])
    return None


def keepalive_sysctls(netns):
    return {
        key: int(netns.run(["cat", f"/proc/sys/net/ipv4/{key}"]).stdout.strip())
        for key in ("tcp_keepalive_time", "tcp_keepalive_intvl", "tcp_keepalive_probes")
    }


# --------------------------------------------------------------------------
# RabbitMQ
# --------------------------------------------------------------------------


class RabbitNode:
    """A RabbitMQ node in ``netns``: own nodename, HOME (Erlang cookie), mnesia, logs, config path.

    epmd runs in the foreground as our own child (``-start_epmd false`` for the broker and the CLI),
    so stopping it reaps it: no daemonized epmd left to PID 1.
    """

    def __init__(self, netns, workdir, config_file):
        self.netns = netns
        self.workdir = pathlib.Path(workdir)
        self.config_file = pathlib.Path(config_file)
        self.nodename = f"dfl{os.getpid()}@localhost"
        self.proc = None
        self.epmd = None
        self.starts = 0
        for sub in ("home", "mnesia", "log"):
            (self.workdir / sub).mkdir(parents=True, exist_ok=True)
        (self.workdir / "enabled_plugins").write_text("[].\n")
        self.env = dict(
            os.environ,
            HOME=str(self.workdir / "home"),
            RABBITMQ_NODENAME=self.nodename,
            RABBITMQ_CONFIG_FILE=str(self.config_file),
            RABBITMQ_ADVANCED_CONFIG_FILE=str(self.workdir / "advanced.config"),
            RABBITMQ_CONF_ENV_FILE=str(self.workdir / "rabbitmq-env.conf"),
            RABBITMQ_MNESIA_BASE=str(self.workdir / "mnesia"),
            RABBITMQ_LOG_BASE=str(self.workdir / "log"),
            RABBITMQ_ENABLED_PLUGINS_FILE=str(self.workdir / "enabled_plugins"),
            RABBITMQ_PID_FILE=str(self.workdir / "rabbit.pid"),
            ERL_CRASH_DUMP=str(self.workdir / "erl_crash.dump"),
            RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS="-start_epmd false",
            RABBITMQ_CTL_ERL_ARGS="-start_epmd false",
        )

    def ctl(self, *args, timeout=120, check=True):
        return self.netns.run(
            [str(RABBIT_BIN / "rabbitmqctl"), "-n", self.nodename, *args],
            env=self.env, cwd=self.workdir, timeout=timeout, check=check,
        )

    def start(self, timeout=150):
        """Start in the foreground (the topology's Popen) and wait until the broker is up."""
        self.starts += 1
        self._start_epmd()
        log = open(self.workdir / f"server-{self.starts}.out", "w", encoding="utf-8")  # pylint: disable=consider-using-with
        self.proc = self.netns.popen([str(RABBIT_BIN / "rabbitmq-server")], env=self.env, cwd=self.workdir,
                                     stdout=log, stderr=subprocess.STDOUT)
        log.close()
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited ({self.proc.returncode}):\n{self.tail()}")
            res = self.ctl("await_startup", "--timeout", "20", timeout=60, check=False)
            if res.returncode == 0:
                return time.monotonic() - started
            if time.monotonic() > deadline:
                raise RuntimeError(f"RabbitMQ not up after {timeout} s:\n{res.stdout}{res.stderr}\n{self.tail()}")
            time.sleep(1)

    def _start_epmd(self):
        if self.epmd is not None and self.epmd.poll() is None:
            return
        self.epmd = self.netns.popen(["epmd"], cwd=self.workdir)  # foreground: no -daemon
        deadline = time.monotonic() + 20
        while self.netns.run(["epmd", "-names"], check=False, timeout=10).returncode != 0:
            if self.epmd.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("epmd did not start in the server namespace")
            time.sleep(0.2)

    def stop_epmd(self):
        if self.epmd is None:
            return
        if self.epmd.poll() is None:
            self.epmd.terminate()
            try:
                self.epmd.wait(10)
            except subprocess.TimeoutExpired:
                self.epmd.kill()
                self.epmd.wait(10)
        self.epmd = None

    def stop(self, timeout=60):
        """rabbitmqctl stop, then make sure the beam is gone (SIGKILL as a last resort)."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.ctl("stop", timeout=timeout, check=False)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                from harness.proc import signal_group  # pylint: disable=import-outside-toplevel

                signal_group(self.proc.pid, signal.SIGKILL)
                self.proc.wait(10)
        self.proc = None

    def tail(self, lines=40):
        text = []
        for path in sorted(self.workdir.glob("server-*.out")) + sorted((self.workdir / "log").glob("*.log")):
            content = path.read_text(errors="replace").splitlines()[-lines:]
            text.append(f"--- {path.name}\n" + "\n".join(content))
        return "\n".join(text)


def processes_matching(*markers):
    """(pid, cmdline) of live processes whose command line contains any marker."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            status = (entry / "status").read_text()
        except OSError:
            continue
        if "State:\tZ" in status:
            continue
        if any(m in cmdline for m in markers):
            found.append((int(entry.name), cmdline.strip()))
    return found


def wait_gone(pids, timeout=15):
    """Pids (of ``pids``) still alive after ``timeout`` seconds (zombies count as gone)."""
    deadline = time.monotonic() + timeout
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if _alive(p)]
        if alive:
            time.sleep(0.2)
    return alive


def _alive(pid):
    try:
        status = pathlib.Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status


# --------------------------------------------------------------------------
# Salt, masterless, inside a namespace
# --------------------------------------------------------------------------


def write_minion(workdir, name, pillar):
    """A masterless minion (file_roots = the checkout's states + checkout) with pillar deskfleet:host:rabbitmq;
    it gets _modules only by syncing them, as a real host does."""
    from harness.masterless import Masterless  # pylint: disable=import-outside-toplevel

    minion = Masterless(pathlib.Path(workdir) / f"salt-{name}", minion_id=f"dfl-lab-{name}",
                        pillar_root=pathlib.Path(workdir) / f"pillar-{name}", checkout_modules=False,
                        extra_config={
                            "file_ignore_regex": [r"(^|/)\.(git|venv|ci|pytest_cache)(/|$)"],
                            "log_level_logfile": "info",
                        })
    minion.set_pillar("host_rabbitmq", {"deskfleet": {"host": {"rabbitmq": pillar}}})
    return minion


def salt_call(netns, minion, *args, timeout=240):
    """``salt-call --local`` inside ``netns``; returns (rc, parsed JSON 'local' data or None, completed process)."""
    from harness.masterless import local_return  # pylint: disable=import-outside-toplevel

    res = minion.run(*args, netns=netns, timeout=timeout)
    try:
        data = local_return(res)
    except ValueError:
        data = None
    return res.returncode, data, res


def state_failures(data):
    return {k: v for k, v in (data or {}).items() if isinstance(v, dict) and v.get("result") is False}


# --------------------------------------------------------------------------
# AMQP client (pika), one subprocess per experiment
# --------------------------------------------------------------------------


class AmqpClient:
    """``rabbitmq_support.py client ...`` in the client namespace; JSON events on stdout."""

    def __init__(self, netns, host, idle, deadline, queue_name, workdir):
        self.events = queue.Queue()
        self.stderr_path = pathlib.Path(workdir) / f"client-{queue_name}.err"
        self._err = open(self.stderr_path, "w", encoding="utf-8")  # pylint: disable=consider-using-with
        self.proc = netns.popen(
            [sys.executable, str(pathlib.Path(__file__).resolve()), "client", "--host", host, "--idle", str(idle),
             "--deadline", str(deadline), "--queue", queue_name],
            stdout=subprocess.PIPE, stderr=self._err, text=True,
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stdout:
            line = line.strip()
            if line.startswith("{"):
                self.events.put(json.loads(line))
        self.events.put({"event": "eof"})

    def expect(self, event, timeout):
        """The next event named ``event`` (fails on eof or timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"AMQP client: no '{event}' within {timeout} s\n{self.stderr()}")
            try:
                item = self.events.get(timeout=left)
            except queue.Empty:
                continue
            if item.get("event") == event:
                return item
            if item.get("event") in ("eof", "error"):
                raise AssertionError(f"AMQP client ended before '{event}': {item}\n{self.stderr()}")

    def stderr(self):
        self._err.flush()
        return self.stderr_path.read_text(errors="replace")[-3000:]

    def close(self):
        if self.proc.poll() is None:
            from harness.proc import signal_group  # pylint: disable=import-outside-toplevel

            signal_group(self.proc.pid, signal.SIGKILL)
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            pass
        self._err.close()


class _Deadline(Exception):
    pass


def client_main(argv):
    """Connect, prove a round trip, idle ``--idle`` s, then one round trip within ``--deadline`` s.

    Events (one JSON object per line): ``connected`` (negotiated heartbeat),
    ``idle_done``, ``result`` (ok, idle_s, roundtrip_s or error). A connection a
    firewall cut silently does not fail: the publish confirm just never comes,
    so the deadline (SIGALRM) decides.
    """
    import argparse  # pylint: disable=import-outside-toplevel

    import pika  # pylint: disable=import-outside-toplevel

    parser = argparse.ArgumentParser(prog="rabbitmq_support.py client")
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, default=5672)
    parser.add_argument("--idle", type=float, required=True)
    parser.add_argument("--deadline", type=float, required=True)
    parser.add_argument("--queue", required=True)
    args = parser.parse_args(argv)

    def emit(**data):
        print(json.dumps(data), flush=True)

    def on_alarm(_signum, _frame):
        raise _Deadline()

    def roundtrip(channel, body):
        started = time.monotonic()
        channel.basic_publish("", args.queue, body.encode(), mandatory=True)  # confirm mode: waits for the ack
        while True:
            _method, _props, got = channel.basic_get(args.queue, auto_ack=True)
            if got is not None:
                return got.decode(), time.monotonic() - started
            time.sleep(0.05)

    signal.signal(signal.SIGALRM, on_alarm)
    params = pika.ConnectionParameters(
        host=args.host, port=args.port, credentials=pika.PlainCredentials("guest", "guest"),
        connection_attempts=10, retry_delay=1, socket_timeout=5,
    )
    try:
        signal.setitimer(signal.ITIMER_REAL, 60)
        conn = pika.BlockingConnection(params)
        channel = conn.channel()
        channel.confirm_delivery()
        channel.queue_declare(args.queue)
        channel.queue_purge(args.queue)
        roundtrip(channel, "before-idle")
        signal.setitimer(signal.ITIMER_REAL, 0)
    except (_Deadline, pika.exceptions.AMQPError, OSError) as exc:
        emit(event="error", error=f"connect: {exc!r}")
        os._exit(2)
    emit(event="connected", heartbeat=getattr(conn._impl.params, "heartbeat", None))  # pylint: disable=protected-access
    started = time.monotonic()
    conn.sleep(args.idle)  # idle, but pika still serves AMQP heartbeats if they fall due
    idle_s = time.monotonic() - started
    emit(event="idle_done", idle_s=round(idle_s, 1))
    body = f"after-idle-{idle_s:.1f}"
    try:
        signal.setitimer(signal.ITIMER_REAL, args.deadline)
        got, took = roundtrip(channel, body)
        signal.setitimer(signal.ITIMER_REAL, 0)
        emit(event="result", ok=got == body, idle_s=round(idle_s, 1), roundtrip_s=round(took, 3), body=got)
    except _Deadline:
        emit(event="result", ok=False, idle_s=round(idle_s, 1),
             error=f"no broker answer within {args.deadline:g} s: silently dead")
    except (pika.exceptions.AMQPError, OSError) as exc:
        emit(event="result", ok=False, idle_s=round(idle_s, 1), error=repr(exc))
    os._exit(0)  # a dead connection cannot be closed politely: do not wait for it


if __name__ == "__main__":
    if sys.argv[1:2] == ["client"]:
        client_main(sys.argv[2:])
    else:
        sys.exit("usage: rabbitmq_support.py client --host H --idle S --deadline S --queue Q")
