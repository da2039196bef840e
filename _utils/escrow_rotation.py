"""
Two-phase password rotation, vm master side: the escrow holds a password
before any machine uses it.

1. ``local_password.prepare`` on the machines: each generates a password and
   returns it sealed to the escrow key (nothing changes on the machine);
2. each vetted ciphertext is written ``pending`` (a fsync'd transaction);
3. ``local_password.commit`` only to machines whose row is on disk: they set it;
4. each row becomes ``in_force`` (the machine said so), ``failed`` (the machine
   refused: still on its previous password) or ``in_doubt`` (no answer).

A store fault in 2 leaves the machine on its escrowed password; one in 4 leaves
the row ``pending``, which ``escrow_store.due`` reports as in doubt once it is older
than ``in_doubt_after``. Salt is injected (``gather``), so this is tested without it.
"""

import logging

import deskfleet_store as store
import escrow_check
import escrow_store

log = logging.getLogger(__name__)

PREPARE = "local_password.prepare"
COMMIT = "local_password.commit"


def error_of(ret, retcode):
    """The error text of a minion return, or None when it is a plain success."""
    if retcode or not isinstance(ret, dict) or "error" in ret:
        return str(ret.get("error") if isinstance(ret, dict) and "error" in ret else ret)[:500]
    return None


class Rotation:
    """
    One run over the targeted machines. ``gather(target, fun, arg, kwarg, tgt_type)``
    publishes a job and returns ``(pub data, {vm: (return, retcode)})``;
    ``audit(conn, **fields)`` appends an audit record.
    """

    def __init__(self, conn, gather, audit, account, fingerprint, keep=escrow_store.DEFAULT_HISTORY):
        self.conn, self.gather, self.audit_fn = conn, gather, audit
        self.account, self.fp, self.keep = account, fingerprint, keep
        self.out = {"rotated": {}, "refused": {}, "failed": {}, "in_doubt": {}}
        self.faults, self.pending = [], {}

    def run(self, target, tgt_type):
        """The run's result (``rotated``, ``refused``, ``failed``, ``in_doubt``, ``no_return``, ``jid``)."""
        pub, found = self.gather(target, PREPARE, [self.account], {"expect_fingerprint": self.fp}, tgt_type)
        for vm, (ret, retcode) in sorted(found.items()):
            self._prepared(vm, ret, retcode, pub.get("jid"))
        if self.pending:
            rotations = {vm: row["rotated_at"] for vm, (_, row) in self.pending.items()}
            _, done = self.gather(sorted(self.pending), COMMIT, [self.account], {"rotations": rotations}, "list")
            for vm, (escrow_id, row) in sorted(self.pending.items()):
                self._committed(vm, escrow_id, row, done.get(vm))
        return dict(self.out, jid=pub.get("jid"), account=self.account, fingerprint=self.fp,
                    no_return=sorted(set(pub.get("minions") or []) - set(found)))  # fmt: skip

    @property
    def fault(self):
        """The first store fault of the run, or None."""
        return self.faults[0] if self.faults else None

    def _audit(self, **fields):
        # an outcome is reported in the result even when its audit record cannot be written
        try:
            self.audit_fn(self.conn, action="rotate", vm=fields.pop("vm"), account=self.account, **fields)
        except store.StoreError as exc:
            self.faults.append(exc)

    def _prepared(self, vm, ret, retcode, jid):
        """Vet one machine's sealed password and write it pending; only then may the machine use it."""
        error = error_of(ret, retcode)
        if error:
            self.out["failed"][vm] = error
            self._audit(vm=vm, outcome="failed", reason=error)
            return
        try:
            row = escrow_check.check_return(ret, vm, self.account, self.fp)
        except escrow_check.Refused as exc:
            self.out["refused"][vm] = f"{exc}; nothing was set on the machine"
            self._audit(vm=vm, outcome="refused", reason=str(exc), key_fingerprint=self.fp)
            log.warning("password: refused the escrow return of %s: %s", vm, exc)
            return
        if self.faults:  # the store already failed in this run: do not wait on it again per machine
            self.out["failed"][vm] = f"not rotated, the password is unchanged: the escrow store failed ({self.fault})"
            return
        try:
            self.pending[vm] = (escrow_store.add_escrow(self.conn, row, jid=jid, keep=self.keep, state="pending"), row)
        except store.StoreError as exc:
            self.faults.append(exc)
            self.out["failed"][vm] = f"not rotated, the password is unchanged: the escrow store refused the write: {exc}"

    def _committed(self, vm, escrow_id, row, answer):
        """Record what the machine said to ``commit``: in force, failed (unchanged), or in doubt."""
        ret, retcode = answer if answer is not None else (None, 0)
        error = error_of(ret, retcode) if answer is not None else f"no answer to {COMMIT}"
        ok = not error and ret.get("committed") is True and ret.get("rotated_at") == row["rotated_at"]
        refused = answer is not None and bool(retcode)  # the machine raised: nothing was set
        if not ok and not refused and not error:
            error = f"unexpected answer to {COMMIT}: {str(ret)[:200]}"
        state = "in_force" if ok else "failed" if refused else "in_doubt"
        try:
            if self.faults:  # the store already failed in this run: the row stays pending (in doubt)
                raise self.fault
            escrow_store.mark(self.conn, escrow_id, state, verified=ret.get("verified") if ok else None)
        except store.StoreError as exc:
            if exc is not self.fault:
                self.faults.append(exc)
            self.out["in_doubt"][vm] = (f"escrow id {escrow_id}: {'set on the machine' if ok else error}, but not"
                                        f" recorded: {exc}; password.show lists both candidates,"
                                        " password.rotate_due repairs it")  # fmt: skip
            return
        if ok:
            self.out["rotated"][vm] = {"rotated_at": row["rotated_at"], "escrow_id": escrow_id,
                                       "verified": ret.get("verified")}  # fmt: skip
            self._audit(vm=vm, outcome="ok", escrow_id=escrow_id, key_fingerprint=row["fingerprint"])
        elif refused:
            self.out["failed"][vm] = f"the machine did not set it (password unchanged): {error}"
            self._audit(vm=vm, outcome="failed", reason=error, escrow_id=escrow_id)
        else:
            self.out["in_doubt"][vm] = (f"escrow id {escrow_id}: {error}; the machine may be on it or on the previous"
                                        " password: password.show lists both, password.rotate_due repairs it")
            self._audit(vm=vm, outcome="in_doubt", reason=error, escrow_id=escrow_id)
