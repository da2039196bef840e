"""
The ingest bench's lab: tc masters and bench minions from the shipped config (harness.lab),
the minion firehose (``tc_firehose.fire`` on every minion at once) and the direct firers
(signed events straight onto a master's bus).
"""

# pylint: disable=import-outside-toplevel

import json
import os
import pathlib
import time

from bench import ingest_probe as probe
from bench import ingest_store as store_mod
from harness.lab import stop_daemons

BENCH = pathlib.Path(__file__).resolve().parent


def say(text=""):
    print(text, flush=True)


class IngestLab:
    """The bench's masters and minions (harness.lab), its minion firehose and its direct firers."""

    def __init__(self, base, minions, per_minion, naive_per_minion, store_events, naive_cap, firers=3, rounds=3):
        from harness import saltconf  # pylint: disable=import-outside-toplevel
        from harness.lab import Lab  # pylint: disable=import-outside-toplevel

        self.saltconf = saltconf
        self.base = base
        self.work = base / "work"
        self.work.mkdir(parents=True)
        (base / "pillar-empty").mkdir()
        self.lab = Lab(base)
        self.n_minions = minions
        self.per_minion = per_minion
        self.naive_per_minion = naive_per_minion
        self.store_events = store_events
        self.naive_cap = naive_cap
        self.firers = firers
        self.rounds = rounds
        self.naive_opts = {}
        self.results = {}

    # -- daemons
    def master_config(self, path):
        conf = self.saltconf.lab_master_config("tc", self.base / "etc")
        # The bench's events come from the firehose only: no pillar, so no real
        # tc_status beacon on the bench minions adding start/heartbeat events.
        conf["pillar_roots"] = {"base": [str(self.base / "pillar-empty")]}
        if path in ("bus", "naive"):
            conf.pop("engines", None)
        for engine in conf.get("engines", []):  # a firehose of a few seats: measure throughput, not the per-seat limit
            engine.get("tc_ingest", {}).update(rate_limit=10**9)
        if path == "naive":
            conf["runner_dirs"] = list(conf.get("runner_dirs", [])) + [str(BENCH / "_runners")]
            conf["reactor"] = [{"salt/beacon/*/tc_status/*": [str(BENCH / "reactor" / "tc_naive.sls")]}]
            conf.update(self.naive_opts)
        return conf

    def start(self, path):
        from harness import tcroot  # pylint: disable=import-outside-toplevel
        from harness.lab import Master  # pylint: disable=import-outside-toplevel

        t0 = time.time()
        master = Master(self.lab, f"{path}-master", self.master_config(path))
        self.lab.daemons.append(master)
        master.start()
        minions = []
        for i in range(self.n_minions):
            seat = f"{path}-tc{i}"
            root = tcroot.make(self.base / "roots" / seat, i + 1, session=(f"desk-{i:04d}", "connected"))
            conf = self.saltconf.tc_minion_config(root)
            conf["module_dirs"] = [str(BENCH / "_modules")]
            minion = self.lab.minion(seat, master, **conf)
            # the bench measures ingest, not enrollment: keys accepted up front, as salt-cloud seeds them
            self.saltconf.preseed_key(master.opts, seat, minion.root / "etc/salt/pki/minion")
            minions.append(minion)
        master.wait_ready()
        for minion in minions:
            minion.start()
        master.wait_minions([m.name for m in minions], timeout=180)
        say(f"   {master.name} + {len(minions)} minions up in {time.time() - t0:.1f} s")
        return master, minions

    def stop(self, master, minions):
        t0 = time.time()
        stop_daemons([*minions, master], timeout=12)
        say(f"   {master.name} + {len(minions)} minions stopped in {time.time() - t0:.1f} s")

    # -- one minion firehose
    def firehose(self, master, minions, per_minion, name, store=None, stall=15.0, cap=120.0, seq0=1):
        """
        Fire ``per_minion`` events from every minion at once (``salt --async '*' tc_firehose.fire``).

        Without a store (bus ceiling) a bare listener is the only consumer and counts them.
        With a store (naive, deskfleet) the path's own consumer is the only one on the bus:
        no probe listener; the start is the first send by a minion (from the job returns,
        read afterwards from the master's job cache) and the end is the last increase of
        the store's ``accepted`` counter.
        """
        expect = per_minion * len(minions)
        base = store.accepted() if store else 0
        listener = None if store else probe.Listener(master, self.work, name, expect, returns=len(minions), deadline=cap + 120)
        cpu0 = store_mod.cpu_snapshot(master, minions)
        jid = probe.trigger(master, "*", "tc_firehose.fire", f"n={per_minion}", f"start_seq={seq0}")
        res = {"jid": jid, "requested": expect}
        if store is not None:
            stored, t_stored = store.wait(base + expect, stall=stall, cap=cap)
            res.update(stored=stored - base, t_stored=t_stored, wait_ended_by=store.why)
            cpu1 = store_mod.cpu_snapshot(master, minions)
            rets = self._job_returns(master, jid, len(minions))
        else:
            bus = listener.result(timeout=cap + 60)
            cpu1 = store_mod.cpu_snapshot(master, minions)
            rets = bus.get("returns", {})
            res.update(
                bus_count=bus.get("count", 0),
                bus_distinct=bus.get("distinct", 0),
                bus_first=bus.get("first"),
                bus_last=bus.get("last"),
                payload_bytes=bus.get("payload_bytes"),
            )
        if len(rets) != len(minions):
            say(f"   WARNING: {len(rets)}/{len(minions)} minion returns seen; 'fired' assumed to be the {expect} requested")
        res.update(
            fired=sum(r.get("sent", 0) for r in rets.values()) if len(rets) == len(minions) else expect,
            send_errors=sum(r.get("errors", 0) for r in rets.values()),
            minion_returns=len(rets),
            first_sent=min((r["first"] for r in rets.values() if r.get("first")), default=None),
            last_sent=max((r["last"] for r in rets.values() if r.get("last")), default=None),
            # CPU ms per event, by process group (live processes), while the firehose ran
            cpu_ms_per_event={k: round((cpu1[k] - cpu0[k]) * 1000 / max(1, expect), 3) for k in cpu0},
            cpu_s={k: round(cpu1[k] - cpu0[k], 3) for k in cpu0},
            minion_send_eps=[round(r["sent"] / r["send_s"], 1) for r in rets.values() if r.get("send_s")],
        )
        return res

    @staticmethod
    def _job_returns(master, jid, count, timeout=60):
        """The tc_firehose returns of job ``jid`` from the master's job cache."""
        deadline = time.time() + timeout
        while True:
            got = master.run("jobs.lookup_jid", jid) or {}
            rets = {m: r for m, r in got.items() if isinstance(r, dict) and "sent" in r}
            if len(rets) >= count or time.time() > deadline:
                return rets
            time.sleep(1)

    # -- paths
    @staticmethod
    def _minion_key(minion):
        import salt.config  # pylint: disable=import-outside-toplevel

        return os.path.join(salt.config.minion_config(str(minion.conf_dir / "minion"))["pki_dir"], "minion.pem")

    def _fire_direct(self, master, keys, n, seq0, name, go=None):
        out, ready = self.work / f"{name}.fire.json", self.work / f"{name}.fire.ready"
        proc = probe.start(
            [
                "_fire",
                "--master-conf", str(master.conf_dir / "master"),
                "--out", str(out), "--ready", str(ready), "--count", str(n), "--start-seq", str(seq0),
                *([f"--go={go}"] if go else []),
                *[f"--key={seat}={pem}" for seat, pem in keys.items()],
            ],
            self.work / f"{name}.fire.log",
        )
        return proc, out, ready

    def _fire_parallel(self, master, keys, n, seq0, name):
        """``self.firers`` processes sign their share of ``n`` events, then fire together on a go signal."""
        go = self.work / f"{name}.go"
        share = -(-n // self.firers)
        firers = [
            self._fire_direct(master, keys, min(share, n - j * share), seq0 + j * share, f"{name}{j}", go=go)
            for j in range(self.firers)
            if n - j * share > 0
        ]
        for proc, _, ready in firers:
            probe.wait_file(ready, proc, 120, "a direct firer to sign its events")
        return firers, go

    @staticmethod
    def _collect(firers):
        outs = []
        for proc, out, _ in firers:
            proc.wait(120)
            probe.reap(proc)
            outs.append(json.loads(out.read_text()))
        return {
            "fired": sum(o["fired"] for o in outs),
            "first": min(o["first"] for o in outs),
            "last": max(o["last"] for o in outs),
            "sign_s": max(o["sign_s"] for o in outs),
        }
