"""
One variant of the swarm bench: a fresh tc master from the shipped config, the
seats, and the phases (login storm, steady, idle, status storm, re-auth storm, loss).
"""

import os
import time

from bench import swarm_report as report
from bench.swarm_master import SwarmMaster, store_rows


def say(text=""):
    print(text, flush=True)


def _timed(master, fn):
    before, t0 = master.usage(), time.time()
    out = fn()
    return out, report.cpu_share(before, master.usage(), time.time() - t0)


def login(master, seats, count, window, procs=None):
    """``count`` seats (the processes ``procs``, default all) sign in and send ``start`` within ``window`` s."""
    mark = time.time()
    seats.ask({"cmd": "mark"})
    res, cpu = _timed(master, lambda: seats.summed({"cmd": "login", "window": window}, procs))
    auth = report.auth_figures(seats.stats(), master.auth.since(mark), count, mark)
    say(f"   login storm: {res['ok']}/{count} in {res['wall_s']} s, auth requests per seat "
        f"{auth['auth_requests_per_seat']}, master {cpu['master_cpu_s']} CPU s, PSS {cpu['master_pss_mb']} MB")
    return {"result": res, "auth": auth, "cpu": cpu}


def _sim_usage(seats):
    """The seat processes' RSS (MB) and threads: the simulator's own cost, which shares the box."""
    import psutil  # pylint: disable=import-outside-toplevel

    rss = threads = 0
    for proc in seats.procs:
        try:
            ps = psutil.Process(proc.pid)
            rss, threads = rss + ps.memory_info().rss, threads + ps.num_threads()
        except psutil.Error:
            pass
    return {"sim_rss_mb": round(rss / 2**20), "sim_threads": threads}


def steady(master, seats, args):
    res, cpu = _timed(master, lambda: seats.summed({"cmd": "beat", "window": args.steady, "reason": "heartbeat"}))
    res.update(load=round(os.getloadavg()[0], 1), **_sim_usage(seats))
    say(f"   steady ({args.steady} s, one heartbeat per seat): master {cpu['master_cpu_core_share']} of a core, "
        f"PSS {cpu['master_pss_mb']} MB, RSS {cpu['master_rss_mb']} MB; latency p50 {res.get('latency_p50_s')} s; "
        f"load {res['load']}, seat processes RSS {res['sim_rss_mb']} MB, {res['sim_threads']} threads")
    return dict(cpu, **res)


def idle(master, seats, args):
    """Every seat connected, none sending for ``--idle`` s: what holding the connections costs the master."""
    res, cpu = _timed(master, lambda: time.sleep(args.idle))  # a bench phase, not a wait for a condition
    out = dict(cpu, seats=args.seats, wall_s=args.idle, load=round(os.getloadavg()[0], 1), **_sim_usage(seats))
    say(f"   idle ({args.idle:g} s, {args.seats} seats connected, none sending): master "
        f"{cpu['master_cpu_core_share']} of a core, PSS {cpu['master_pss_mb']} MB; load {out['load']}")
    return out


def status_storm(master, seats, args):
    res, cpu = _timed(master, lambda: seats.summed({"cmd": "beat", "window": args.storm_window, "reason": "change"}))
    say(f"   status storm: {res['ok']} ok, {res['failed']} failed in {res['wall_s']} s, latency max "
        f"{res.get('latency_max_s')} s, master {cpu['master_cpu_core_share']} of a core")
    return dict(cpu, **res)


def _wait_signed_in(master, seats, mark, deadline):
    """Until every seat signed in again (or ``deadline``): the seats' stats, and the master's fd peak meanwhile."""
    fds = (0, 0)
    while True:
        fds = max(fds, master.descriptors())
        stats = seats.stats()
        done = sum(1 for s in stats.values() if s["signed_in"])
        if done == len(stats) or time.time() > deadline:
            return stats, {"fds_max": fds[0], "fd_limit": fds[1]}
        time.sleep(2)


def _publish_and_wait(master, seats, args, label):
    """One publication to one seat after a new AES key: every seat signs in again, then one heartbeat each."""
    before = master.usage()
    mark = time.time()
    seats.ask({"cmd": "mark"})
    quiet = seats.stats()  # no publication yet: nobody should have signed in again
    jid, sent_at = master.publish("tc-swarm-00000")
    stats, fds = _wait_signed_in(master, seats, mark, sent_at + args.reauth_deadline)
    cpu = report.cpu_share(before, master.usage(), time.time() - mark)
    # times from the publication (the master's first publish attempts may wait for its workers)
    auth = report.auth_figures(stats, master.auth.since(mark), args.seats, sent_at)
    auth["signed_in_before_publish"] = sum(1 for s in quiet.values() if s["signed_in"])
    current = seats.summed({"cmd": "beat", "window": 5, "reason": "heartbeat"})
    current["within_s"] = round(time.time() - sent_at, 1)
    cpu.update(fds)
    say(f"   {label} (publish {jid and jid.get('jid')}): {auth['signed_in']}/{args.seats} signed in again, "
        f"all by {auth['signed_in_max_s']} s; auth requests per seat {auth['auth_requests_per_seat']} "
        f"(max {auth['auth_requests_max_one_seat']}), master processed {auth['master_auths_processed']}, "
        f"{cpu['master_cpu_s']} CPU s, PSS {cpu['master_pss_mb']} MB; then {current['ok']} heartbeats ok, "
        f"{current['failed']} failed, {current['stuck']} stuck, {current['within_s']} s after the publish; "
        f"master descriptors: {fds['fds_max']} in one process (limit {fds['fd_limit']})"
        + (" -- AT ITS OPEN-FILE LIMIT: sign-in connections wait (--nofile, LimitNOFILE)"
           if fds["fd_limit"] and fds["fds_max"] >= fds["fd_limit"] - 8 else ""))
    return {"auth": auth, "cpu": cpu, "current": current}


def reauth_storm(master, seats, args):
    """Restart (new AES key), one publication to one seat, every seat signs in again."""
    t0 = time.time()
    master.restart()
    # a seat whose publish socket has not reconnected yet would miss the publication for good
    reconnect = (seats.recon_default + seats.recon_max) / 1000 + 5
    time.sleep(max(0.0, t0 + reconnect - time.time()))
    say(f"   master restarted and settled in {time.time() - t0:.1f} s (at least the seats' reconnect window)")
    return _publish_and_wait(master, seats, args, "re-auth storm")


def aes_rotation(master, seats, args):
    """
    ``salt-key -d`` of one key (a retired seat): Salt 3008 drops ``.dfn`` (``rotate_aes_key``,
    default True) and the master's maintenance loop makes a new AES key within ``loop_interval``
    (without ``cluster_id`` ``publish_session`` only ages per-seat request keys, it rotates
    nothing). Seats' requests keep working (their own session keys); the next publication
    makes every seat sign in again, as after a restart.
    """
    t0 = time.time()
    waited = master.rotate_aes()
    beat = seats.summed({"cmd": "beat", "window": 5, "reason": "heartbeat"})
    say(f"   AES key rotated {waited} s after the key delete; heartbeats before any publication: {beat['ok']} ok, "
        f"{beat['failed']} failed, {beat['stuck']} stuck")
    out = _publish_and_wait(master, seats, args, "rotation storm")
    out.update(rotated_after_s=waited, before_publish=beat, wall_s=round(time.time() - t0, 1))
    return out


def loss(master, seats, wait_s=10):
    time.sleep(wait_s)  # the engine flushes every 0.25 s; let the last batch land before reading
    res = report.loss_and_duplication(seats.stats(), store_rows(master.opts))
    say(f"   loss: {res['lost']} lost of {res['events_acked']} acknowledged, {res['events_failed_at_seat']} failed at "
        f"the seat, {res['duplicates_absorbed']} duplicates absorbed, inventory {res['inventory_seats']} seats")
    return res


def _ramp_sizes(args):
    return sorted({int(x) for x in args.sizes.split(",") if x.strip()}) if args.sizes else [args.seats]


def _room(min_free_mb=3000):
    """Free memory left for one more step (the box's, the seats' and master's share it)."""
    import psutil  # pylint: disable=import-outside-toplevel

    return psutil.virtual_memory().available / 2**20 > min_free_mb


def ramp(master, seats, key_dirs, args):
    """
    Seats added in steps (``--sizes``): each step's new seats sign in (spread at the rate
    ``--login-window`` gives the largest size), then one heartbeat per seat over ``--steady`` s.
    Stops at the first step that does not sign every seat in, or when memory runs short;
    ``args.seats`` becomes the largest size reached.
    """
    order = sorted(key_dirs)
    sizes, top = _ramp_sizes(args), max(_ramp_sizes(args))
    steps, reached, stopped = [], 0, None
    for size in sizes:
        if not _room():
            stopped = f"free memory under 3 GB before the {size}-seat step"
            break
        new = {s: key_dirs[s] for s in order[reached:size]}
        say(f"-- {size} seats: {len(new)} more")
        procs = []
        try:
            procs = seats.add(new)
            args.seats = size
            got = login(master, seats, len(new), args.login_window * len(new) / top, procs)
            stats = steady(master, seats, args)
        except Exception as exc:  # pylint: disable=broad-except
            # e.g. a seat process aborted: ZeroMQ could not start a thread (4 per seat: kernel.pid_max)
            stopped = f"{size}-seat step: {exc!r}"
        else:
            steps.append({"seats": size, "login": got, "steady": stats})
            if got["result"]["ok"] < len(new) or stats["ok"] < size:
                stopped = (f"{size}-seat step: {len(new) - got['result']['ok']} sign-ins, "
                           f"{size - stats['ok']} heartbeats failed")
        if stopped:
            seats.drop(procs)  # the later phases run on the seats reached
            args.seats = reached
            break
        reached = size
    return steps, reached, stopped


def run_variant(lab, name, variant, key_dirs, args, seat_procs_cls):
    """``variant`` = (the seats' overrides of the shipped template, the master's of the shipped master.d)."""
    overrides, master_overrides = variant
    say(f"== {name}: seats {overrides or 'as shipped'}, master {master_overrides or 'as shipped'}")
    master = SwarmMaster(lab, f"{name}-master", key_dirs, master_overrides).start()
    say(f"   master up, settled after {master.settled} s")
    work = lab.base / f"{name}-seats"
    work.mkdir()
    seats = seat_procs_cls(work, master, {}, overrides, args.per_process, args.root)
    out = {"auth_timeout": seats.auth_timeout}
    try:
        out["ramp"], out["reached"], out["stopped_by"] = ramp(master, seats, key_dirs, args)
        if out["stopped_by"]:
            say(f"   ramp stopped: {out['stopped_by']}")
        out["seats"] = args.seats
        phases = [("idle", idle)] if args.idle else []
        phases += [("status_storm", status_storm), ("reauth", reauth_storm)]
        phases += [] if args.no_rotation else [("rotation", aes_rotation)]
        for key, phase in phases:
            try:
                out[key] = phase(master, seats, args)
            except Exception as exc:  # pylint: disable=broad-except
                # what broke is the finding: keep what was measured, say where it stopped, still count loss
                out["phase_failed"] = f"{key}: {exc!r}"
                say(f"   {key} FAILED: {exc!r}")
                break
        out["loss"] = loss(master, seats)
    finally:
        seats.stop()
        master.stop()
    return out
