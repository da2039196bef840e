"""
The enrollment guard: acts on ``salt/auth`` and ``salt/key`` events and on a
periodic sweep, over the store (``enroll_store``) and the master's keys
(``enroll_keys``); decisions come from ``enrollment``. Used by the ``enroll``
engine and runner. Clock and event sender are passed in.

Events are only triggers: everything is re-checked against the keys on disk
and the proof, because an accepted minion can put any tag on the bus.
"""

import logging
import time

import enroll_store
import enrollment

log = logging.getLogger(__name__)
TAG = "deskfleet/enroll/"
AUTH_ACTS = ("pend", "denied")


def _fp(pub):
    try:
        return enrollment.fingerprint(pub)
    except enrollment.EnrollError:
        return None


class Guard:
    def __init__(self, conn, keys, settings, clock=time.time, fire=None, actor="enroll-engine"):
        self.conn = conn
        self.keys = keys
        self.settings = settings
        self.clock = clock
        self.fire = fire or (lambda tag, data: None)
        self.actor = actor

    # -- salt/auth --------------------------------------------------------------
    def on_auth(self, data):
        """Handle one ``salt/auth`` event; returns ``(action, reason)`` or None if not ours."""
        if not isinstance(data, dict) or "cmd" in data:  # minion-fired events carry cmd=_minion_event
            return None
        act, minion_id, pub = data.get("act"), data.get("id"), data.get("pub")
        if act not in AUTH_ACTS or not isinstance(minion_id, str) or not isinstance(pub, str):
            return None
        grains = data.get("autosign_grains")
        grain = grains.get(enrollment.GRAIN) if isinstance(grains, dict) else None
        now = self.clock()
        key = self.keys.get(minion_id)
        token = enroll_store.open_token(self.conn, minion_id, now)
        approved = enroll_store.approved(self.conn, minion_id)
        action, reason = enrollment.decide(
            act, minion_id, pub, grain, key, token, approved and approved["fingerprint"], self.settings["id_re"],
            is_reserved=enrollment.reserved(minion_id, self.settings),
        )
        fp = _fp(pub)
        if action in ("accept", "install"):
            self._enrol(now, minion_id, pub, fp, token, key, reason)
        elif action == "approved":  # two tc masters share the store: the other one enrolled this very key
            self.keys.install(minion_id, pub)
            enroll_store.audit(self.conn, now, "accepted", self.actor, reason, minion_id, None, fp)
            self.fire(TAG + "enrolled", {"id": minion_id, "token_id": None, "fingerprint": fp, "replaced": None})
        elif action == "delete":
            if self.keys.drop_pending(minion_id, key["pub"]):
                self._refused(now, minion_id, _fp(key["pub"]), reason, deleted=True)
        elif action == "refuse":
            self._refused(now, minion_id, fp, reason, deleted=False)
        return action, reason

    def _enrol(self, now, minion_id, pub, fp, token, key, reason):
        # consumed before the key is written: a token is single use even if the write fails
        replaced = _fp(key["pub"]) if key else None
        detail = reason + (f"; replaced {key['state']} key {replaced}" if key and replaced != fp else "")
        if not enroll_store.close_token(self.conn, now, token["token_id"], "consumed", self.actor, fingerprint=fp, detail=detail):
            return
        try:
            self.keys.install(minion_id, pub)
        except Exception as exc:  # pylint: disable=broad-except
            log.error("enroll: token %s of %s consumed but the key could not be written: %s", token["token_id"], minion_id, exc)
            enroll_store.audit(self.conn, now, "error", self.actor, f"key write failed: {exc}", minion_id, token["token_id"], fp)
            self.fire(TAG + "error", {"id": minion_id, "token_id": token["token_id"], "fingerprint": fp, "error": str(exc)})
            return
        enroll_store.approve(self.conn, now, minion_id, fp, "token", self.actor, serial=token["serial"], token_id=token["token_id"])
        log.warning("enroll: %s enrolled with token %s, key %s", minion_id, token["token_id"], fp)
        self.fire(TAG + "enrolled", {"id": minion_id, "token_id": token["token_id"], "fingerprint": fp, "replaced": replaced})

    def _refused(self, now, minion_id, fp, reason, deleted):
        enroll_store.refused(self.conn, now, minion_id, fp, reason)
        log.warning("enroll: refused key %s for %s%s: %s", fp, str(minion_id)[:128], " (deleted)" if deleted else "", reason)
        self.fire(TAG + "refused", {"id": str(minion_id)[:128], "fingerprint": fp, "reason": reason, "deleted": deleted})

    # -- salt/key (someone accepted a key, e.g. salt-key -a) -----------------------
    def on_key(self, data):
        """A key accepted outside deskfleet for a protected id is deleted again (audited as misuse)."""
        if not isinstance(data, dict) or "cmd" in data or data.get("act") != "accept":
            return None
        minion_id = data.get("id")
        if not isinstance(minion_id, str):
            return None
        return self._check_accepted(self.clock(), minion_id)

    def _check_accepted(self, now, minion_id):
        key = self.keys.get(minion_id)
        if not key or key.get("state") != "accepted":
            return None
        token = enroll_store.open_token(self.conn, minion_id, now)
        approved = enroll_store.approved(self.conn, minion_id)
        fp = _fp(key["pub"])
        if approved and approved["fingerprint"] == fp:
            return "ok"
        if token and token["replace"] and approved is None:
            return "ok"  # a seat enrolled before deskfleet's guard, being re-keyed: its key stays until the device proves
        if token is None and approved is None:
            enroll_store.audit(self.conn, now, "accepted-outside", "salt-key?", "key accepted without a token or enroll.accept",
                               minion_id, None, fp)  # fmt: skip
            self.fire(TAG + "alert", {"id": minion_id, "fingerprint": fp, "reason": "accepted outside deskfleet"})
            return "alert"
        deleted = self.keys.delete(minion_id)
        why = "open token" if token else f"approved key {approved['fingerprint']}"
        enroll_store.audit(self.conn, now, "misuse", "salt-key?", f"accepted key of a protected id ({why}) deleted: {deleted}",
                           minion_id, token and token["token_id"], fp)  # fmt: skip
        log.error("enroll: key %s of %s was accepted outside deskfleet (%s): deleted", fp, minion_id, why)
        self.fire(TAG + "alert", {"id": minion_id, "fingerprint": fp, "reason": f"accepted outside deskfleet; {why}; deleted"})
        return "revoked"

    # -- sweep ---------------------------------------------------------------------
    def sweep(self):
        """Expire tokens and pending keys; drop pre-claims missed by events. Returns counts by reason."""
        now = self.clock()
        done = {"tokens_expired": len(enroll_store.expire_tokens(self.conn, now))}
        protected = enroll_store.protected_ids(self.conn, now)
        for minion_id, pub, mtime in self.keys.pending():
            guarded = minion_id in protected or enrollment.reserved(minion_id, self.settings)
            verdict, reason = enrollment.sweep_verdict(now, minion_id, mtime, guarded, self.settings)
            if verdict == "delete" and self.keys.drop_pending(minion_id, pub):
                enroll_store.refused(self.conn, now, minion_id, _fp(pub), reason)
                kind = reason.split(" (")[0].split(":")[0]
                done[kind] = done.get(kind, 0) + 1
        for token in enroll_store.tokens(self.conn, state="issued"):
            if self._check_accepted(now, token["minion_id"]) == "revoked":
                done["revoked"] = done.get("revoked", 0) + 1
        if len(done) > 1 or done["tokens_expired"]:
            self.fire(TAG + "sweep", done)
        return done

    def pending_report(self):
        """Every pending key with its fingerprint, age and what the sweep will do."""
        now = self.clock()
        protected = enroll_store.protected_ids(self.conn, now)
        rows = []
        for minion_id, pub, mtime in sorted(self.keys.pending()):
            age = max(0.0, now - mtime)
            guarded = minion_id in protected or enrollment.reserved(minion_id, self.settings)
            verdict, reason = enrollment.sweep_verdict(now, minion_id, mtime, guarded, self.settings)
            rows.append({
                "id": minion_id, "fingerprint": _fp(pub), "age_seconds": round(age),
                "expires_in": max(0, round(self.settings["pending_ttl"] - age)),
                "open_token": enroll_store.open_token(self.conn, minion_id, now) is not None,
                "sweep": reason if verdict == "delete" else "kept until expiry",
            })  # fmt: skip
        return rows
