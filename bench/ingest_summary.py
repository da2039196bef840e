"""
The ingest bench's summary: the human-readable lines and the JSON last line.

The fair comparison between the paths is master CPU per event (issue 15): the event rates
here are bounded by what a few request-at-a-time minions offer, not by the master, so no
capacity ("seats per master") is derived from them; ``make bench-swarm`` measures that.
"""

from bench.ingest_lab import say
from bench.ingest_store import foreign_salt

TARGETS = {"vs_bus": 0.9, "vs_naive": 8.0, "store_only_eps": 2000.0}


def _ratio(num, den):
    return num / den if num and den else None


def _ms(value):
    return "n/a" if value is None else f"{value:.2f} ms"


def summary(bench, wall):
    """Print the summary of ``bench.results``; return the JSON figures (CPU per event first)."""
    bus, naive, desk, tail, st = (bench.results.get(k, {}) for k in ("bus", "naive", "deskfleet", "tail", "store"))
    cpu = {
        "engine": desk.get("master_cpu_ms_per_event"),
        "naive": naive.get("master_cpu_ms_per_event"),
        "bus": bus.get("master_cpu_ms_per_event"),
    }
    naive_vs_engine = _ratio(cpu["naive"], cpu["engine"])
    offered, naive_eps, desk_eps = bus.get("eps", 0.0), naive.get("eps", 0.0), desk.get("eps", 0.0)
    vs_bus = _ratio(desk_eps, offered) or 0.0
    vs_naive = _ratio(desk_eps, naive_eps) or 0.0
    tail_ok = bool(desk) and desk.get("lost", 1) == 0 and bool(tail.get("ok"))
    store_eps = st.get("eps", 0.0)
    _print(bench, wall, cpu, naive_vs_engine, (offered, naive_eps, desk_eps, store_eps), (vs_bus, vs_naive, tail_ok))
    return {
        "bench": "ingest",
        "master_cpu_ms_per_event_engine": _round(cpu["engine"], 3),
        "master_cpu_ms_per_event_naive": _round(cpu["naive"], 3),
        "naive_unfinished_at_cap": naive.get("unfinished_at_cap"),
        "naive_vs_engine_cpu": _round(naive_vs_engine, 1),
        "master_cpu_ms_per_event_bus_only": _round(cpu["bus"], 3),
        "engine_cpu_ms_per_event_store_only": _round(st.get("engine_cpu_ms_per_event"), 3),
        "naive_lost": naive.get("lost"),
        "deskfleet_lost": desk.get("lost"),
        "tail_flushed": tail_ok,
        "minions": bench.n_minions,
        "offered_eps_by_minions": round(offered, 1),
        "deskfleet_eps": round(desk_eps, 1),
        "naive_eps": round(naive_eps, 1),
        "deskfleet_vs_offered": round(vs_bus, 3),
        "deskfleet_vs_naive": round(vs_naive, 1),
        "store_only_eps": round(store_eps, 1),
    }


def _round(value, digits):
    return None if value is None else round(value, digits)


def _print(bench, wall, cpu, naive_vs_engine, rates, checks):
    offered, naive_eps, desk_eps, store_eps = rates
    vs_bus, vs_naive, tail_ok = checks
    bus, naive, desk, tail, st = (bench.results.get(k, {}) for k in ("bus", "naive", "deskfleet", "tail", "store"))

    def verdict(ok):
        return "PASS" if ok else "FAIL"

    say("\n== Summary")
    say("   master CPU per event (whole master process group, per event the minions sent):")
    say(f"     deskfleet tc_ingest engine path: {_ms(cpu['engine'])}   naive reactor -> runner path: {_ms(cpu['naive'])}"
        + (f"   ({naive_vs_engine:.1f} x)" if naive_vs_engine else "")
        + ("   (naive: a lower bound, its backlog was still queued at the cap)" if naive.get("unfinished_at_cap") else ""))
    say(f"     bus only (no engine, no store: the transport's share): {_ms(cpu['bus'])}; "
        f"engine process alone, store only: {_ms(st.get('engine_cpu_ms_per_event'))}")
    say(f"   rates below are bounded by what {bench.n_minions} request-at-a-time minions offer, not by the master:")
    say(f"   offered on the bus (no engine, bare listener):  {offered:8.1f} events/s  (median of {bus.get('eps_rounds')})")
    say(f"   naive reactor -> runner per event:              {naive_eps:8.1f} events/s  (lost {naive.get('lost')} of {naive.get('fired')})")
    say(f"   deskfleet tc_ingest engine:                     {desk_eps:8.1f} events/s  (median of {desk.get('eps_rounds')}; "
        f"lost {desk.get('lost')} of {desk.get('fired')})")
    say(f"   store only (engine fed on the bus):             {store_eps:8.1f} events/s  (median of {st.get('eps_rounds')}; "
        f"firers {st.get('fire_eps', 0):.0f}/s; engine draining a queued backlog {st.get('drain', {}).get('eps', 0):.0f}/s)")
    direct = bench.results.get("direct_bus", {})
    if direct:
        say(f"   direct-fire bus rate (same firehose, no engine): {direct['eps']:8.1f} events/s  (median of {direct['eps_rounds']}); "
            f"store only / that = {store_eps / max(1e-9, direct['eps']):.2f}")
    say(f"   [{verdict(vs_bus >= TARGETS['vs_bus'])}] deskfleet keeps up with the offered load (>= 0.9 x): {vs_bus:.2f} x")
    say(f"   [{verdict(vs_naive >= TARGETS['vs_naive'])}] deskfleet >= 8 x naive: {vs_naive:.1f} x")
    say(f"   [{verdict(tail_ok)}] deskfleet lost 0, incl. the tail: lost {desk.get('lost')}, "
        f"tail probe {tail.get('stored')}/{tail.get('events')} on the timer")
    say(f"   [{verdict(store_eps >= TARGETS['store_only_eps'])}] store only >= 2000 events/s: {store_eps:.0f}")
    say(f"   wall time {wall:.0f} s; {bench.n_minions} minions; {bench.rounds} rounds x {bench.per_minion * bench.n_minions} events "
        f"on the bus and deskfleet paths, {bench.naive_per_minion * bench.n_minions} on the naive path, "
        f"{bench.rounds} x {bench.store_events} store-only")
    box = bench.results.get("box", {})
    say(f"   box: 2-core budget shared by everything above; load avg {box.get('load_avg_at_start', 0):.2f} at start, "
        f"{box.get('foreign_salt_procs_at_start', 0)} foreign salt processes at start, "
        f"{foreign_salt(bench.base)} at the end")
