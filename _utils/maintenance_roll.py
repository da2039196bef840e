"""
Rolling host maintenance, carried out: walks the journal's hosts batch by
batch through ``maintenance.STEPS``, recording each step before and after it
runs. Everything outside is passed in, so the same engine runs against the
Nova lab, a real cloud, simulated or real hosts, and a fake clock:

cloud    service(host) -> {disabled, reason, up} | None; disable(host, reason); enable(host);
         servers_on(host) -> [server]; server(id) -> server | None; providers() -> placement;
         server_groups() -> [{id, name, policy, members: {server id: host}}];
         delete(id); live_migrate(id); migration(id) -> {id, status, dest} | None (newest);
         abort_migration(id, migration_id)
hosts    ping(host) -> bool; boot_id(host) -> str | None; stop(host) -> dict; reboot(host);
         start(host) -> dict; verify(host) -> {"ok": bool, ...}  (``maintenance_hosts``)
notify   notify(server, text) -> None: a message on the desktop's session
fire     fire(tag, data): an event on the master bus
clock    now() -> aware datetime; sleep(seconds)
"""

import datetime

import host_capacity
import maintenance as plan_mod
import maintenance_journal as journal

TAG = "deskfleet/maintenance/{host}/{step}"
MIGRATION_FAILED = ("error", "failed", "cancelled", "aborted")
DRAIN_TIMEOUT = 300
WAIT_POLL = 15.0  # seconds between looks while desktops wait for their users to log off


class StepFailed(Exception):
    """A step cannot complete; the message says why (it becomes the host's error)."""


class Aborted(Exception):
    """Ops aborted the roll while a step ran."""


class Roll:
    def __init__(self, db, roll_id, cloud, hosts, notify, fire, clock, sessions=None):
        self.db, self.roll_id = db, roll_id
        self.cloud, self.hosts, self.notify, self.fire, self.clock = cloud, hosts, notify, fire, clock
        self.sessions = sessions  # sessions(server) -> {"logged_on", "fresh"} | None, from the session beacon
        self.request = journal.get_roll(db, roll_id)["request"]
        self.deadline = datetime.datetime.fromisoformat(self.request["deadline"])
        self.batch = []

    # ---- driving ------------------------------------------------------------------

    def _ts(self):
        return self.clock.now().timestamp()

    def _aborted(self):
        return journal.get_roll(self.db, self.roll_id)["state"] == "aborted"

    def run(self):
        """Run (or resume) the roll to its end, its first failure over the threshold, or an abort."""
        roll = journal.get_roll(self.db, self.roll_id)
        if roll["state"] in ("done", "aborted"):
            return journal.summary(self.db, self.roll_id)
        journal.set_roll_state(self.db, self.roll_id, "running", self._ts())
        states = {h["host"]: h["state"] for h in journal.hosts(self.db, self.roll_id)}
        failed = []
        for batch in plan_mod.batches(self.request["hosts"], self.request["batch"]):
            self.batch = [h for h in batch if states[h] != "done"]
            try:
                failed += self._run_batch()
            except Aborted:
                return journal.summary(self.db, self.roll_id)
            if len(failed) > self.request["max_failures"]:
                error = f"stopped: {len(failed)} host(s) failed ({', '.join(failed)}), threshold {self.request['max_failures']}"
                journal.set_roll_state(self.db, self.roll_id, "failed", self._ts(), error)
                return journal.summary(self.db, self.roll_id)
        final = "failed" if failed else "done"
        journal.set_roll_state(self.db, self.roll_id, final, self._ts(), f"failed: {', '.join(failed)}" if failed else None)
        return journal.summary(self.db, self.roll_id)

    def _run_batch(self):
        failed = []
        for step in plan_mod.STEPS:
            for host in [h for h in self.batch if h not in failed]:
                if self._aborted():
                    raise Aborted()
                if not self._run_step(host, step):
                    failed.append(host)
        for host in self.batch:
            if host not in failed:
                journal.set_host(self.db, self.roll_id, host, self._ts(), state="done")
        return failed

    def _run_step(self, host, step):
        recorded = journal.steps(self.db, self.roll_id, host).get(step)
        if recorded and recorded["state"] == "done":
            return True  # finished before a restart: never again
        detail = journal.begin(self.db, self.roll_id, host, step, self._ts())
        tag = TAG.format(host=host, step=step)
        self.fire(tag, {"roll": self.roll_id, "host": host, "step": step, "state": "started"})
        try:
            result = getattr(self, f"_step_{step}")(host, detail) or {}
        except Aborted:
            journal.finish(self.db, self.roll_id, host, step, self._ts(), ok=False, error="aborted by ops")
            self.fire(tag, {"roll": self.roll_id, "host": host, "step": step, "state": "aborted"})
            raise
        except Exception as exc:  # pylint: disable=broad-except
            # a cloud or host error fails this step and leaves the host where it is
            error = str(exc) if isinstance(exc, StepFailed) else f"{type(exc).__name__}: {exc}"
            journal.finish(self.db, self.roll_id, host, step, self._ts(), ok=False, error=error)
            self.fire(tag, {"roll": self.roll_id, "host": host, "step": step, "state": "failed", "error": error})
            return False
        journal.finish(self.db, self.roll_id, host, step, self._ts(), detail=result)
        self.fire(tag, {"roll": self.roll_id, "host": host, "step": step, "state": "done", **_brief(result)})
        return True

    def _wait(self, what, timeout, check):
        """Poll ``check()`` until it returns a true value; StepFailed after ``timeout`` seconds."""
        start = self.clock.now()
        while True:
            value = check()
            if value:
                return value
            if self._aborted():
                raise Aborted()
            if (self.clock.now() - start).total_seconds() > timeout:
                raise StepFailed(f"{what}: not within {timeout} s")
            self.clock.sleep(self.request["poll"])

    # ---- steps ------------------------------------------------------------------------

    def _step_precheck(self, host, _detail):
        if not self.hosts.ping(host):
            raise StepFailed("the host's minion does not answer")
        svc = self.cloud.service(host)
        if svc is None:
            raise StepFailed("no nova-compute service on this host")
        if svc.get("disabled") and not plan_mod.is_ours(svc.get("reason")):
            raise StepFailed(f"nova-compute already disabled by someone else: {svc.get('reason') or 'no reason'}")
        servers = {h: self.cloud.servers_on(h) for h in self.batch}
        capacity = host_capacity.hosts_from_placement(self.cloud.providers())
        check = plan_mod.check_capacity(capacity, self.batch, servers, groups=self.cloud.server_groups())
        if host in check["unplaced"]:
            names = {s["id"]: s.get("name") for s in servers[host]}
            raise StepFailed("refused: " + plan_mod.shortfall_text(check, host, names))
        spares, taken = plan_mod.split_desktops(servers[host])
        journal.set_host(self.db, self.roll_id, host, self._ts(), desktops_left=len(taken), spares=len(spares))
        return {"taken": len(taken), "spares": len(spares)}

    def _step_disable(self, host, _detail):
        self.cloud.disable(host, plan_mod.disabled_reason(self.request["reason"]))
        svc = self.cloud.service(host) or {}
        if not svc.get("disabled") or not plan_mod.is_ours(svc.get("reason")):
            raise StepFailed(f"nova-compute is not disabled with our reason after the call: {svc}")
        journal.set_host(self.db, self.roll_id, host, self._ts(), disabled=True)
        return {"reason": svc.get("reason")}

    def _spares_on(self, host):
        return [s for s in self.cloud.servers_on(host) if plan_mod.is_spare(s)]

    def _step_drain(self, host, _detail):
        deleted = []
        for server in self._spares_on(host):
            self.cloud.delete(server["id"])
            deleted.append(server["id"])
        self._wait("spares deleted", DRAIN_TIMEOUT, lambda: not self._spares_on(host))
        journal.set_host(self.db, self.roll_id, host, self._ts(), spares_deleted=deleted)
        return {"deleted": deleted}

    def _step_migrate(self, host, detail):
        moved, recycled = list(detail.get("migrations") or []), set(detail.get("recycled") or [])
        notices = {k: [datetime.datetime.fromisoformat(t) for t in v] for k, v in (detail.get("notices") or {}).items()}
        while True:
            servers = [s for s in self.cloud.servers_on(host) if s.get("task_state") != "deleting"]
            # one read per desktop and pass: a user logging off between two reads would be moved, not recycled
            said = {s["id"]: self._session_of(s) for s in servers}
            for spare in (s for s in servers if plan_mod.is_spare(s) or _logged_off(said[s["id"]])):
                self.cloud.delete(spare["id"])  # a spare now, or its user logged off: recycled, not moved
                recycled.add(spare["id"])
            taken = [s for s in servers if s["id"] not in recycled]
            journal.set_host(self.db, self.roll_id, host, self._ts(), desktops_left=len(taken), migrations=moved,
                             recycled=sorted(recycled))
            if not taken:
                return {"migrations": moved, "recycled": sorted(recycled)}
            now = self.clock.now()
            if now > self.deadline:
                names = ", ".join(s.get("name") or s["id"] for s in taken)
                if not self.request["force"]:
                    raise StepFailed(f"deadline passed with {len(taken)} desktop(s) still on the host: {names}")
                return {"migrations": moved, "recycled": sorted(recycled), "forced": [s["id"] for s in taken]}
            self._tell(taken, notices, now)
            journal.note(self.db, self.roll_id, host, "migrate", {"recycled": sorted(recycled),
                         "notices": {k: [t.isoformat() for t in v] for k, v in notices.items()}})
            # wait-for-logoff: a pool desktop in use waits until its user logs off (then it is
            # recycled) or the policy's end; everything else moves now, one at a time
            waiting = [s for s in taken if _may_log_off(said[s["id"]])] if not self._wait_over(now) else []
            movable = [s for s in taken if s not in waiting]
            if not movable:
                journal.note(self.db, self.roll_id, host, "migrate", {"waiting": [s["id"] for s in waiting]})
                if self._aborted():
                    raise Aborted()
                self.clock.sleep(max(self.request["poll"], WAIT_POLL))
                continue
            moved.append(self._migrate_one(host, movable[0], detail))
            journal.note(self.db, self.roll_id, host, "migrate", {"migrations": moved, "moving": None})

    def _tell(self, taken, notices, now):
        """Every user still on the host is told at once, then again at each lead time before the deadline."""
        for server in taken:
            sent = notices.setdefault(server["id"], [])
            if plan_mod.notice_due(sent, now, self.deadline):
                self.notify(server, plan_mod.notice_text(self.request["reason"], self.deadline, now))
                sent.append(now)

    def _wait_over(self, now):
        lead = self.request.get("wait_logoff")
        return lead is None or now >= self.deadline - datetime.timedelta(seconds=lead)

    def _session_of(self, server):
        """What a pool desktop's own signed session beacon last said ({} for anything else)."""
        if self.sessions is None or "deskfleet_pool" not in (server.get("metadata") or {}):
            return {}
        return self.sessions(server) or {}

    def _migrate_one(self, host, server, detail):
        sid = server["id"]
        started = self.clock.now()
        previous = self.cloud.migration(sid)
        resuming = detail.get("moving") == sid and previous and previous.get("status") not in MIGRATION_FAILED + ("completed",)
        if not resuming:  # a migration in flight before a restart is polled, not started again
            journal.note(self.db, self.roll_id, host, "migrate", {"moving": sid})
            try:
                self.cloud.live_migrate(sid)
            except Exception as exc:  # pylint: disable=broad-except
                raise StepFailed(f"live migration of {server.get('name') or sid} refused: {exc}; it stays on {host}") from exc
        seen = (previous or {}).get("id") if not resuming else None
        current = {}

        def landed():
            now_server = self.cloud.server(sid)
            mig = self.cloud.migration(sid) or {}
            if mig.get("id") != seen:
                current.update(mig)
            if now_server is None:
                return "gone"
            if now_server.get("status") == "ERROR":
                raise StepFailed(f"desktop {server.get('name') or sid} went to ERROR during its live migration")
            if current.get("status") in MIGRATION_FAILED:
                raise StepFailed(f"live migration of {server.get('name') or sid} {current['status']}; it stays on {host}")
            if now_server.get("host") != host and now_server.get("status") == "ACTIVE" and not now_server.get("task_state"):
                return now_server["host"]
            return None

        try:
            dest = self._wait(f"live migration of {server.get('name') or sid}", self.request["migration_timeout"], landed)
        except (StepFailed, Aborted) as exc:
            if current.get("id") and current.get("status") not in MIGRATION_FAILED + ("completed",):
                self.cloud.abort_migration(sid, current["id"])
                if isinstance(exc, StepFailed):
                    raise StepFailed(f"{exc}; migration {current['id']} aborted") from exc
            raise
        seconds = round((self.clock.now() - started).total_seconds(), 2)
        return {"server": sid, "name": server.get("name"), "from": host, "to": dest, "seconds": seconds}

    def _step_stop(self, host, _detail):
        return self.hosts.stop(host)

    def _step_reboot(self, host, detail):
        if detail.get("requested"):
            return {"boot_id_before": detail.get("boot_id_before"), "resumed": True}  # never twice
        before = self.hosts.boot_id(host)
        journal.note(self.db, self.roll_id, host, "reboot", {"boot_id_before": before, "requested": True})
        self.hosts.reboot(host)
        return {"boot_id_before": before}

    def _step_wait_minion(self, host, _detail):
        before = journal.steps(self.db, self.roll_id, host)["reboot"]["detail"].get("boot_id_before")

        def back():
            if not self.hosts.ping(host):
                return None
            now_id = self.hosts.boot_id(host)
            return now_id if now_id and now_id != before else None

        boot_id = self._wait("minion back after a new boot", self.request["minion_timeout"], back)
        return {"boot_id": boot_id}

    def _step_start(self, host, _detail):
        return self.hosts.start(host)

    def _step_verify(self, host, _detail):
        result = self.hosts.verify(host)
        if not result.get("ok"):
            bad = [name for name, check in (result.get("checks") or {}).items() if not check.get("ok")]
            raise StepFailed(f"verification failed: {', '.join(bad) or result.get('error') or 'see detail'}")
        return result

    def _step_enable(self, host, _detail):
        self.cloud.enable(host)
        svc = self.cloud.service(host) or {}
        if svc.get("disabled"):
            raise StepFailed(f"nova-compute is still disabled after the call: {svc}")
        journal.set_host(self.db, self.roll_id, host, self._ts(), disabled=False)
        return {"enabled": True}


def _may_log_off(session):
    """A fresh report says a user is on it: worth waiting for."""
    return bool(session.get("fresh")) and session.get("logged_on") is True


def _logged_off(session):
    """A fresh report says nobody is logged on: recycled, not moved."""
    return bool(session.get("fresh")) and session.get("logged_on") is False


def _brief(result):
    """Small scalar facts for the event (the full detail stays in the journal)."""
    return {k: v for k, v in result.items() if isinstance(v, (int, float, str, bool)) or v is None}


class SystemClock:
    def now(self):
        return datetime.datetime.now(datetime.timezone.utc)

    def sleep(self, seconds):
        import time  # pylint: disable=import-outside-toplevel

        time.sleep(seconds)
