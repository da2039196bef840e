"""
One idle-reclaim pass on the vm master: taken pool desktops from the cloud,
their session rows from the store (``desktop_session`` beacon, via the
``desktop_sessions`` engine), the planner (``_utils/pool_reclaim.py``), and
with ``apply`` the deletes.

Why delete, not rebuild: the keeper refills the pool through the one path
every desktop takes (pool image, freshly seeded minion key, baseline), while a
rebuild keeps the server and its minion key alive from one user to the next.
"""

import logging
import time

import deskfleet_store as store
import desktop_sessions
import pool_reclaim
from pool_config import POOL_KEY, STATE_KEY

log = logging.getLogger(__name__)

MIGRATIONS = {"pool_reclaim": ["CREATE TABLE pool_reclaim_seen (desktop TEXT PRIMARY KEY, state TEXT NOT NULL,"
                               " since REAL NOT NULL)"]}


def _inputs(db, conn, good, raw, prefix, now, errors):
    import pool_cloud  # pylint: disable=import-outside-toplevel

    policies = {}
    for name in good:
        try:
            policies[name] = pool_reclaim.policy(name, (raw.get(name) or {}).get("reclaim"))
        except pool_reclaim.PolicyError as exc:
            errors[name] = str(exc)
    taken = [{"name": s["name"], "pool": s["metadata"].get(POOL_KEY), "id": s["id"]}
             for s in pool_cloud.servers(conn, prefix)
             if s["metadata"].get(STATE_KEY) == "taken" and s["metadata"].get(POOL_KEY) in policies]
    sessions = {d["name"]: desktop_sessions.session(db, d["name"], now) for d in taken}
    seen = {r["desktop"]: (r["state"], r["since"]) for r in db.execute("SELECT * FROM pool_reclaim_seen")}
    return taken, sessions, seen, policies


def run(db_path, conn, good, raw, prefix, apply, now, errors):  # pylint: disable=too-many-arguments
    """``{"reclaim": [...], "keep": [...], "deleted": [...], "pool_errors": {...}}``; deletes only with ``apply``."""
    db = store.connect(db_path, dict(desktop_sessions.MIGRATIONS, **MIGRATIONS))
    try:
        taken, sessions, seen, policies = _inputs(db, conn, good, raw, prefix, now, errors)
        result = pool_reclaim.plan(taken, sessions, seen, policies, now)
        result["deleted"] = []
        if apply:
            with store.transaction(db):
                db.execute("DELETE FROM pool_reclaim_seen")
                db.executemany("INSERT INTO pool_reclaim_seen VALUES (?, ?, ?)",
                               [(n, s, t) for n, (s, t) in result["seen"].items()])
            result["deleted"] = _delete(db, conn, result["reclaim"], {d["name"]: d["id"] for d in taken})
            result["keep"] += [e for e in result["reclaim"] if e["name"] not in result["deleted"]]
            result["reclaim"] = [e for e in result["reclaim"] if e["name"] in result["deleted"]]
    finally:
        db.close()
    del result["seen"]
    result["pool_errors"] = errors
    return result


def _delete(db, conn, chosen, ids):
    deleted = []
    for entry in chosen:
        # a user may have connected since the plan was made: look once more, right before
        if pool_reclaim.state_of(desktop_sessions.session(db, entry["name"], time.time())) != entry["state"]:
            entry["reason"] = "state changed just before the delete: kept"
            continue
        conn.compute.delete_server(ids[entry["name"]])
        deleted.append(entry["name"])
        log.warning("vmpool: reclaimed %s of pool %s (%s)", entry["name"], entry["pool"], entry["reason"])
    return deleted
