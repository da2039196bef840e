"""
The ingest bench's paths, each measured on its own master: bus (no engine, a bare listener
counts), deskfleet (the shipped tc_ingest engine), naive (reactor -> runner per event), the
tail probe, store only (signed events fired straight onto the bus) and the engine draining a
queued backlog. Results go to ``self.results``; ``bench.ingest_summary`` reads them.
"""

import json
import os
import pathlib
import re
import signal
import statistics
import time

from bench import ingest_probe as probe
from bench import ingest_store as store_mod
from bench.ingest_lab import IngestLab, say


def _master_ms(r):
    """
    Master process-group CPU ms per event sent to it, over the path's whole run. Where a path
    had not finished when its wait ended (the naive one at its cap), the work still queued is
    not counted: a lower bound (``unfinished_at_cap`` says so).
    """
    return round(r["cpu_s"]["master"] * 1000 / r["fired"], 3) if r.get("fired") else None


class IngestBench(IngestLab):
    # -- paths
    def run(self, only):
        """bus and deskfleet interleaved round by round (both masters up), then store only, then naive."""
        labs = {}
        try:
            if only & {"bus", "deskfleet"}:
                say(f"\n== 1+3. bus and deskfleet, interleaved: {self.rounds} rounds of "
                    f"{self.per_minion * self.n_minions} events each, alternating which goes first")
                say("   bus: a master WITHOUT the tc_ingest engine, a bare listener counts on the bus (first seen -> last counted); "
                    "its rate is what these request-at-a-time minions offer, not a master limit")
                say("   deskfleet: the shipped config (tc_ingest engine, batch 500 / flush 0.5 s), the engine the only bus "
                    "consumer (first sent -> last stored)")
            for path in ("bus", "deskfleet"):
                if path in only:
                    labs[path] = self.start(path)
            store = store_mod.Store(labs["deskfleet"][0]) if "deskfleet" in labs else None
            order = [p for p in ("bus", "deskfleet") if p in labs]
            for rnd in range(self.rounds if labs else 0):
                for path in order if rnd % 2 == 0 else order[::-1]:
                    master, minions = labs[path]
                    seq0 = rnd * self.per_minion + 1
                    if path == "bus":
                        self.round_bus(master, minions, rnd, seq0)
                    else:
                        self.round_deskfleet(master, minions, store, rnd, seq0)
            self.results["bus"] = self._median("bus")
            self.results["deskfleet"] = self._median("deskfleet")
            if "bus" in labs:
                master, minions = labs["bus"]
                keys = {m.name: self._minion_key(m) for m in minions}
                self.results["direct_bus"] = self.direct_bus(master, keys, self.rounds * self.per_minion + 1)
                self.stop(*labs.pop("bus"))
            if "deskfleet" in labs:
                master, minions = labs["deskfleet"]
                keys = {m.name: self._minion_key(m) for m in minions}
                seq0 = self.rounds * self.per_minion + 1
                self.results["tail"] = self.tail_probe(master, store, keys, seq0)
                self.results["store"] = self.store_only(master, store, keys, seq0 + 100)
                self.results["deskfleet_counters"] = store.counters()
                store.close()
                self.stop(*labs.pop("deskfleet"))
        finally:
            for master, minions in labs.values():
                self.stop(master, minions)
        if "naive" in only:
            self.path_naive()

    def _median(self, path):
        rounds = self.results.get(f"{path}_rounds", [])
        if not rounds:
            return {}
        eps = sorted(r["eps"] for r in rounds)
        res = {
            "eps": statistics.median(eps),
            "eps_rounds": [round(e, 1) for e in eps],
            "fired": sum(r["fired"] for r in rounds),
            "lost": sum(r["lost"] for r in rounds),
        }
        cpu = [m for m in (_master_ms(r) for r in rounds) if m is not None]
        res["master_cpu_ms_per_event"] = statistics.median(cpu) if cpu else None
        if path == "deskfleet":
            res["stored"] = sum(r["stored"] for r in rounds)
            res["max_last_sent_to_stored_s"] = max(r["last_sent_to_stored_s"] for r in rounds)
        return res

    def round_bus(self, master, minions, rnd, seq0):
        r = self.firehose(master, minions, self.per_minion, f"bus{rnd}", seq0=seq0)
        span = (r["bus_last"] or 0) - (r["bus_first"] or 0)
        r["eps"] = r["bus_distinct"] / span if span > 0 else 0.0
        r["lost"] = r["fired"] - r["bus_distinct"]
        say(f"   round {rnd + 1} bus:       fired {r['fired']} (send errors {r['send_errors']}), counted {r['bus_count']} "
            f"({r['bus_distinct']} distinct) in {span:.2f} s first->last: {r['eps']:6.1f} events/s | "
            f"CPU/event {store_mod.cpu_text(r['cpu_ms_per_event'])}")
        if rnd == 0:
            say(f"     (per-minion send rates {r['minion_send_eps']} ev/s; payload ~{r['payload_bytes']} bytes on the bus)")
        self.results.setdefault("bus_rounds", []).append(r)

    def round_deskfleet(self, master, minions, store, rnd, seq0):
        r = self.firehose(master, minions, self.per_minion, f"deskfleet{rnd}", store=store, stall=10.0, cap=120.0, seq0=seq0)
        span = (r["t_stored"] or 0) - (r["first_sent"] or 0)
        r["eps"] = r["stored"] / span if span > 0 else 0.0
        r["lost"] = r["fired"] - r["stored"]
        r["last_sent_to_stored_s"] = round((r["t_stored"] or 0) - (r["last_sent"] or 0), 3)
        say(f"   round {rnd + 1} deskfleet: fired {r['fired']} (send errors {r['send_errors']}), stored {r['stored']} "
            f"in {span:.2f} s first sent->last stored: {r['eps']:6.1f} events/s; lost {r['lost']}; "
            f"last sent->stored {r['last_sent_to_stored_s']} s | CPU/event {store_mod.cpu_text(r['cpu_ms_per_event'])}")
        self.results.setdefault("deskfleet_rounds", []).append(r)

    def path_naive(self):
        say(f"\n== 2. naive: {self.naive_per_minion * self.n_minions} events, reactor -> runner tc_naive.store per event (same store, same validation)")
        master, minions = self.start("naive")
        store = store_mod.Store(master)
        try:
            r = self.firehose(master, minions, self.naive_per_minion, "naive", store=store, stall=20.0, cap=self.naive_cap)
            r["seats"] = store.seats()
            r["counters"] = store.counters()
            log = pathlib.Path(master.opts["log_file"]).read_text(errors="replace")
        finally:
            store.close()
            self.stop(master, minions)
        span = (r["t_stored"] or 0) - (r["first_sent"] or 0)
        r["eps"] = r["stored"] / span if span > 0 else 0.0
        r["lost"] = r["fired"] - r["stored"]
        r["master_cpu_ms_per_event"] = _master_ms(r)
        # rows still arriving when the cap hit are a backlog, not (yet) a loss
        r["unfinished_at_cap"] = r["wait_ended_by"] == "cap"
        errors = [line for line in log.splitlines() if "[ERROR" in line or "[CRITICAL" in line]
        r["error_lines"] = len(errors)
        r["taskpool_full"] = sum("TaskPool queue is full" in line for line in errors)
        r["slow_subscriber_discards"] = log.count("Publisher discarding slow subscriber")
        # known noise (FACTS.md): asyncio "Task was destroyed but it is pending"
        other = [line for line in errors if "Task was destroyed but it is pending" not in line]
        r["error_lines_not_noise"] = len(other)
        r["error_samples"] = sorted({re.sub(r"^\S+ \S+ ", "", line)[:160] for line in other})[:3]
        say(f"   fired {r['fired']} (send errors {r['send_errors']}) in {r['last_sent'] - r['first_sent']:.1f} s, "
            f"stored (accepted) {r['stored']} in {span:.1f} s from first sent to last stored: {r['eps']:.1f} events/s")
        say(f"   CPU per event: {store_mod.cpu_text(r['cpu_ms_per_event'])}; master per event sent {r['master_cpu_ms_per_event']:.2f} ms")
        if r["unfinished_at_cap"]:
            say(f"   NOTE: still storing when the {self.naive_cap:.0f} s cap hit: 'lost' includes a backlog not yet stored")
        say(f"   lost {r['lost']} ({r['lost'] / max(1, r['fired']):.1%}); master log: {r['error_lines']} ERROR lines "
            f"({r['error_lines'] - r['error_lines_not_noise']} asyncio noise), "
            f"{r['taskpool_full']} 'TaskPool queue is full' (reactor_worker_hwm {master.opts['reactor_worker_hwm']}, "
            f"{master.opts['reactor_worker_threads']} threads), {r['slow_subscriber_discards']} slow bus subscribers discarded")
        for sample in r["error_samples"]:
            say(f"     ERROR: {sample}")
        self.results["naive"] = r

    def tail_probe(self, master, store, keys, seq0, n=7):
        say(f"\n   tail probe: {n} events (< batch_size 500) straight onto the bus, then nothing at all")
        time.sleep(1.0)  # let the previous run's last flush settle
        base = store.accepted()
        listener = probe.Listener(master, self.work, "tail", expect=10**9, idle=4.0, deadline=30)
        proc, out, _ = self._fire_direct(master, dict(list(keys.items())[:1]), n, seq0, "tail")
        proc.wait(60)
        probe.reap(proc)
        fire = json.loads(out.read_text())
        got, t_got = store.wait(base + n, stall=5.0, cap=10.0)
        bus = listener.result(timeout=40)
        later = [e for e in bus.get("all_after_last_tc", []) if e[1] < t_got]
        ok = got - base == n and bus.get("count") == n and not later
        res = {
            "events": n,
            "stored": got - base,
            "fired_to_stored_s": round(t_got - fire["last"], 3),
            "bus_events_between": len(later),
            "ok": ok,
        }
        say(f"   tail probe: stored {res['stored']}/{n} {res['fired_to_stored_s']} s after the last was fired, "
            f"with {res['bus_events_between']} bus events in between -> {'flushed on time' if ok else 'NOT flushed'}")
        return res

    def store_only(self, master, store, keys, seq0):
        n = self.store_events
        say(f"\n== 4. store only: {self.rounds} rounds of {n} signed events fired straight onto the deskfleet master's bus "
            f"(get_master_event().fire_event from {self.firers} processes, no minions)")
        rounds = []
        for rnd in range(self.rounds):
            time.sleep(1.0)  # previous flush settles
            base = store.accepted()
            firers, go = self._fire_parallel(master, keys, n, seq0, f"store{rnd}")
            seq0 += n
            cpu0 = store_mod.group_cpu(master.proc.pid, "engines.tc_ingest")
            pub0 = store_mod.group_cpu(master.proc.pid, "EventPublisher")
            go.write_text("go")
            got, t_got = store.wait(
                base + n, stall=10.0, cap=120.0, busy=lambda: any(p.poll() is None for p, _, _ in firers), interval=0.01
            )
            engine_ms = (store_mod.group_cpu(master.proc.pid, "engines.tc_ingest") - cpu0) * 1000 / max(1, n)
            pub_ms = (store_mod.group_cpu(master.proc.pid, "EventPublisher") - pub0) * 1000 / max(1, n)
            fire = self._collect(firers)
            stored = got - base
            span = t_got - fire["first"]
            r = {
                "fired": fire["fired"],
                "stored": stored,
                "lost": fire["fired"] - stored,
                "sign_s": fire["sign_s"],
                "fire_eps": round(fire["fired"] / max(1e-9, fire["last"] - fire["first"]), 1),
                "last_fired_to_stored_s": round(t_got - fire["last"], 3),
                "engine_cpu_ms_per_event": round(engine_ms, 3),
                "publisher_cpu_ms_per_event": round(pub_ms, 3),
                "eps": stored / span if span > 0 else 0.0,
            }
            say(f"   round {rnd + 1}: fired {r['fired']} in {fire['last'] - fire['first']:.2f} s ({r['fire_eps']:.0f}/s onto the bus), "
                f"stored {stored} in {span:.2f} s first fired->last stored: {r['eps']:6.0f} events/s; lost {r['lost']}; "
                f"last fired->stored {r['last_fired_to_stored_s']} s; CPU/event engine {engine_ms * 1000:.0f} us, "
                f"bus publisher {pub_ms * 1000:.0f} us")
            rounds.append(r)
        eps = sorted(r["eps"] for r in rounds)
        cpu = statistics.median(r["engine_cpu_ms_per_event"] for r in rounds)
        res = {
            "eps": statistics.median(eps),
            "eps_rounds": [round(e, 1) for e in eps],
            "fire_eps": statistics.median(r["fire_eps"] for r in rounds),
            "lost": sum(r["lost"] for r in rounds),
            "engine_cpu_ms_per_event": cpu,
            "rounds": rounds,
        }
        say(f"   median {res['eps']:.0f} events/s; the engine spends ~{cpu * 1000:.0f} us CPU per event "
            f"(~{1000 / max(1e-9, cpu):.0f} events/s if it had a core to itself)")
        res["drain"] = self.engine_drain(master, store, keys, seq0)
        return res

    def direct_bus(self, master, keys, seq0):
        """The store-only firehose on the bus master (no engine): how fast the bus itself carries it."""
        n = self.store_events
        say(f"\n   direct-fire bus rate (the store-only firehose, counted by the bare listener on the engine-less bus master)")
        rounds = []
        for rnd in range(self.rounds):
            listener = probe.Listener(master, self.work, f"direct{rnd}", expect=n, idle=5.0, deadline=120)
            firers, go = self._fire_parallel(master, keys, n, seq0, f"direct{rnd}")
            seq0 += n
            cpu0 = store_mod.group_cpu(master.proc.pid, "EventPublisher")
            go.write_text("go")
            fire = self._collect(firers)
            bus = listener.result(timeout=150)
            pub_ms = (store_mod.group_cpu(master.proc.pid, "EventPublisher") - cpu0) * 1000 / max(1, n)
            span = (bus.get("last") or 0) - fire["first"]
            r = {
                "fired": fire["fired"],
                "counted": bus.get("distinct", 0),
                "fire_eps": round(fire["fired"] / max(1e-9, fire["last"] - fire["first"]), 1),
                "eps": bus.get("distinct", 0) / span if span > 0 else 0.0,
                "publisher_cpu_ms_per_event": round(pub_ms, 3),
            }
            say(f"   round {rnd + 1}: fired {r['fired']} ({r['fire_eps']:.0f}/s), counted {r['counted']} on the bus, "
                f"first fired->last counted {span:.2f} s: {r['eps']:6.0f} events/s; bus publisher CPU {pub_ms * 1000:.0f} us/event")
            rounds.append(r)
        return {"eps": statistics.median(r["eps"] for r in rounds), "eps_rounds": sorted(round(r["eps"], 1) for r in rounds), "rounds": rounds}

    def engine_drain(self, master, store, keys, seq0):
        """
        Diagnostic: the engine alone, without the feeders' pace. The engine
        process is paused (SIGSTOP) while the events are fired, so they queue
        in its bus socket; then it is resumed and timed until all are stored.
        """
        n = self.store_events
        pid = store_mod.engine_pid(master)
        if pid is None:
            say("   engine drain: tc_ingest engine process not found; skipped")
            return {}
        time.sleep(1.0)
        base = store.accepted()
        firers, go = self._fire_parallel(master, keys, n, seq0, "drain")
        os.kill(pid, signal.SIGSTOP)
        try:
            go.write_text("go")
            fire = self._collect(firers)
            time.sleep(0.5)
        finally:
            t_resume = time.time()
            os.kill(pid, signal.SIGCONT)
        got, t_got = store.wait(base + n, stall=10.0, cap=60.0, interval=0.01)
        stored = got - base
        span = t_got - t_resume
        res = {"fired": fire["fired"], "stored": stored, "lost": fire["fired"] - stored, "eps": stored / span if span > 0 else 0.0}
        say(f"   engine drain (diagnostic): {n} events queued while the engine was paused, stored {stored} "
            f"{span:.2f} s after it resumed: {res['eps']:.0f} events/s; lost {res['lost']}")
        return res

    # -- summary
