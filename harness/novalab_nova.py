"""
The nova side of novalab (``harness/novalab.py``): the config file, nova's in-process Glance and
Neutron fakes, the sized fake driver, SQLite set-up and the lab's stand-in for keystonemiddleware.
Runs only in the server process, after eventlet's monkey patching.
"""

# Nova is imported inside functions on purpose: the server monkey-patches (eventlet) first.
# pylint: disable=import-outside-toplevel

import os
import sys
import uuid

from harness.novalab import PROJECT_ID, TOKEN

NOVA_CONF = """\
[DEFAULT]
debug = {debug}
log_file = {log_file}
use_stderr = false
state_path = {workdir}/state
instances_path = {workdir}/instances
host = novalab-control
my_ip = 127.0.0.1
transport_url = fake:/
compute_driver = fake.NovaLabDriver
ram_allocation_ratio = {ram_ratio}
cpu_allocation_ratio = {cpu_ratio}
disk_allocation_ratio = 1.0
reserved_host_memory_mb = {reserved_ram_mb}
reserved_host_disk_mb = 0
reserved_host_cpus = 0
max_concurrent_builds = 10
# the resource tracker runs at compute start; no periodic tasks afterwards (deterministic tests)
periodic_enable = false
report_interval = 10
service_down_time = 60
instance_usage_audit = false
graceful_shutdown_timeout = 5
manager_shutdown_timeout = 0
vif_plugging_timeout = 0

[api]
auth_strategy = keystone

[wsgi]
api_paste_config = {workdir}/api-paste.ini

[api_database]
connection = {api_db}

[database]
connection = {cell1_db}

[placement]
auth_type = admin_token
endpoint = {placement_url}
token = {token}
endpoint_override = {placement_url}
region_name = {region}

[scheduler]
discover_hosts_in_cells_interval = -1

[quota]
instances = -1
cores = -1
ram = -1

[oslo_concurrency]
lock_path = {workdir}/locks

[oslo_messaging_notifications]
driver = noop

[compute]
provider_config_location = {workdir}/provider_config
"""


class FixtureHost:
    """The few ``nova.test.TestCase`` methods nova's Glance/Neutron fixtures call on their test."""

    def __init__(self, conf):
        self.conf = conf
        self.fixtures = []

    def useFixture(self, fixture):  # noqa: N802  (fixtures' API name)
        fixture.setUp()
        self.fixtures.append(fixture)
        return fixture

    def stub_out(self, old, new):
        import fixtures

        self.useFixture(fixtures.MonkeyPatch(old, new))

    def flags(self, **kw):
        group = kw.pop("group", None)
        for key, value in kw.items():
            self.conf.set_override(key, value, group)

    def cleanup(self):
        while self.fixtures:
            try:
                self.fixtures.pop().cleanUp()
            except Exception:  # pylint: disable=broad-except
                pass


def load_nova_fakes():
    """Import nova/tests/fixtures/{neutron,glance}.py without nova's test package.

    ``nova.tests.fixtures`` (the package) imports testtools, oslotest and wsgi-intercept,
    which are nova's test requirements, not install requirements. The two fakes need only
    ``PROJECT_ID`` and ``ConfPatcher`` from it, so a stand-in package module provides those
    and points its ``__path__`` at the real directory.
    """
    import types

    import fixtures
    import nova.conf
    import nova.tests

    conf = nova.conf.CONF
    real_dir = os.path.join(os.path.dirname(nova.tests.__file__), "fixtures")

    class ConfPatcher(fixtures.Fixture):
        def __init__(self, **kw):
            super().__init__()
            self.group = kw.pop("group", None)
            self.args = kw

        def setUp(self):
            super().setUp()
            for key, value in self.args.items():
                self.addCleanup(conf.clear_override, key, self.group)
                conf.set_override(key, value, self.group)

    pkg = types.ModuleType("nova.tests.fixtures")
    pkg.__path__ = [real_dir]
    shim = types.ModuleType("nova.tests.fixtures.nova")
    shim.PROJECT_ID = PROJECT_ID
    shim.ConfPatcher = ConfPatcher
    pkg.nova = shim
    sys.modules["nova.tests.fixtures"] = pkg
    sys.modules["nova.tests.fixtures.nova"] = shim
    import nova.tests.fixtures.glance as glance_fixture
    import nova.tests.fixtures.neutron as neutron_fixture

    return glance_fixture.GlanceFixture, neutron_fixture.NeutronFixture


def lab_driver(vcpus, memory_mb, local_gb):
    """nova's FakeDriver sized for the lab, with one stable node uuid per compute host.

    Several nova-compute services share this process, so the per-host ``compute_id`` file
    nova keeps under ``state_path`` would be shared too: report a uuid derived from the node
    name instead (what nova's PredictableNodeUUIDDriver does for ironic-like drivers).
    """
    from nova.virt import fake

    def node_uuid(nodename):
        return str(uuid.uuid5(uuid.NAMESPACE_URL, f"deskfleet:novalab:node:{nodename}"))

    class NovaLabDriver(fake.FakeDriver):
        def get_available_resource(self, nodename):
            res = super().get_available_resource(nodename)
            if res:
                res["uuid"] = node_uuid(nodename)
            return res

        def get_nodenames_by_uuid(self, refresh=False):
            return {node_uuid(n): n for n in self.get_available_nodes()}

    NovaLabDriver.vcpus = vcpus
    NovaLabDriver.memory_mb = memory_mb
    NovaLabDriver.local_gb = local_gb
    fake.NovaLabDriver = NovaLabDriver  # compute_driver = fake.NovaLabDriver
    return NovaLabDriver


def new_wal_sqlite(path):
    """An empty SQLite file in WAL mode: readers never block the one writer (or get blocked)."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")


def copy_sqlite(src, dst):
    import sqlite3

    new_wal_sqlite(dst)
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def serialize_sqlite_writers():
    """One writer transaction at a time per database, waiting on a *green* lock.

    SQLite allows one writer per file. Under eventlet every service shares one OS thread, so
    when a second writer meets a held write lock, SQLite's busy handler blocks the whole
    process (the holder cannot run to commit) until it fails with "database is locked".
    Taking a per-database RLock (green under eventlet) around every oslo.db writer scope makes
    the second writer yield instead. Nova's own threading-mode functional tests do the same
    (``DatabaseWriteLock`` in nova/tests/fixtures/nova.py) for the same reason.
    """
    import collections
    import contextlib
    import threading  # green: monkey-patched by now

    from oslo_db.sqlalchemy import enginefacade

    locks = collections.defaultdict(threading.RLock)
    original = enginefacade._TransactionContextManager._transaction_scope  # pylint: disable=protected-access

    @contextlib.contextmanager
    def scope(tcm, context):
        if tcm._mode is enginefacade._WRITER:  # pylint: disable=protected-access
            with locks[str(tcm.reader.get_engine().url)]:
                with original(tcm, context) as resource:
                    yield resource
        else:
            with original(tcm, context) as resource:
                yield resource

    enginefacade._TransactionContextManager._transaction_scope = scope  # pylint: disable=protected-access


def lab_auth(nova_app, placement_app):
    """One WSGI app for the port: /placement -> placement, the rest -> nova.

    Stands in for keystonemiddleware on the Nova side: a request with the lab token gets the
    headers a validated keystone token would give (admin, member, reader roles in the lab
    project); other tokens get 401. Version documents need no token, as in real life.
    Placement checks its own token (noauth2: token "admin" is admin).
    """
    identity = {
        "HTTP_X_IDENTITY_STATUS": "Confirmed",
        "HTTP_X_USER_ID": "admin",
        "HTTP_X_USER_NAME": "admin",
        "HTTP_X_USER_DOMAIN_ID": "default",
        "HTTP_X_PROJECT_ID": PROJECT_ID,
        "HTTP_X_PROJECT_NAME": "novalab",
        "HTTP_X_PROJECT_DOMAIN_ID": "default",
        "HTTP_X_ROLES": "admin,member,reader",
    }
    open_paths = {"", "/", "/v2", "/v2/", "/v2.1", "/v2.1/"}

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path == "/placement" or path.startswith("/placement/"):
            environ["SCRIPT_NAME"] = environ.get("SCRIPT_NAME", "") + "/placement"
            environ["PATH_INFO"] = path[len("/placement") :]
            return placement_app(environ, start_response)
        for key in list(environ):
            if key.startswith(("HTTP_X_USER", "HTTP_X_PROJECT", "HTTP_X_ROLES", "HTTP_X_IDENTITY", "HTTP_X_SERVICE")):
                del environ[key]
        if environ.get("HTTP_X_AUTH_TOKEN") == TOKEN:
            environ.update(identity)
        elif path not in open_paths:
            start_response("401 Unauthorized", [("Content-Type", "application/json")])
            return [b'{"error": {"code": 401, "title": "Unauthorized", "message": "novalab: bad or missing token"}}']
        return nova_app(environ, start_response)

    return app
