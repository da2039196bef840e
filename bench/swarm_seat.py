"""
Simulated thin clients, many per process (asyncio), speaking Salt 3008's own client
code: ``salt.crypt.AsyncAuth`` sign-in, ``AsyncPubChannel`` (a publication under a
new AES key makes the seat sign in again, exactly as a minion does) and
``AsyncReqChannel`` carrying the ``tc_status`` beacon's real signed payload
(``_beacons/tc_status.build_payload`` + ``canonical``, the seat's own key) as a
``_minion_event`` with a one-entry ``events`` list, as the minion forwards beacons.

``python -m bench.swarm_seat SPEC.json`` reads one JSON command per line on stdin
and answers one JSON line on stdout: ``login``, ``beat``, ``mark``, ``stats``, ``quit``.
Counted per seat: every ``_auth`` request put on the wire (resends included),
every completed sign-in, every event acknowledged or failed.
"""

import asyncio
import base64
import collections
import copy
import importlib.util
import json
import logging
import os
import pathlib
import random
import sys
import time
import types

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
AUTH_SENDS = collections.defaultdict(list)  # seat -> times an _auth request went out
SIGNED_IN = collections.defaultdict(list)  # seat -> times a sign-in completed


def _beacon():
    spec = importlib.util.spec_from_file_location("deskfleet_tc_status_swarm", CHECKOUT / "_beacons" / "tc_status.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _patch_salt():
    """
    Wrap Salt's clear request path and sign-in once, so every seat's auth traffic is
    counted. And: a simulated seat has no local minion event bus (a real minion's,
    which the master never sees); Salt fires to it synchronously after each sign-in
    and on connect, and with no bus each fire waits out its connect timeout and
    stalls every seat of the process: here it is a no-op.
    """
    import salt.channel.client  # pylint: disable=import-outside-toplevel
    import salt.crypt  # pylint: disable=import-outside-toplevel
    import salt.transport.zeromq  # pylint: disable=import-outside-toplevel
    import salt.utils.event  # pylint: disable=import-outside-toplevel

    salt.utils.event.SaltEvent.fire_event = lambda self, data, tag, timeout=1000: True
    salt.utils.event.get_event = lambda *args, **kwargs: _NoBus()  # building one: 5 ms a channel
    _share_zmq_contexts()
    _trust_own_keys()
    _list_entry_points_once()

    # The publication reader wakes every 0.3 s to check it is still wanted: nothing for one
    # minion, but 250 seats in one process spent 17% of a core on it (10,000 seats: 7 cores).
    # A poll returns as soon as a publication arrives, so a longer wait changes nothing on the wire.
    recv = salt.transport.zeromq.PublishClient.recv

    async def patient_recv(self, timeout=None):
        return await recv(self, 10 if timeout == 0.3 else timeout)

    salt.transport.zeromq.PublishClient.recv = patient_recv

    # Same for the request client's idle loop (``wait_for(queue.get(), 0.3)``): the get
    # returns as soon as a request is queued, so only idle wake-ups go away.
    wait_for = asyncio.wait_for

    async def patient_wait_for(aw, timeout):
        return await wait_for(aw, 10 if timeout == 0.3 else timeout)

    salt.transport.zeromq.asyncio = types.SimpleNamespace(**dict(vars(asyncio), wait_for=patient_wait_for))

    transfer = salt.channel.client.AsyncReqChannel._uncrypted_transfer  # pylint: disable=protected-access
    sign_in = salt.crypt.AsyncAuth.sign_in

    async def counted_transfer(self, load, timeout):
        if isinstance(load, dict) and load.get("cmd") == "_auth":
            AUTH_SENDS[load.get("id")].append(time.time())
        return await transfer(self, load, timeout)

    async def counted_sign_in(self, *args, **kwargs):
        creds = await sign_in(self, *args, **kwargs)
        if isinstance(creds, dict) and "aes" in creds:
            SIGNED_IN[self.opts["id"]].append(time.time())
        return creds

    salt.channel.client.AsyncReqChannel._uncrypted_transfer = counted_transfer  # pylint: disable=protected-access
    salt.crypt.AsyncAuth.sign_in = counted_sign_in


def _share_zmq_contexts():
    """
    One ZeroMQ context of each kind per process instead of one per channel. libzmq starts two
    threads per context (I/O and reaper) and Salt opens one per channel: 4 threads a seat, so
    10,000 seats need 40,000 threads, over this box's ``kernel.pid_max``. Salt closes every
    socket itself before it destroys the channel's context, so the shared one ignores destroy.
    A real thin client runs one seat, with its own contexts: nothing on the wire changes.
    """
    import zmq.asyncio  # pylint: disable=import-outside-toplevel
    import zmq.eventloop.future  # pylint: disable=import-outside-toplevel

    def one_of(cls):
        shared = type(f"Shared{cls.__name__}", (cls,), {"destroy": lambda *a, **k: None, "term": lambda self: None})
        context = shared(io_threads=2)
        context.max_sockets = 8192  # libzmq's default is 1023 per context; a seat holds two, a sign-in one more
        return lambda *args, **kwargs: context

    zmq.asyncio.Context = one_of(zmq.asyncio.Context)
    zmq.eventloop.future.Context = one_of(zmq.eventloop.future.Context)


class _NoBus:
    """The local event bus a simulated seat does not have (see ``_patch_salt``)."""

    def fire_event(self, *args, **kwargs):
        return True

    def destroy(self):
        pass

    close = destroy

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def _list_entry_points_once():
    """
    Salt lists the installed packages' entry points for every loader it builds (one per seat's
    key cache), cached for 0.5 s: 5 ms a seat. Nothing is installed while the bench runs.
    """
    import salt.utils.entrypoints  # pylint: disable=import-outside-toplevel

    # the timed wrapper clears its inner lru_cache every 0.5 s; the inner one alone never expires
    salt.utils.entrypoints.iter_entry_points = salt.utils.entrypoints.iter_entry_points.__wrapped__


def _trust_own_keys():
    """
    Load the seats' private keys without OpenSSL's RSA consistency check: 59 ms of CPU per
    2048-bit key here, and Salt loads a seat's key more than once. A real thin client pays
    it for its one key; 250 seats in one process paid about a minute, and 20 processes
    starting at once starved the master they were measuring (load 61, the 10,000 step).
    The keys are the bench's own (``bench/swarm_keys.py``); the master never loads them.
    """
    from cryptography.hazmat.primitives import serialization  # pylint: disable=import-outside-toplevel

    load = serialization.load_pem_private_key

    def trusted(data, password, backend=None, *, unsafe_skip_rsa_key_validation=True):
        return load(data, password, backend, unsafe_skip_rsa_key_validation=unsafe_skip_rsa_key_validation)

    serialization.load_pem_private_key = trusted


class Seat:
    """One thin client: its opts, channels, beacon state and counters."""

    def __init__(self, opts, index, beacon, key, facts):
        self.opts, self.index, self.beacon, self.key = opts, index, beacon, key
        self.id = opts["id"]
        self.facts = dict(facts, serial=f"TC{index:06d}", asset_id=f"A-{index:05d}")
        self.state = {"seq": 0, "epoch": int(time.time()) + index % 1000}
        self.acked, self.failed, self.latency = [], [], []
        self.pub = self.req = None
        self.pubs_seen = []  # times a publication reached this seat (decoded)

    async def login(self, loop):
        import salt.channel.client  # pylint: disable=import-outside-toplevel

        self.pub = salt.channel.client.AsyncPubChannel.factory(self.opts, io_loop=loop)
        await self.pub.connect()
        self.pub.on_recv(self._on_publish)
        self.req = salt.channel.client.AsyncReqChannel.factory(self.opts, io_loop=loop)
        return await self.send("start")

    async def _on_publish(self, _payload):
        self.pubs_seen.append(time.time())

    def _event(self, reason):
        self.state["seq"] += 1
        now = time.time()
        changed = sorted(self.facts) if reason == "start" else (["session_state"] if reason == "change" else [])
        if reason == "change":
            self.facts["session_state"] = "connected" if self.facts.get("session_state") != "connected" else "none"
        payload = self.beacon.build_payload(self.id, self.state, reason, changed, self.facts, now, 300)
        payload["sig"] = base64.b64encode(
            self.key.sign(self.beacon.canonical(payload), algorithm=self.beacon.SIGN_ALGORITHM)
        ).decode()
        payload["id"] = self.id
        return {"tag": f"salt/beacon/{self.id}/tc_status/status", "data": payload, "beacon_name": "tc_status"}

    async def send(self, reason):
        event = self._event(reason)
        seq = self.state["seq"]
        load = {"id": self.id, "cmd": "_minion_event", "pretag": None, "events": [event]}
        t0 = time.time()
        try:
            await self.req.send(load, timeout=60, tries=self.opts["return_retry_tries"])
        except Exception as exc:  # pylint: disable=broad-except
            self.failed.append([seq, type(exc).__name__])
            return False
        self.latency.append(time.time() - t0)
        self.acked.append(seq)
        return True

    def stats(self, mark):
        return {
            "epoch": self.state["epoch"],
            "acked": self.acked,
            "failed": self.failed,
            "auth_sends": sum(1 for t in AUTH_SENDS[self.id] if t >= mark),
            "signed_in": [t for t in SIGNED_IN[self.id] if t >= mark],
            "pubs_seen": [t for t in self.pubs_seen if t >= mark],
        }


def _seat_opts(spec):
    """One parsed minion config (the template plus the run's overrides), copied per seat."""
    import salt.config  # pylint: disable=import-outside-toplevel

    # a plain dict: Salt's copy-on-write OptsDict is iterated key by key in Python each time a
    # channel copies it (every sign-in builds one): about 3 ms a copy, 330 keys
    base = dict(salt.config.minion_config(spec["minion_conf"]))
    base.update(master_ip="127.0.0.1", master_uri=f"tcp://127.0.0.1:{base['master_port']}")
    seats = []
    for index, pki in zip(spec["indices"], spec["pki_dirs"]):
        opts = copy.deepcopy(base)
        opts.update(id=pki.rsplit("/", 1)[-1], pki_dir=pki, cachedir=f"{spec['run_dir']}/cache/{index}")
        seats.append((index, opts))
    return seats


class Swarm:
    """This process's seats and the commands the bench sends them."""

    def __init__(self, spec):
        import salt.crypt  # pylint: disable=import-outside-toplevel

        beacon = _beacon()
        facts = beacon.collect(beacon._conf({"root": spec["root"]}))  # pylint: disable=protected-access
        self.seats = [
            Seat(opts, index, beacon, salt.crypt.PrivateKey.from_file(f"{opts['pki_dir']}/minion.pem"), facts)
            for index, opts in _seat_opts(spec)
        ]
        self.mark = 0.0

    async def _spread(self, window, job, patience=150.0):
        """``job`` on every seat at a random moment of ``window``; a seat still waiting after ``patience`` s is stuck."""
        async def one(seat):
            await asyncio.sleep(random.uniform(0, window))
            try:
                return await asyncio.wait_for(job(seat), patience)
            except asyncio.TimeoutError:
                return None
            except Exception as exc:  # pylint: disable=broad-except
                logging.getLogger("swarm").warning("%s: %r", seat.id, exc)
                return False

        t0 = time.time()
        done = await asyncio.gather(*(one(s) for s in self.seats))
        return {"ok": done.count(True), "failed": done.count(False), "stuck": done.count(None), "wall_s": time.time() - t0}

    async def command(self, cmd, loop):
        if cmd["cmd"] == "login":
            return await self._spread(cmd["window"], lambda s: s.login(loop))
        if cmd["cmd"] == "beat":
            res = await self._spread(cmd["window"], lambda s: s.send(cmd.get("reason", "heartbeat")))
            lat = sorted(x for s in self.seats for x in s.latency[-1:])
            res["latency_p50_s"] = lat[len(lat) // 2] if lat else None
            res["latency_max_s"] = lat[-1] if lat else None
            return res
        if cmd["cmd"] == "mark":
            self.mark = time.time()
            return {"mark": self.mark}
        if cmd["cmd"] == "stats":
            return {s.id: s.stats(self.mark) for s in self.seats}
        raise ValueError(f"unknown command {cmd['cmd']!r}")


async def _serve(spec):
    import tornado.ioloop  # pylint: disable=import-outside-toplevel

    loop = tornado.ioloop.IOLoop.current()
    swarm = Swarm(spec)
    aloop = asyncio.get_running_loop()
    print(json.dumps({"ready": len(swarm.seats)}), flush=True)
    while True:
        line = await aloop.run_in_executor(None, sys.stdin.readline)
        if not line or json.loads(line)["cmd"] == "quit":
            return
        try:
            out = await swarm.command(json.loads(line), loop)
        except Exception as exc:  # pylint: disable=broad-except
            out = {"error": repr(exc)}
        print(json.dumps(out), flush=True)


def main(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    spec = json.loads(pathlib.Path(argv[0]).read_text())
    logging.basicConfig(level=os.environ.get("SWARM_LOG", "WARNING"), stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    _patch_salt()
    profile_dir = os.environ.get("SWARM_PROFILE")  # a directory: one cProfile dump per seat process
    dump = _profile_to(f"{profile_dir}/seat-{os.getpid()}.prof") if profile_dir else None
    asyncio.run(_serve(spec))
    if dump:
        dump()
    return 0


def _profile_to(path):
    """Profile this process until it ends (the bench stops seat processes with SIGTERM)."""
    import cProfile  # pylint: disable=import-outside-toplevel
    import signal  # pylint: disable=import-outside-toplevel

    prof = cProfile.Profile()

    def dump(*_):
        prof.disable()
        prof.dump_stats(path)
        os._exit(0)  # pylint: disable=protected-access

    signal.signal(signal.SIGTERM, dump)
    prof.enable()
    return dump

if __name__ == "__main__":
    sys.exit(main())
