"""
The way into the thin-client inventory: batched ingestion of beacon events,
the guards on the way in, and the one transaction that writes a batch. The
schema and the queries are ``_utils/tc_assets.py``; which events are genuine
and which facts are odd is ``_utils/tc_validate.py`` (see there for what Salt
does and does not prove about the sender of a bus event).

Guards, in order: tag, size and signature (forged, oversize, malformed);
freshness per seat on ``(epoch, seq)`` (duplicate, stale, replayed: an old
signed payload never rolls a seat back nor keeps it online), decided in the
transaction that stores the row, against what any master stored (two tc masters
on one store both get each report: stored once, the other copy a duplicate); a
per-seat budget of events per window (rate_limited, charged to the proven
signer only, never to a seat someone else claims to be); a seat retired while
its event waited is refused in that transaction too. Seq gaps are counted as
``missed``. Refusals go to per-minute aggregates (sender, claimed seat, reason)
and to a sample log capped per (origin, reason), so a flood cannot erase the
evidence.

Plain Python over a store connection (clock, verifier and key check passed
in), so it is tested without Salt; the ``tc_ingest`` engine is a thin shell.
"""

import collections
import logging
import os
import sqlite3
import time

# Salt puts utils_dirs on sys.path while it loads runners and engines.
import deskfleet_store as store
from tc_assets import SEAT_COLUMNS, open_store
from tc_validate import Rejected, attribution, envelope, facts_row, pki_verifier, verified

log = logging.getLogger(__name__)

# errors that say "this row", not "this store": isolate the row instead of retrying forever
STORE_REFUSALS = (sqlite3.IntegrityError, sqlite3.DataError, sqlite3.InterfaceError, OverflowError, ValueError)
SAMPLE_KEEP = 50  # sample rows kept per (origin, reason); the aggregates keep the counts
STATS_KEEP_S = 14 * 86400
UNKNOWN_SEAT = "*"  # aggregate key for claimed ids that are no seat: a flood cannot mint keys


def _row(sender, epoch, seq, ts, reason, facts, received_at):
    row, flags = facts_row(facts)
    row.update(
        seat=sender,
        seq=seq,
        epoch=epoch,
        flags=",".join(flags),
        reported_at=ts,
        last_reason=reason,
        first_seen=received_at,
        last_seen=received_at,
        # a heartbeat is not a change: keep the stored time of the last real one
        last_change=None if reason == "heartbeat" else received_at,
    )
    return row


def parse_event(tag, data, verify, received_at):
    """
    Turn one bus event into a seat row (odd facts cut, named in ``flags``), or
    raise :class:`Rejected`. No freshness or rate check: that needs the store.
    """
    sender, data = verified(tag, data, verify)
    return _row(sender, *envelope(sender, data), received_at)


def freshness(seen, epoch, seq):
    """
    Compare ``(epoch, seq)`` with the last seen ``seen = (epoch, seq)`` of the
    seat (None: never seen). Returns the number of events missed in between,
    or raises :class:`Rejected` (duplicate, stale, replayed; sender unproven).
    """
    if seen is None:
        return 0
    if (epoch, seq) == tuple(seen[:2]):
        raise Rejected("duplicate", None, f"epoch {epoch} seq {seq} already received")
    if epoch < seen[0]:
        raise Rejected("replayed", None, f"epoch {epoch} is older than the seat's epoch {seen[0]}")
    if epoch == seen[0] and seq < seen[1]:
        raise Rejected("stale", None, f"seq {seq} is older than the seat's seq {seen[1]}")
    return seq - seen[1] - 1 if epoch == seen[0] else seq - 1


class RateLimit:
    """At most ``limit`` events per seat per ``window`` seconds (fixed windows)."""

    def __init__(self, limit, window):
        self.limit, self.window = limit, window
        self.windows = {}

    def admit(self, seat, now):
        start, count = self.windows.get(seat, (now, 0))
        if now - start >= self.window:
            start, count = now, 0
        if count >= self.limit:
            return False
        self.windows[seat] = (start, count + 1)
        return True


# Only a newer (epoch, seq) overwrites: the last line of defence between masters sharing a store.
_NEWER = "WHERE (excluded.epoch, excluded.seq) > ({table}.epoch, {table}.seq)"
_UPSERT = "INSERT INTO seats ({cols}) VALUES ({marks}) ON CONFLICT(seat) DO UPDATE SET {sets} {newer}".format(
    cols=", ".join(SEAT_COLUMNS),
    marks=", ".join("?" for _ in SEAT_COLUMNS),
    sets=", ".join(
        [f"{c} = excluded.{c}" for c in SEAT_COLUMNS if c not in ("seat", "first_seen", "last_change")]
        + ["last_change = COALESCE(excluded.last_change, seats.last_change)"]
    ),
    newer=_NEWER.format(table="seats"),
)
_SEQ_UPSERT = (
    "INSERT INTO ingest_seq (seat, epoch, seq, missed) VALUES (?, ?, ?, ?) ON CONFLICT(seat) DO UPDATE"
    " SET epoch = excluded.epoch, seq = excluded.seq, missed = excluded.missed " + _NEWER.format(table="ingest_seq")
)


class Ingestor:
    """
    Buffers validated rows and writes them in one transaction when the batch is
    full or ``flush_interval`` seconds have passed since the first buffered item,
    whichever comes first: no partial batch waits for the next event.
    """

    def __init__(  # pylint: disable=too-many-arguments
        self, conn, verify, batch_size=500, flush_interval=0.25, clock=time.time, log_rejects=20,
        rate_limit=64, rate_window=300.0, accepted=None,
    ):
        self.conn = conn
        self.verify = verify
        self.accepted = accepted  # seat -> its key is still accepted (asked again at flush); None: not asked
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.clock = clock
        self.log_rejects = log_rejects
        self.limit = RateLimit(rate_limit, rate_window)
        self.seen = {}  # seat -> [epoch, seq, missed]: this process's view of ingest_seq
        self.known = {r[0] for r in conn.execute("SELECT seat FROM seats")}
        self._reset()

    def _reset(self):
        self.rows, self.rejects = {}, []
        self.events = {}  # seat -> [(epoch, seq, accepted), ...] taken in this batch, in order
        self.counts = collections.Counter(accepted=0)
        self.stats = collections.Counter()
        self.sampled = collections.Counter()
        self.deadline = None

    def _seen(self, seat):
        if seat not in self.seen:
            got = self.conn.execute("SELECT epoch, seq, missed FROM ingest_seq WHERE seat = ?", (seat,)).fetchone()
            self.seen[seat] = list(got) if got else None
        return self.seen[seat]

    def _admit(self, tag, data, now):
        sender, data = verified(tag, data, self.verify)
        epoch, seq, ts, reason, facts = envelope(sender, data)
        seen = self._seen(sender)
        try:
            missed = freshness(seen, epoch, seq)
        except Rejected as exc:
            exc.claimed = sender
            raise
        # fresh here: later copies are duplicates; gaps are counted when the batch is settled
        self.seen[sender] = [epoch, seq, (seen[2] if seen else 0) + missed]
        taken = self.events.setdefault(sender, [])
        if not self.limit.admit(sender, now):
            taken.append((epoch, seq, False))
            raise Rejected("rate_limited", sender, f"over {self.limit.limit} events in {self.limit.window:g} s")
        taken.append((epoch, seq, True))
        return _row(sender, epoch, seq, ts, reason, facts, now)

    def add(self, tag, data):
        """Validate one event and buffer it (or its refusal). Never raises."""
        now = self.clock()
        try:
            row = self._admit(tag, data, now)
        except Rejected as exc:
            self._reject(now, exc)
        except Exception as exc:  # pylint: disable=broad-except
            self._reject(now, Rejected("malformed", None, f"unreadable event: {type(exc).__name__}"))
        else:
            self.counts["accepted"] += 1
            self.counts["flagged"] += bool(row["flags"])
            prev = self.rows.get(row["seat"])
            if prev is not None and row["last_change"] is None:
                row["last_change"] = prev["last_change"]
            self.rows[row["seat"]] = row
        if self.deadline is None:
            self.deadline = now + self.flush_interval

    def _reject(self, now, exc):
        self.counts[exc.reason] += 1
        sender = exc.sender or ""
        claimed = exc.claimed if exc.claimed in self.known or exc.claimed == sender else UNKNOWN_SEAT
        self.stats[(int(now // 60), sender, claimed or "", exc.reason)] += 1
        origin = sender or f"?{claimed or ''}"
        if self.sampled[(origin, exc.reason)] < SAMPLE_KEEP:
            self.sampled[(origin, exc.reason)] += 1
            self.rejects.append((now, exc.sender, exc.claimed, exc.reason, exc.detail[:500], origin))

    def pending(self):
        """Events buffered (several events of one seat merge into one row, but each counts)."""
        return self.counts["accepted"] + sum(self.stats.values())

    def wait_time(self, idle=1.0):
        """Seconds the caller may block for the next event before a flush is due."""
        if self.deadline is None:
            return idle
        return max(0.001, self.deadline - self.clock())

    def due(self):
        return self.pending() >= self.batch_size or (
            self.deadline is not None and self.clock() >= self.deadline
        )

    def _stored(self, ids):
        ids, found = sorted(ids), {}
        for part in (ids[i:i + 500] for i in range(0, len(ids), 500)):
            sql = f"SELECT seat, epoch, seq, missed FROM ingest_seq WHERE seat IN ({', '.join('?' * len(part))})"
            found.update((r[0], tuple(r[1:])) for r in self.conn.execute(sql, part))
        return found

    def _settle(self, rows):
        """Under the write lock: each event against what any master stored; not newer: refused, not stored."""
        stored, now, views = self._stored(self.events), self.clock(), {}
        for seat_id, taken in self.events.items():
            view = stored.get(seat_id)
            for epoch, seq, accepted in taken:
                try:
                    missed = freshness(view, epoch, seq)
                except Rejected as exc:
                    if accepted:  # a rate-limited event was refused already
                        exc.claimed = seat_id
                        self.counts["accepted"] -= 1
                        self._reject(now, exc)
                    continue
                self.counts["missed"] += missed
                view = (epoch, seq, (view[2] if view else 0) + missed)
            views[seat_id] = view
        fresh = [r for r in rows if r["seat"] not in stored or (r["epoch"], r["seq"]) > stored[r["seat"]][:2]]
        return fresh, [(s, *v) for s, v in views.items() if v is not None and v != stored.get(s)], views

    def _write(self, rows):
        saved = (self.counts.copy(), self.stats.copy(), self.sampled.copy(), list(self.rejects), dict(self.events))
        try:
            with store.transaction(self.conn):
                # asked under the write lock: seat.retire deletes the key, then the rows (waiting for this lock)
                retired = self._drop_retired()
                rows, seqs, views = self._settle([r for r in rows if r["seat"] not in retired])
                self._write_rows(rows, seqs)
        except BaseException:
            self.counts, self.stats, self.sampled, self.rejects, self.events = saved  # the retry settles again
            raise
        for seat_id in retired:
            self.rows.pop(seat_id, None)
        self.seen.update((s, list(v)) for s, v in views.items() if v is not None)

    def _write_rows(self, rows, seqs):
        self.conn.executemany(_UPSERT, [tuple(r[c] for c in SEAT_COLUMNS) for r in rows])
        self.conn.executemany(_SEQ_UPSERT, seqs)
        self.conn.executemany(
            "INSERT INTO ingest_counters (name, value) VALUES (?, ?)"
            " ON CONFLICT(name) DO UPDATE SET value = ingest_counters.value + excluded.value",
            [(k, v) for k, v in self.counts.items() if v or k == "accepted"],
        )
        self.conn.executemany(
            "INSERT INTO ingest_reject_stats (minute, sender, claimed, reason, count) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT(minute, sender, claimed, reason) DO UPDATE"
            " SET count = ingest_reject_stats.count + excluded.count",
            [(*k, v) for k, v in self.stats.items()],
        )
        self._write_samples()

    def _write_samples(self):
        if not self.rejects:
            return
        self.conn.executemany(
            "INSERT INTO ingest_rejects (at, sender, claimed, reason, detail, origin) VALUES (?, ?, ?, ?, ?, ?)",
            self.rejects,
        )
        for origin, reason in self.sampled:
            self.conn.execute(
                "DELETE FROM ingest_rejects WHERE origin = ? AND reason = ? AND id <= COALESCE(("
                " SELECT id FROM ingest_rejects WHERE origin = ? AND reason = ?"
                " ORDER BY id DESC LIMIT 1 OFFSET ?), -1)",
                (origin, reason, origin, reason, SAMPLE_KEEP),
            )
        self.conn.execute(
            "DELETE FROM ingest_reject_stats WHERE minute < ?", (int((self.clock() - STATS_KEEP_S) // 60),)
        )

    def _isolate(self):
        for seat_id, row in list(self.rows.items()):
            try:
                with store.transaction(self.conn):
                    if self.accepted is None or self.accepted(seat_id):  # retired: refused by the _write below
                        self.conn.execute(_UPSERT, tuple(row[c] for c in SEAT_COLUMNS))
            except STORE_REFUSALS as exc:
                del self.rows[seat_id]
                self.counts["accepted"] -= 1
                self.events.pop(seat_id, None)  # not stored: its seq is not taken either
                self._reject(self.clock(), Rejected("malformed", seat_id, f"refused by the store: {exc}"))
        self._write([])  # counters and rejects; the good rows are in

    def _drop_retired(self):
        """
        Seats retired while their events waited in the buffer (verified at ``add``, the key deleted since):
        writing their rows would bring them back into the inventory. Refused as forged; returns their ids.
        """
        retired = {s for s in self.rows if self.accepted is not None and not self.accepted(s)}
        for seat_id in sorted(retired):
            self.counts["accepted"] -= sum(1 for *_, ok in self.events.pop(seat_id, []) if ok)
            detail = "the seat's key was deleted while its event was buffered"
            self._reject(self.clock(), Rejected("forged", seat_id, detail))
        return retired

    def flush(self):
        """Write the buffer in one transaction. On a store error the buffer is kept for the next try."""
        if not self.pending() and not self.events:
            self.deadline = None
            return {"accepted": 0, "rejected": 0}
        try:
            self._write(list(self.rows.values()))
        except STORE_REFUSALS:
            # A row the store refuses must not block the fleet: write one by one, reject the bad.
            log.exception("tc_ingest: batch refused by the store; isolating the bad rows")
            self._isolate()
        self.known.update(self.rows)
        for at, sender, claimed, reason, detail, _ in self.rejects[: self.log_rejects]:
            log.warning("tc_ingest: %s event from %s: %s", reason, attribution(sender, claimed, reason), detail)
        rejected = sum(self.stats.values())
        if rejected > self.log_rejects:
            log.warning("tc_ingest: %d more rejected events in this batch", rejected - self.log_rejects)
        result = {"accepted": self.counts["accepted"], "rejected": rejected}
        self._reset()
        return result


def ingestor(opts, batch_size=500, flush_interval=0.25, rate_limit=64, rate_window=None):
    """Build an :class:`Ingestor` on the tc master's store and minion keys."""
    if rate_window is None:  # one heartbeat
        rate_window = float(((opts.get("deskfleet") or {}).get("tc") or {}).get("heartbeat", 300))
    return Ingestor(
        open_store(opts), pki_verifier(opts["pki_dir"]), batch_size, flush_interval,
        rate_limit=rate_limit, rate_window=rate_window,
        accepted=lambda seat: os.path.isfile(os.path.join(opts["pki_dir"], "minions", seat)),
    )
