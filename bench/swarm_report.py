"""
The swarm bench's arithmetic: auth requests per seat, re-auth times, loss and
duplication per (seat, seq) against the inventory store, and the summary line.
"""


def pct(values, q):
    values = sorted(values)
    if not values:
        return None
    return round(values[min(len(values) - 1, int(q * len(values)))], 2)


def auth_figures(stats, master_auths, seats, since):
    """
    Auth requests the seats put on the wire (resends included; counted from the seats'
    last ``mark``) and sign-ins the master processed; sign-in times from ``since``.
    """
    sends = [s["auth_sends"] for s in stats.values()]
    signed = [s["signed_in"] for s in stats.values()]
    done = [min(t) - since for t in signed if t]
    got = [min(s["pubs_seen"]) - since for s in stats.values() if s["pubs_seen"]]
    return {
        "seats": seats,
        "auth_requests": sum(sends),
        "auth_requests_per_seat": round(sum(sends) / max(1, seats), 2),
        "auth_requests_max_one_seat": max(sends, default=0),
        "master_auths_processed": sum(master_auths.values()),
        "signed_in": len(done),
        "signed_in_p50_s": pct(done, 0.5),
        "signed_in_max_s": round(max(done), 1) if done else None,
        "publication_reached": len(got),
        "publication_reached_max_s": round(max(got), 1) if got else None,
    }


def loss_and_duplication(stats, store):
    """
    Per (seat, seq): an acknowledged event the store never took is lost (a gap counted
    as ``missed``, or a last stored seq below the last acknowledged one); an event
    taken twice cannot show as a row (the store keeps the newest per seat) but is
    refused as ``duplicate``/``stale``: those counters are the duplicates the
    engine absorbed, reported apart.
    """
    rows, counters, seat_rows = store
    lost = missing_seats = epoch_mismatch = 0
    failed = 0
    for seat, st in stats.items():
        failed += len(st["failed"])
        if not st["acked"]:
            continue
        row = rows.get(seat)
        if row is None:
            missing_seats += 1
            lost += len(st["acked"])
            continue
        epoch, seq, missed = row
        if epoch != st["epoch"]:
            epoch_mismatch += 1
        lost += missed + max(0, max(st["acked"]) - seq)
    return {
        "events_acked": sum(len(s["acked"]) for s in stats.values()),
        "events_failed_at_seat": failed,
        "lost": lost,
        "seats_missing_in_store": missing_seats,
        "epoch_mismatch": epoch_mismatch,
        "duplicates_absorbed": counters.get("duplicate", 0) + counters.get("stale", 0),
        "store_accepted": counters.get("accepted", 0),
        "inventory_seats": seat_rows,
    }


def cpu_share(before, after, wall):
    """Master CPU over a phase as a share of one core, and its memory at the end."""
    return {
        "master_cpu_core_share": round((after["cpu_s"] - before["cpu_s"]) / max(wall, 1e-6), 3),
        "master_cpu_s": round(after["cpu_s"] - before["cpu_s"], 2),
        "master_rss_mb": round(after["rss_mb"]),
        "master_pss_mb": round(after["pss_mb"]),
        "wall_s": round(wall, 1),
    }


def _storm(out, key, res, seats):
    auth = res["auth"]
    out[f"{key}_signed_in"] = auth["signed_in"]
    out[f"{key}_auth_per_seat"] = auth["auth_requests_per_seat"]
    out[f"{key}_all_in_s"] = auth["signed_in_max_s"] if auth["signed_in"] == seats else None
    out[f"{key}_master_cpu_s"] = res["cpu"]["master_cpu_s"]
    out[f"{key}_pss_mb"] = res["cpu"]["master_pss_mb"]
    out[f"{key}_master_fds_max"] = res["cpu"].get("fds_max")
    out[f"{key}_master_fd_limit"] = res["cpu"].get("fd_limit")
    out[f"{key}_current_after_publish"] = res["current"]["ok"]
    out[f"{key}_stuck_after_publish"] = res["current"]["stuck"]


def summary(results, args, wall):
    """One flat JSON object: per variant, the figures the issue names (per ramp size: ``_at_<seats>``)."""
    out = {"bench": "swarm", "sizes": args.sizes, "wall_s": round(wall, 1)}
    for name, res in results.items():
        if "error" in res:
            out[f"{name}_error"] = res["error"]
            continue
        seats = res["seats"]
        out[f"{name}_auth_timeout"] = res["auth_timeout"]
        out[f"{name}_largest_reached"] = res["reached"]
        out[f"{name}_stopped_by"] = res["stopped_by"]
        for step in res["ramp"]:
            at = step["seats"]
            out[f"{name}_login_auth_per_seat_at_{at}"] = step["login"]["auth"]["auth_requests_per_seat"]
            out[f"{name}_steady_cpu_core_share_at_{at}"] = step["steady"]["master_cpu_core_share"]
            out[f"{name}_steady_pss_mb_at_{at}"] = step["steady"]["master_pss_mb"]
            out[f"{name}_steady_load_at_{at}"] = step["steady"].get("load")
            out[f"{name}_steady_seats_current_at_{at}"] = step["steady"]["ok"]  # a step short of its size says so
        if "idle" in res:
            out[f"{name}_idle_cpu_core_share_at_{seats}"] = res["idle"]["master_cpu_core_share"]
        if "phase_failed" in res:
            out[f"{name}_phase_failed"] = res["phase_failed"]
        if "status_storm" in res:
            storm = res["status_storm"]
            out[f"{name}_status_storm_seats"] = seats
            out[f"{name}_status_storm_failed"] = storm["failed"] + storm["stuck"]
            out[f"{name}_status_storm_wall_s"] = storm["wall_s"]
            out[f"{name}_status_storm_cpu_core_share"] = storm["master_cpu_core_share"]
            out[f"{name}_status_storm_latency_p50_s"] = storm.get("latency_p50_s")
            out[f"{name}_status_storm_latency_max_s"] = storm.get("latency_max_s")
        if "reauth" in res:
            _storm(out, f"{name}_reauth", res["reauth"], seats)
        if "rotation" in res:
            out[f"{name}_rotation_after_key_delete_s"] = res["rotation"]["rotated_after_s"]
            _storm(out, f"{name}_rotation", res["rotation"], seats)
        out[f"{name}_lost"] = res["loss"]["lost"]
        out[f"{name}_failed_at_seat"] = res["loss"]["events_failed_at_seat"]
        out[f"{name}_duplicates_absorbed"] = res["loss"]["duplicates_absorbed"]
        out[f"{name}_inventory_seats"] = res["loss"]["inventory_seats"]
    return out
