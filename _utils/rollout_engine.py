"""
The software rollout engine (vm master): the state machine that moves rollouts forward.

Plain Python over a sqlite3 connection (``rollout_store``, ``rollout_lease``) and a small
*driver* (publish a job, read the job cache, ask a minion whether a job is still running),
so all of it is tested without Salt. ``_runners/software.py`` is the thin shell that gives
it a Salt driver; desktops never get this file (they run ``software_catalog`` only).

A rollout pins one catalog entry (name, version) and a frozen list of minions.
Each call of :meth:`Engine.tick` takes every due rollout under a lease in the
store (so two ticks never work on the same rollout at once) and moves it one
step: collect what came back, then dispatch at most one batch.

Rollout states::

    scheduled -> running -> completed        every minion done, failures within max_fail
                         -> halted           failures passed max_fail; the rest skipped
                         -> expired          the window ended first: minions not started are
                                             skipped, jobs still out are listed as ``left``
    scheduled|running    -> cancelled        by ops; pending minions skipped

Minion states: ``pending -> running -> succeeded | failed``; ``pending -> skipped``.
Each job carries ``not_after`` (the window end): a minion that gets it later
(unreachable, paused) refuses to install (``skipped``, "window closed"). A return
collected after the rollout closed is recorded with ``late``: ``summary`` lists
them, and the jobs still out at the close (``left``).

A minion's job id is written to the store *before* the job is published. After a
master restart (or a lost return) the next tick looks the job id up in the job
cache; only if there is no return and the minion says the job is not running is
it published again, and the install is idempotent by version, so nothing is
installed twice.
"""

import json
import logging
import time

import deskfleet_store as store
import rollout_lease
import rollout_store
from rollout_store import ACTIVE

log = logging.getLogger(__name__)

INSTALL_FUNCTION = "software.install"


class DispatchError(RuntimeError):
    """The job could not be published."""


def outcome(ret):
    """
    A minion's ``software.install`` return → (state, installed, changed, detail).
    Anything but a dict with ``result: True`` is a failure.
    """
    if isinstance(ret, dict) and ret.get("window_closed") is True:
        return "skipped", _short(ret.get("installed")), False, _short(ret.get("comment") or "window closed")
    if isinstance(ret, dict) and ret.get("result") is True:
        return "succeeded", _short(ret.get("installed")), bool(ret.get("changes")), _short(ret.get("comment"))
    if isinstance(ret, dict):
        return "failed", _short(ret.get("installed")), bool(ret.get("changes")), _short(ret.get("comment") or ret)
    return "failed", None, False, _short(ret)


def _short(value, limit=500):
    if value is None:
        return None
    text = value if isinstance(value, str) else json.dumps(value, default=str, sort_keys=True)
    return text if len(text) <= limit else text[: limit - 3] + "..."


class Engine:
    """
    Moves due rollouts forward, one step per :meth:`tick`.

    ``driver`` does the Salt side:

    - ``new_jid()`` → a fresh job id (written to the store before publishing);
    - ``publish(jid, minions, args, kwargs)`` → the minions the master targeted
      (raise :class:`DispatchError` if it could not publish);
    - ``returns(jid)`` → ``{minion: return}`` found in the job cache;
    - ``find_job(jid, minions)`` → ``{minion: True (still running) / False (not
      running)}`` for the minions that answered.

    wait
        seconds a tick waits for the returns of the batch it dispatched; what
        has not come back by then is collected by a later tick
    grace
        a job younger than this is never asked after (the minion may not have
        started it yet); older and neither returned nor running → published again
    job_timeout
        a job out for longer than this without a return counts as failed
    max_attempts
        publications per minion before a lost job counts as failed
    """

    def __init__(self, conn, driver, *, clock=time.time, sleep=time.sleep, owner=None, wait=30.0, poll=0.5,
                 grace=30.0, job_timeout=1800.0, lease_ttl=None, max_attempts=3):
        self.conn = conn
        self.driver = driver
        self.clock = clock
        self.sleep = sleep
        self.owner = owner or rollout_lease.owner_name()
        self.wait = float(wait)
        self.poll = float(poll)
        self.grace = float(grace)
        self.job_timeout = float(job_timeout)
        self.lease_ttl = float(lease_ttl) if lease_ttl else self.wait + 120.0
        self.max_attempts = int(max_attempts)

    # -- public

    def tick(self, only=None):
        """One step for every due rollout (or just ``only``). Returns one report per rollout."""
        reports = []
        for rollout_id in rollout_store.due(self.conn, self.clock()):
            if only is not None and rollout_id != only:
                continue
            if not rollout_lease.acquire(self.conn, rollout_id, self.owner, self.clock(), self.lease_ttl):
                row = rollout_store.get(self.conn, rollout_id)
                reports.append(
                    {"id": rollout_id, "action": "skipped", "comment": f"leased by {row['lease_owner']} (another tick)"}
                )
                continue
            report = {"id": rollout_id, "action": "none", "collected": {}, "dispatched": [], "republished": []}
            try:
                self._step(rollout_id, report)
            except rollout_lease.LeaseLost as exc:
                report.update(action="aborted", comment=str(exc))
            except store.StoreError:
                raise  # the store itself: every rollout shares it; the runner reports it (exit 1, alert)
            except Exception as exc:  # pylint: disable=broad-except
                # one rollout's trouble (job cache unreadable, master away) must not stop the others
                log.exception("rollouts: tick of %s failed", rollout_id)
                report.update(action="error", comment=f"{type(exc).__name__}: {exc}")
            finally:
                rollout_lease.release(self.conn, rollout_id, self.owner)
            summ = rollout_store.summary(self.conn, rollout_id)
            report.update(state=summ["state"], counts=summ["counts"])
            if summ["reason"]:
                report["reason"] = summ["reason"]
            reports.append(report)
        return reports

    # -- one step

    def _step(self, rollout_id, report):
        self._absorb(rollout_id, report)
        self._chase(rollout_id, report)
        self._settle(rollout_id)
        self._advance(rollout_id, report)
        if report["dispatched"] or report["republished"]:
            self._wait_for_returns(rollout_id, report)
            self._settle(rollout_id)
        if report["dispatched"]:
            report["action"] = "dispatched"
        elif report["republished"]:
            report["action"] = "republished"
        elif report["collected"]:
            report["action"] = "collected"

    def _running(self, rollout_id):
        return self.conn.execute(
            "SELECT minion, jid, attempts, dispatched_at FROM rollout_minions"
            " WHERE rollout_id = ? AND state = 'running' ORDER BY position",
            (rollout_id,),
        ).fetchall()

    def _absorb(self, rollout_id, report):
        """Record every running minion whose job has a return in the job cache."""
        by_jid = {}
        for row in self._running(rollout_id):
            by_jid.setdefault(row["jid"], []).append(row["minion"])
        finished = []
        for jid, minions in by_jid.items():
            if not jid:
                continue
            found = self.driver.returns(jid)
            for minion in minions:
                if minion in found:
                    finished.append((minion, jid, outcome(found[minion])))
        if not finished:
            return
        now = self.clock()
        with store.transaction(self.conn):
            rollout_lease.check_held(self.conn, rollout_id, self.owner)
            late = int(rollout_store.get(self.conn, rollout_id)["state"] not in ACTIVE)
            for minion, jid, (state, installed, changed, detail_text) in finished:
                cur = self.conn.execute(
                    "UPDATE rollout_minions SET state = ?, installed = ?, changed = ?, detail = ?, finished_at = ?,"
                    " late = ? WHERE rollout_id = ? AND minion = ? AND state = 'running' AND jid = ?",
                    (state, installed, int(changed), detail_text, now, late, rollout_id, minion, jid),
                )
                if cur.rowcount:
                    report["collected"][minion] = state
            self._touch(rollout_id, now)

    def _chase(self, rollout_id, report):
        """Jobs out for longer than ``grace`` with no return: still running, lost, or timed out?"""
        now = self.clock()
        old = [
            r for r in self._running(rollout_id)
            if r["dispatched_at"] is None or now - r["dispatched_at"] >= self.grace
        ]
        if not old:
            return
        answers = {}
        by_jid = {}
        for row in old:
            by_jid.setdefault(row["jid"], []).append(row["minion"])
        for jid, minions in by_jid.items():
            answers[jid] = self.driver.find_job(jid, minions) if jid else {}
        # a return may have landed while we asked
        self._absorb(rollout_id, report)
        still = {r["minion"]: r for r in self._running(rollout_id)}
        lost, failed = [], []
        now = self.clock()
        rollout = rollout_store.get(self.conn, rollout_id)
        republish = rollout["state"] in ACTIVE and now < rollout["end_at"]
        for row in old:
            current = still.get(row["minion"])
            if current is None or current["jid"] != row["jid"]:
                continue
            answer = answers.get(row["jid"], {}).get(row["minion"])
            age = now - (row["dispatched_at"] or 0)
            if answer is False:
                if not republish:
                    why = "its window ended" if rollout["state"] in ACTIVE else f"the rollout is {rollout['state']}"
                    failed.append((row, f"job lost (no return, not running); not published again: {why}"))
                elif row["attempts"] < self.max_attempts:
                    lost.append(row["minion"])
                else:
                    failed.append((row, f"no return after {row['attempts']} attempts"))
            elif age > self.job_timeout:
                why = "still running" if answer else "no answer from the minion"
                failed.append((row, f"no return within job_timeout ({int(self.job_timeout)} s; {why})"))
        if failed:
            with store.transaction(self.conn):
                rollout_lease.check_held(self.conn, rollout_id, self.owner)
                for row, why in failed:
                    self.conn.execute(
                        "UPDATE rollout_minions SET state = 'failed', detail = ?, finished_at = ?"
                        " WHERE rollout_id = ? AND minion = ? AND state = 'running' AND jid = ?",
                        (why, now, rollout_id, row["minion"], row["jid"]),
                    )
                    report["collected"][row["minion"]] = "failed"
                self._touch(rollout_id, now)
        if lost:
            self._publish(rollout_id, lost, report, retry=True)

    def _settle(self, rollout_id):
        """Halt, complete or expire an active rollout whose counts say so."""
        now = self.clock()
        with store.transaction(self.conn):
            rollout_lease.check_held(self.conn, rollout_id, self.owner)
            row = rollout_store.get(self.conn, rollout_id)
            if row["state"] not in ACTIVE:
                return
            found = rollout_store.counts(self.conn, rollout_id)
            if found["failed"] > row["fail_limit"]:
                self._finish(rollout_id, "halted", f"{found['failed']} failed, over max_fail {row['max_fail']}"
                             f" ({row['fail_limit']} allowed)", "rollout halted: too many failures", now)
            elif now >= row["end_at"] and (found["pending"] or found["running"]):
                # past the window nothing is dispatched; jobs still out are named, their returns come in late
                left = [r["minion"] for r in self._running(rollout_id)]
                self._finish(rollout_id, "expired", f"window ended with {found['pending']} minions not started"
                             + (f" and {len(left)} with no return: {', '.join(left[:20])}" if left else ""),
                             "maintenance window ended", now)
            elif found["running"]:
                return
            elif not found["pending"]:
                self._finish(rollout_id, "completed", f"{found['succeeded']} succeeded, {found['failed']} failed,"
                             f" {found['skipped']} skipped", None, now)

    def _finish(self, rollout_id, state, reason, skip_detail, now):
        self.conn.execute(
            "UPDATE rollouts SET state = ?, reason = ?, updated_at = ?, finished_at = ? WHERE id = ?",
            (state, reason, now, now, rollout_id),
        )
        if skip_detail:
            self.conn.execute(
                "UPDATE rollout_minions SET state = 'skipped', detail = ?, finished_at = ?"
                " WHERE rollout_id = ? AND state = 'pending'",
                (skip_detail, now, rollout_id),
            )

    def _advance(self, rollout_id, report):
        """Dispatch the next batch if the rollout is active, in its window and nothing is out."""
        now = self.clock()
        row = rollout_store.get(self.conn, rollout_id)
        if row["state"] not in ACTIVE or not row["start_at"] <= now < row["end_at"]:
            return
        if self._running(rollout_id):
            report["comment"] = "waiting for the running batch"
            return
        pending = self.conn.execute(
            "SELECT minion FROM rollout_minions WHERE rollout_id = ? AND state = 'pending' ORDER BY position LIMIT ?",
            (rollout_id, row["batch_size"]),
        ).fetchall()
        if pending:
            self._publish(rollout_id, [r["minion"] for r in pending], report, retry=False)

    def _publish(self, rollout_id, minions, report, retry):
        """Write the job id first, then publish: a crash in between is found by the next tick."""
        jid = self.driver.new_jid()
        claimed = self._claim(rollout_id, minions, jid, retry)
        if claimed is None:
            return
        row, minions, seq = claimed
        entry = json.loads(row["entry"])
        kwargs = {"version": row["version"], "not_after": row["end_at"]}
        if row["sha256"]:
            kwargs["sha256"] = row["sha256"]
        (report["republished"] if retry else report["dispatched"]).extend(minions)
        report.setdefault("jids", []).append(jid)
        try:
            targeted = self.driver.publish(jid, minions, [entry["key"]], kwargs)
        except DispatchError as exc:
            # Left running: the next tick asks the minions and publishes again if the job never arrived.
            with store.transaction(self.conn):
                self.conn.execute(
                    "UPDATE rollout_batches SET error = ? WHERE rollout_id = ? AND seq = ?",
                    (_short(str(exc)), rollout_id, seq),
                )
            report["error"] = f"publish of {jid} failed: {exc}"
            return
        absent = [m for m in minions if targeted is not None and m not in targeted]
        if absent:
            now = self.clock()
            with store.transaction(self.conn):
                self.conn.executemany(
                    "UPDATE rollout_minions SET state = 'skipped', detail = 'no accepted key when the batch ran',"
                    " finished_at = ? WHERE rollout_id = ? AND minion = ? AND state = 'running' AND jid = ?",
                    [(now, rollout_id, m, jid) for m in absent],
                )
            for minion in absent:
                report["collected"][minion] = "skipped"

    def _claim(self, rollout_id, minions, jid, retry):
        """Mark ``minions`` running under ``jid`` and record the batch: (rollout row, minions, seq) or None."""
        now = self.clock()
        with store.transaction(self.conn):
            rollout_lease.check_held(self.conn, rollout_id, self.owner)
            row = rollout_store.get(self.conn, rollout_id)
            want = "running" if retry else "pending"
            if not retry and row["state"] not in ACTIVE:
                return None
            marks = ",".join("?" for _ in minions)
            minions = [
                r["minion"]
                for r in self.conn.execute(
                    f"SELECT minion FROM rollout_minions WHERE rollout_id = ? AND state = ? AND minion IN ({marks})"
                    " ORDER BY position",
                    (rollout_id, want, *minions),
                )
            ]
            if not minions:
                return None
            if retry:
                batch = self.conn.execute(
                    "SELECT batch FROM rollout_minions WHERE rollout_id = ? AND minion = ?", (rollout_id, minions[0])
                ).fetchone()["batch"]
            else:
                batch = (self.conn.execute(
                    "SELECT MAX(batch) FROM rollout_minions WHERE rollout_id = ?", (rollout_id,)
                ).fetchone()[0] or 0) + 1
            seq = (self.conn.execute(
                "SELECT MAX(seq) FROM rollout_batches WHERE rollout_id = ?", (rollout_id,)
            ).fetchone()[0] or 0) + 1
            self.conn.executemany(
                "UPDATE rollout_minions SET state = 'running', batch = ?, jid = ?, attempts = attempts + 1,"
                " dispatched_at = ?, detail = NULL WHERE rollout_id = ? AND minion = ?",
                [(batch, jid, now, rollout_id, m) for m in minions],
            )
            self.conn.execute(
                "INSERT INTO rollout_batches (rollout_id, seq, batch, jid, minions, dispatched_at, retry)"
                " VALUES (?, ?, ?, ?, ?, ?, ?)",
                (rollout_id, seq, batch, jid, json.dumps(minions), now, int(retry)),
            )
            if row["state"] == "scheduled":
                self.conn.execute("UPDATE rollouts SET state = 'running' WHERE id = ?", (rollout_id,))
            self._touch(rollout_id, now)
        return row, minions, seq

    def _wait_for_returns(self, rollout_id, report):
        deadline = self.clock() + self.wait
        renew_at = self.clock() + self.lease_ttl / 2
        while True:
            self._absorb(rollout_id, report)
            if not self._running(rollout_id) or self.clock() >= deadline:
                return
            if self.clock() >= renew_at:
                rollout_lease.renew(self.conn, rollout_id, self.owner, self.clock(), self.lease_ttl)
                renew_at = self.clock() + self.lease_ttl / 2
            self.sleep(min(self.poll, max(0.0, deadline - self.clock())))

    def _touch(self, rollout_id, now):
        self.conn.execute("UPDATE rollouts SET updated_at = ? WHERE id = ?", (now, rollout_id))
