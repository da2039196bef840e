"""
The cloud port of the maintenance roll (``maintenance_roll``) over an
openstacksdk Connection: nova-compute services, servers on a host, placement
per host, deletes, live migrations. Plain data out, no Salt.
"""

BINARY = "nova-compute"
IN_PROGRESS = ("queued", "preparing", "running", "post-migrating", "accepted")


class NovaCloud:
    def __init__(self, conn):
        self.conn = conn

    # ---- services ------------------------------------------------------------------

    def services(self):
        """{host: {disabled, reason, up}} of every nova-compute service."""
        return {
            s.host: {"disabled": s.status == "disabled", "reason": s.disabled_reason, "up": s.state == "up"}
            for s in self.conn.compute.services(binary=BINARY)
        }

    def service(self, host):
        return self.services().get(host)

    def disable(self, host, reason):
        self.conn.compute.disable_service(None, host=host, binary=BINARY, disabled_reason=reason)

    def enable(self, host):
        self.conn.compute.enable_service(None, host=host, binary=BINARY)

    # ---- servers -------------------------------------------------------------------

    @staticmethod
    def _server(s):
        flavor = s.flavor or {}
        return {
            "id": s.id,
            "name": s.name,
            "host": s.compute_host,
            "status": s.status,
            "task_state": s.task_state,
            "metadata": dict(s.metadata or {}),
            "flavor": {"ram": flavor.get("ram", 0), "vcpus": flavor.get("vcpus", 0), "disk": flavor.get("disk", 0)},
        }

    def servers_on(self, host):
        return [self._server(s) for s in self.conn.compute.servers(details=True, all_projects=True, compute_host=host)
                if s.compute_host == host]

    def servers(self):
        return [self._server(s) for s in self.conn.compute.servers(details=True, all_projects=True)]

    def server(self, sid):
        found = self.conn.compute.find_server(sid, ignore_missing=True)
        if found is None or found.status in ("DELETED", "SOFT_DELETED"):
            return None
        return self._server(self.conn.compute.get_server(found.id))

    def delete(self, sid):
        self.conn.compute.delete_server(sid, ignore_missing=True)

    def server_groups(self):
        """Server groups with a hard policy: [{id, name, policy, members: {server id: host}}]."""
        groups = []
        for g in self.conn.compute.server_groups(all_projects=True):
            policy = g.policy or next(iter(g.policies or []), None)  # ``policies`` before microversion 2.64
            if policy in ("anti-affinity", "affinity") and g.member_ids:
                groups.append({"id": g.id, "name": g.name, "policy": policy, "members": list(g.member_ids)})
        if groups:
            hosts = {s["id"]: s["host"] for s in self.servers()}
            for group in groups:
                group["members"] = {sid: hosts.get(sid) for sid in group["members"]}
        return groups

    # ---- placement -----------------------------------------------------------------

    def providers(self):
        """Placement per compute host, ``disabled`` from its nova-compute service (placement may lag)."""
        services = self.services()
        out = []
        for rp in self.conn.placement.resource_providers():
            inventories = {
                inv.resource_class: {
                    "total": inv.total,
                    "reserved": inv.reserved or 0,
                    "allocation_ratio": inv.allocation_ratio or 1.0,
                    "max_unit": inv.max_unit or inv.total,
                }
                for inv in self.conn.placement.resource_provider_inventories(rp)
            }
            usages = self.conn.placement.fetch_resource_provider_usages(rp).usages or {}
            svc = services.get(rp.name) or {}
            out.append({"name": rp.name, "inventories": inventories, "usages": usages,
                        "disabled": bool(svc.get("disabled")) or not svc})
        return out

    # ---- live migration ------------------------------------------------------------

    def live_migrate(self, sid):
        # the scheduler picks the destination; block_migration auto suits both shared and local disks
        self.conn.compute.live_migrate_server(sid, host=None, block_migration="auto")

    def migration(self, sid):
        """The newest live migration of ``sid``: {id, status, dest}, or None."""
        migrations = list(self.conn.compute.migrations(instance_uuid=sid, migration_type="live-migration"))
        if not migrations:
            return None
        newest = max(migrations, key=lambda m: (m.created_at or "", _number(m.to_dict().get("id"))))
        return {"id": newest.to_dict().get("id"), "status": newest.status, "dest": newest.dest_compute}

    def abort_migration(self, sid, migration_id):
        for mig in self.conn.compute.server_migrations(sid):
            if str(mig.id) == str(migration_id) or migration_id is None:
                self.conn.compute.abort_server_migration(mig, sid, ignore_missing=True)


def _number(value):
    return value if isinstance(value, int) else 0
