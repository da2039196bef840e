"""
novalab: a real Nova + Placement in one throwaway process, for the cloud test tier.

What runs (one OS process, eventlet mode, everything on 127.0.0.1, all state in a temp dir):

* the real Nova compute API WSGI app (nova's shipped ``api-paste.ini`` pipeline minus
  keystonemiddleware's ``authtoken``: a tiny lab middleware stands in for it and fills the
  ``X-User-Id``/``X-Project-Id``/``X-Roles`` headers that ``NovaKeystoneContext`` and the
  real policy engine read);
* the real Placement WSGI app (``placement.deploy.loadapp``, ``auth_strategy = noauth2``);
* real ``nova-conductor``, ``nova-scheduler`` and N ``nova-compute`` services
  (``nova.service.Service.create(...).start()``) talking over oslo.messaging's in-process
  ``fake://`` transport; the computes use nova's ``FakeDriver`` sized by ``--ram-mb`` etc.;
* SQLite files (WAL mode) for the API DB, cell0, cell1 and placement, made by nova's and
  placement's own alembic migrations; cell mappings and host discovery as
  ``nova-manage cell_v2`` does them. oslo.db writer transactions take a per-database green
  lock (as nova's ``DatabaseWriteLock`` test fixture does), otherwise concurrent boots stall
  in SQLite's busy handler and fail with "database is locked";
* Nova reports to Placement over real HTTP (keystoneauth ``admin_token`` plugin), so the
  scheduler's claims, the allocation ratios, the 409 retries on racing claims are all real.

Why not nova's functional-test base (``nova.test.TestCase`` / ``integrated_helpers``): it
needs testtools, oslotest and wsgi-intercept (nova's test requirements, not in this venv),
runs casts as calls by default and patches openstacksdk and the report client in-process.
The lab builds the same services the way nova's own ``nova-*`` commands do instead.

Image and network services are nova's own in-process fakes (``GlanceFixture`` and
``NeutronFixture`` from ``nova/tests/fixtures``, loaded without the rest of nova's test
package, which needs testtools/oslotest/wsgi-intercept that this venv does not have). Use
the image id and network id the lab publishes; there is no Glance or Neutron endpoint.

Both APIs share one port: ``http://127.0.0.1:PORT/v2.1`` (compute) and
``http://127.0.0.1:PORT/placement``. Clients get there ONLY through openstacksdk and the
``clouds.yaml`` the lab writes (``auth_type: admin_token``, ``compute_endpoint_override``,
``placement_endpoint_override``, ``placement_api_version: '1'``).

Capacity: each compute has ``--ram-mb`` MB (default 8192), ``reserved_host_memory_mb`` 512 and
``ram_allocation_ratio`` ``--ram-ratio`` (1.5), so placement capacity is (8192 - 512) x 1.5 =
11520 MB per compute: five ``desk.small`` (2048 MB) fit, the sixth ends in ERROR with
"No valid host" in its fault. Quotas are unlimited so that placement is the only limit.

Command line (the server; runs until SIGTERM/SIGINT, then stops the services and exits 0)::

    python -m harness.novalab --port-file F --clouds-yaml F [--info-json F] [--workdir D]
        [--computes N] [--ram-mb 8192] [--ram-ratio 1.5] [--vcpus 16] [--cpu-ratio 4.0]
        [--disk-gb 1000] [--reserved-ram-mb 512] [--port 0] [--log-file F] [--debug]
        [--exit-with-parent [--orphan-cleanup DIR]]

It writes, in this order, ``clouds.yaml`` (cloud ``novalab``; the lab ids are also under the
cloud entry's ``novalab`` key), the ``--info-json`` file (default: ``novalab.json`` next to
``clouds.yaml``: port, endpoints, image_id, network_id, flavors, computes, capacity) and,
last, the port file: the port file appearing means the lab is ready.

From Python (tests, demo, benchmarks) use the context manager, which starts that server as a
subprocess in its own process group, waits until the API answers, and on exit sends SIGTERM
to the group (SIGKILL after a grace period) and removes its temp dir. Should the client die
without cleaning up (SIGKILL), the server notices its parent is gone within 0.2 s, stops and
removes the temp dir itself::

    from harness.novalab import NovaLab

    with NovaLab(computes=1, ram_mb=8192, ram_ratio=1.5) as lab:
        conn = lab.connect()                       # openstack.connection.Connection
        srv = conn.compute.create_server(
            name="desk-0001", flavor_id=lab.flavor_id, image_id=lab.image_id,
            networks=[{"uuid": lab.network_id}])
        conn.compute.wait_for_server(srv, status="ACTIVE")
        # other processes (a salt master, the pool keeper runner):
        env = lab.env()   # {"OS_CLIENT_CONFIG_FILE": lab.clouds_yaml, "OS_CLOUD": "novalab"}

The tests use the fixtures in ``tests/cloud/conftest.py``: ``novalab`` (module scoped; it
skips, naming the missing piece, when nova or placement cannot be imported), ``cloud`` (an
sdk Connection that deletes the test's servers afterwards) and ``novalab_factory`` (extra
labs of other sizes). The demo and benchmarks can use ``NovaLab`` the same way and point
the vm master's cloud config at ``lab.clouds_yaml`` / ``lab.cloud``. Logs: ``lab.log``
(nova + placement, INFO), ``WORKDIR/server/access.log`` (HTTP), ``server.out``;
``NovaLab(keep=True)`` keeps them after the run.

Measured on the 2-core box: ready in ~2.0-2.4 s (idle; 3-12 s with the box loaded), one
boot to ACTIVE ~0.7-0.9 s, five concurrent boots ~2-3.5 s each, delete ~0.3 s, orderly stop
~0.2-0.6 s; ~180 MB RSS, ~0.3 % CPU idle.

Reading over-commit headroom (what the pool keeper does) through openstacksdk::

    for rp in conn.placement.resource_providers():
        inv = {i.resource_class: i for i in conn.placement.resource_provider_inventories(rp)}
        used = conn.placement.fetch_resource_provider_usages(rp).usages   # {"MEMORY_MB": 4096, ...}
        ram = inv["MEMORY_MB"]
        capacity = (ram.total - ram.reserved) * ram.allocation_ratio
        free_mb = capacity - used.get("MEMORY_MB", 0)   # a boot also needs ram.max_unit >= flavor RAM

Never used in production.
"""

# Nova, placement and openstacksdk are imported inside functions on purpose: the server must
# monkey-patch (eventlet) before nova is imported, and the client side must not import nova.
# pylint: disable=import-outside-toplevel

import argparse
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
CLOUD = "novalab"
TOKEN = "admin"
PROJECT_ID = "6f70656e737461636b20342065766572"  # the project nova's NeutronFixture owns its network in
REGION = "RegionOne"
IMAGE_ID = str(uuid.uuid5(uuid.NAMESPACE_URL, "deskfleet:novalab:image:win10-desktop"))
# name: (MB RAM, vCPUs, GB disk); the ids are stable so tests and the demo can hard-code them
FLAVORS = {
    "desk.small": (2048, 1, 10),
    "desk.medium": (4096, 2, 20),
    "desk.large": (8192, 4, 40),
}
DEFAULT_FLAVOR = "desk.small"
NOVA_MISSING_HINT = "cloud tier needs nova==34.0.0 and openstack-placement==16.0.0 (requirements.lock)"


def flavor_id(name):
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"deskfleet:novalab:flavor:{name}"))


def missing():
    """Why the novalab cannot run here (a human-readable reason), or None. Does not import nova."""
    import importlib.util

    for mod, what in (
        ("nova", "nova"),
        ("placement", "openstack-placement"),
        ("openstack", "openstacksdk"),
        ("eventlet", "eventlet"),
        ("neutronclient", "python-neutronclient"),
    ):
        try:
            found = importlib.util.find_spec(mod) is not None
        except (ImportError, ValueError):
            found = False
        if not found:
            return f"cannot import '{mod}' ({what}): {NOVA_MISSING_HINT}"
    for rel in ("tests/fixtures/neutron.py", "tests/fixtures/glance.py", "virt/fake.py"):
        spec = importlib.util.find_spec("nova")
        if not any((pathlib.Path(p) / rel).exists() for p in spec.submodule_search_locations):
            return f"nova is installed without nova/{rel} (its in-process fakes): {NOVA_MISSING_HINT}"
    return None


# --------------------------------------------------------------------------------------------
# client side: start/stop the server process
# --------------------------------------------------------------------------------------------


class NovaLab:
    """Start ``python -m harness.novalab`` as a subprocess; yield a handle with what clients need.

    Attributes once entered: ``clouds_yaml`` (path), ``cloud`` (name), ``image_id``,
    ``network_id``, ``flavors`` ({name: id}), ``flavor_id`` (desk.small), ``computes``
    (host names), ``compute_url``, ``placement_url``, ``port``, ``info`` (the whole JSON),
    ``workdir``, ``log`` (nova's log file), ``startup_seconds``, ``pid``.
    """

    def __init__(
        self,
        computes=1,
        ram_mb=8192,
        ram_ratio=1.5,
        vcpus=16,
        cpu_ratio=4.0,
        disk_gb=1000,
        reserved_ram_mb=512,
        base_dir=None,
        keep=False,
        timeout=180,
        debug=False,
        python=None,
    ):
        self.args = {
            "computes": computes,
            "ram-mb": ram_mb,
            "ram-ratio": ram_ratio,
            "vcpus": vcpus,
            "cpu-ratio": cpu_ratio,
            "disk-gb": disk_gb,
            "reserved-ram-mb": reserved_ram_mb,
        }
        self.base_dir = base_dir
        self.keep = keep
        self.timeout = timeout
        self.debug = debug
        self.python = python or sys.executable
        self.proc = None
        self.pid = None
        self.returncode = None
        self.out = None
        self.workdir = None
        self.info = None
        self.cloud = CLOUD
        self.startup_seconds = None

    # -- lifecycle --
    def __enter__(self):
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc):
        self.stop()
        return False

    def start(self):
        started = time.monotonic()
        self.workdir = pathlib.Path(tempfile.mkdtemp(prefix="novalab-", dir=self.base_dir))
        self.clouds_yaml = str(self.workdir / "clouds.yaml")
        self.port_file = self.workdir / "port"
        self.info_json = self.workdir / "novalab.json"
        self.log = str(self.workdir / "nova.log")
        argv = [
            self.python,
            "-W",
            "ignore::DeprecationWarning",
            "-m",
            "harness.novalab",
            "--exit-with-parent",
            "--workdir",
            str(self.workdir / "server"),
            "--port-file",
            str(self.port_file),
            "--clouds-yaml",
            self.clouds_yaml,
            "--info-json",
            str(self.info_json),
            "--log-file",
            self.log,
        ]
        for key, value in self.args.items():
            argv += [f"--{key}", str(value)]
        if not self.keep:
            # if this (client) process dies without stop(), the orphaned server removes it all
            argv += ["--orphan-cleanup", str(self.workdir)]
        if self.debug:
            argv.append("--debug")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(CHECKOUT), env.get("PYTHONPATH")]))
        env.pop("OS_NOVA_DISABLE_EVENTLET_PATCHING", None)  # the lab runs in eventlet mode only
        self.out = open(self.workdir / "server.out", "wb")  # pylint: disable=consider-using-with
        self.proc = subprocess.Popen(  # pylint: disable=consider-using-with
            argv,
            cwd=str(CHECKOUT),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self.out,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills the whole group
        )
        self.pid = self.proc.pid
        deadline = started + self.timeout
        while not self.port_file.exists():
            if self.proc.poll() is not None:
                raise RuntimeError(f"novalab server exited with {self.proc.returncode} during start-up:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"novalab did not become ready within {self.timeout}s:\n{self.tail()}")
            time.sleep(0.1)
        self.info = json.loads(self.info_json.read_text())
        self.port = self.info["port"]
        self.compute_url = self.info["compute_url"]
        self.placement_url = self.info["placement_url"]
        self.image_id = self.info["image_id"]
        self.network_id = self.info["network_id"]
        self.flavors = self.info["flavors"]
        self.flavor_id = self.flavors[DEFAULT_FLAVOR]
        self.computes = self.info["computes"]
        # the port file is written last, but check that the API really answers over TCP
        while True:
            try:
                with urllib.request.urlopen(self.compute_url + "/", timeout=5) as resp:  # nosec: loopback
                    if resp.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"novalab API does not answer on {self.compute_url}:\n{self.tail()}")
            time.sleep(0.1)
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, grace=20):
        """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds; remove temp files."""
        if self.proc is not None:
            if self.proc.poll() is None:
                _signal_group(self.proc.pid, signal.SIGCONT)  # a paused lab could not act on SIGTERM
                _signal_group(self.proc.pid, signal.SIGTERM)
                try:
                    self.proc.wait(grace)
                except subprocess.TimeoutExpired:
                    pass
            # whatever the leader did, leave nothing of the group behind
            _signal_group(self.proc.pid, signal.SIGKILL)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                pass
            self.returncode = self.proc.returncode
            self.proc = None
        if self.out is not None:
            self.out.close()
            self.out = None
        if self.workdir is not None and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers --
    def tail(self, lines=40):
        """The last lines of the server's stdout/stderr and of nova's log, for error messages."""
        out = []
        for name in ("server.out", "nova.log"):
            path = self.workdir / name if self.workdir else None
            if path and path.exists():
                text = path.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {name} (last {len(text)} lines)\n" + "\n".join(text))
        return "\n".join(out)

    def pause(self):
        """Freeze the whole lab (SIGSTOP to its group): a really hung API. The kernel still accepts
        TCP connections on the listening socket; nothing ever answers. Undo with :meth:`resume`."""
        _signal_group(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        _signal_group(self.proc.pid, signal.SIGCONT)

    def env(self):
        """Environment for other processes that should reach the lab through clouds.yaml."""
        return {"OS_CLIENT_CONFIG_FILE": self.clouds_yaml, "OS_CLOUD": self.cloud}

    def connect(self, **kwargs):
        """An openstacksdk Connection to the lab, made from the lab's clouds.yaml only."""
        import openstack.config
        import openstack.connection

        region = openstack.config.OpenStackConfig(config_files=[self.clouds_yaml]).get_one(cloud=self.cloud)
        return openstack.connection.Connection(config=region, **kwargs)


def _signal_group(pid, sig):
    try:
        os.killpg(pid, sig)  # the server is its own group leader (start_new_session)
    except (ProcessLookupError, PermissionError):
        pass


# --------------------------------------------------------------------------------------------
# server side (runs in its own process, eventlet monkey-patched)
# --------------------------------------------------------------------------------------------

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


class _FixtureHost:
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


def _load_nova_fakes():
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


def _lab_driver(vcpus, memory_mb, local_gb):
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


def _new_wal_sqlite(path):
    """An empty SQLite file in WAL mode: readers never block the one writer (or get blocked)."""
    import sqlite3

    with sqlite3.connect(path) as db:
        db.execute("PRAGMA journal_mode=WAL")


def _copy_sqlite(src, dst):
    import sqlite3

    _new_wal_sqlite(dst)
    with sqlite3.connect(src) as source, sqlite3.connect(dst) as target:
        source.backup(target)


def _serialize_sqlite_writers():
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


def _lab_auth(nova_app, placement_app):
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


def _write_atomic(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def serve(args):  # pylint: disable=too-many-locals,too-many-statements
    """Build the lab, announce it, run until SIGTERM/SIGINT, stop it. Returns an exit code."""
    t0 = time.monotonic()
    parent = os.getppid()  # before the slow start-up: a parent dying meanwhile is noticed too
    # eventlet mode, exactly as nova's services start: before anything else imports nova
    from nova import monkey_patch

    monkey_patch.patch(backend="eventlet")
    import eventlet
    import eventlet.wsgi

    own_workdir = args.workdir is None
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="novalab-srv-")).resolve()
    for sub in ("state", "instances", "locks"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    log_file = pathlib.Path(args.log_file or workdir / "nova.log").resolve()

    sock = eventlet.listen(("127.0.0.1", args.port))
    port = sock.getsockname()[1]
    base_url = f"http://127.0.0.1:{port}"
    compute_url = base_url + "/v2.1"
    placement_url = base_url + "/placement"

    def db_url(name):
        return f"sqlite:///{workdir / name}.sqlite"

    # -- configuration: nova.conf + api-paste.ini in the work dir, like a real deployment --
    venv_paste = pathlib.Path(sys.prefix) / "etc" / "nova" / "api-paste.ini"
    paste = venv_paste.read_text()
    # keystonemiddleware would validate tokens against keystone; the lab auth stands in for it
    paste = paste.replace(" authtoken keystonecontext", " keystonecontext")
    (workdir / "api-paste.ini").write_text(paste)
    conf_text = NOVA_CONF.format(
        debug=str(bool(args.debug)).lower(),
        log_file=log_file,
        workdir=workdir,
        ram_ratio=args.ram_ratio,
        cpu_ratio=args.cpu_ratio,
        reserved_ram_mb=args.reserved_ram_mb,
        api_db=db_url("nova_api"),
        cell1_db=db_url("nova_cell1"),
        placement_url=placement_url,
        token=TOKEN,
        region=REGION,
    )
    (workdir / "nova.conf").write_text(conf_text)

    from oslo_log import log as oslo_logging

    from nova import config as nova_config
    import nova.conf

    conf = nova.conf.CONF
    nova_config.parse_args(["nova-novalab", "--config-file", str(workdir / "nova.conf")], default_config_files=[])
    oslo_logging.setup(conf, "nova")
    log = oslo_logging.getLogger("novalab")

    from nova import context as nova_context
    from nova import objects
    from nova import service as nova_service
    from nova.api import wsgi as nova_wsgi
    from nova.api.openstack import wsgi_app
    from nova.compute import rpcapi as compute_rpcapi
    from nova.db import migration as nova_migration
    from nova.objects import host_mapping

    objects.register_all()
    timings = {}

    # -- databases: api, cell1 by nova's own migrations; cell0 is a copy of the fresh cell1 --
    t = time.monotonic()
    _serialize_sqlite_writers()
    for name in ("nova_api", "nova_cell1", "placement"):
        _new_wal_sqlite(workdir / f"{name}.sqlite")
    nova_migration.db_sync(database="api")
    nova_migration.db_sync(database="main")
    from nova.db.main import api as main_db_api

    main_db_api.get_engine().dispose()
    _copy_sqlite(workdir / "nova_cell1.sqlite", workdir / "nova_cell0.sqlite")
    ctxt = nova_context.get_admin_context()
    objects.CellMapping(
        ctxt,
        uuid=objects.CellMapping.CELL0_UUID,
        name="cell0",
        transport_url="none:///",
        database_connection=db_url("nova_cell0"),
    ).create()
    # cell1's message queue is the process-wide fake:// transport: a cell transport_url of
    # "none:///" makes nova use the default RPC client instead of opening a second (separate)
    # fake transport that no service listens on.
    cell1 = objects.CellMapping(
        ctxt,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, "deskfleet:novalab:cell1")),
        name="cell1",
        transport_url="none:///",
        database_connection=db_url("nova_cell1"),
    )
    cell1.create()
    timings["nova_db"] = time.monotonic() - t

    # -- placement: its own config object, DB by its migrations, real WSGI app --
    t = time.monotonic()
    from oslo_config import cfg
    from oslo_policy import opts as policy_opts
    from placement import conf as placement_conf
    from placement import db_api as placement_db
    from placement import deploy as placement_deploy
    from placement.db.sqlalchemy import migration as placement_migration

    pconf = cfg.ConfigOpts()
    placement_conf.register_opts(pconf)
    pconf.set_override("connection", db_url("placement"), group="placement_database")
    pconf.set_override("sync_on_startup", False, group="placement_database")
    pconf.set_override("auth_strategy", "noauth2", group="api")
    # as placement's own functional fixture does: legacy policy defaults, token "admin" = admin
    policy_opts.set_defaults(pconf, enforce_new_defaults=False)
    pconf([], project="placement", default_config_files=[])
    placement_db.configure(pconf)
    placement_migration.upgrade("head")
    placement_app = placement_deploy.loadapp(pconf)
    timings["placement"] = time.monotonic() - t

    # -- fake image and network services (nova's own fakes) --
    host = _FixtureHost(conf)
    glance_cls, neutron_cls = _load_nova_fakes()
    glance = host.useFixture(glance_cls(host))
    neutron = host.useFixture(neutron_cls(host))
    image = dict(glance.image1)
    image.update(
        id=IMAGE_ID,
        name="win10-desktop",
        tags=["deskfleet"],
        properties={"architecture": "x86_64", "os_type": "windows", "hw_disk_bus": "sata"},
    )
    glance.create(None, image)
    network_id = neutron.network_1["id"]

    # -- the API app (nova's paste pipeline), then the one listening socket --
    t = time.monotonic()
    wsgi_app._setup_service(conf.host, "osapi_compute")  # pylint: disable=protected-access
    nova_app = nova_wsgi.Loader().load_app("osapi_compute")
    app = _lab_auth(nova_app, placement_app)
    pool = eventlet.GreenPool(256)
    access_log = open(workdir / "access.log", "a", buffering=1)  # pylint: disable=consider-using-with
    server = eventlet.spawn(
        eventlet.wsgi.server,
        sock,
        app,
        custom_pool=pool,
        log=access_log,
        log_output=True,
        keepalive=True,
        socket_timeout=120,
        debug=False,
    )
    timings["api"] = time.monotonic() - t

    # -- services: conductor, scheduler, computes; host discovery like nova-manage --
    t = time.monotonic()
    _lab_driver(args.vcpus, args.ram_mb, args.disk_gb)
    services = []
    services.append(nova_service.Service.create(binary="nova-conductor", topic="conductor"))
    services[-1].start()
    services.append(nova_service.Service.create(binary="nova-scheduler", topic="scheduler"))
    services[-1].start()
    computes = [f"compute{i}" for i in range(1, args.computes + 1)]
    for name in computes:
        svc = nova_service.Service.create(
            host=name,
            binary="nova-compute",
            topic=compute_rpcapi.RPC_TOPIC,
            topic_alt=compute_rpcapi.RPC_TOPIC_ALT,
        )
        svc.start()
        services.append(svc)
    mapped = host_mapping.discover_hosts(ctxt, by_service=False)
    log.info("novalab: mapped hosts %s", [m.host for m in mapped])
    timings["services"] = time.monotonic() - t

    # -- flavors --
    for name, (ram, vcpus, disk) in FLAVORS.items():
        objects.Flavor(
            context=ctxt,
            name=name,
            flavorid=flavor_id(name),
            memory_mb=ram,
            vcpus=vcpus,
            root_gb=disk,
            ephemeral_gb=0,
            swap=0,
            rxtx_factor=1.0,
            is_public=True,
            disabled=False,
        ).create()

    capacity_mb = (args.ram_mb - args.reserved_ram_mb) * args.ram_ratio
    info = {
        "cloud": CLOUD,
        "port": port,
        "pid": os.getpid(),
        "compute_url": compute_url,
        "placement_url": placement_url,
        "token": TOKEN,
        "project_id": PROJECT_ID,
        "image_id": IMAGE_ID,
        "network_id": network_id,
        "flavors": {name: flavor_id(name) for name in FLAVORS},
        "flavor_sizes": {name: {"ram_mb": r, "vcpus": v, "disk_gb": d} for name, (r, v, d) in FLAVORS.items()},
        "computes": computes,
        "per_compute": {
            "ram_mb": args.ram_mb,
            "reserved_ram_mb": args.reserved_ram_mb,
            "ram_ratio": args.ram_ratio,
            "ram_capacity_mb": capacity_mb,
            "vcpus": args.vcpus,
            "cpu_ratio": args.cpu_ratio,
            "disk_gb": args.disk_gb,
        },
        "workdir": str(workdir),
        "log_file": str(log_file),
        "startup_seconds": round(time.monotonic() - t0, 2),
        "timings": {k: round(v, 2) for k, v in timings.items()},
    }
    cloud_entry = {
        "auth_type": "admin_token",
        "auth": {"endpoint": compute_url, "token": TOKEN},
        "region_name": REGION,
        "compute_endpoint_override": compute_url,
        "placement_endpoint_override": placement_url,
        "placement_api_version": "1",
        "novalab": {k: info[k] for k in ("image_id", "network_id", "flavors", "computes", "project_id")},
    }
    import yaml

    _write_atomic(args.clouds_yaml, yaml.safe_dump({"clouds": {CLOUD: cloud_entry}}, sort_keys=False))
    info_json = args.info_json or str(pathlib.Path(args.clouds_yaml).with_name("novalab.json"))
    info["clouds_yaml"] = str(pathlib.Path(args.clouds_yaml).resolve())
    _write_atomic(info_json, json.dumps(info, indent=2))
    _write_atomic(args.port_file, f"{port}\n")  # last: "ready"
    log.info("novalab ready on %s in %.2fs %s", base_url, info["startup_seconds"], info["timings"])
    print(f"novalab ready on {base_url} in {info['startup_seconds']}s (clouds.yaml: {args.clouds_yaml})", flush=True)

    # -- run until told to stop --
    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping and not server.dead:
        eventlet.sleep(0.2)
        if args.exit_with_parent and os.getppid() != parent:
            log.warning("novalab: parent process %s is gone, stopping", parent)
            stopping.append("parent-exit")

    # -- orderly stop, bounded: a hung service must not keep the process alive --
    # a real OS thread (not a greenthread): it fires even if a stop call never yields
    real_threading = eventlet.patcher.original("threading")
    real_time = eventlet.patcher.original("time")

    def watchdog():
        real_time.sleep(20)
        os._exit(3)  # pylint: disable=protected-access

    real_threading.Thread(target=watchdog, daemon=True).start()
    log.info("novalab stopping (signal %s)", stopping[:1])
    t = time.monotonic()
    server.kill()
    for svc in reversed(services):
        t_svc = time.monotonic()
        try:
            svc.stop()
        except Exception:  # pylint: disable=broad-except
            log.exception("novalab: stopping %s failed", svc)
        log.info("novalab: stopped %s %s in %.2fs", svc.binary, svc.host, time.monotonic() - t_svc)
    host.cleanup()
    access_log.close()
    for path in (args.port_file,):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    if own_workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    if "parent-exit" in stopping and args.orphan_cleanup:
        shutil.rmtree(args.orphan_cleanup, ignore_errors=True)
    log.info("novalab stopped in %.2fs", time.monotonic() - t)
    print(f"novalab stopped in {time.monotonic() - t:.2f}s", flush=True)
    # Everything is stopped and flushed; skip the interpreter's own teardown (atexit hooks of
    # thread pools and the eventlet hub added seconds to every stop and nothing of value).
    import logging

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)  # pylint: disable=protected-access


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n", 1)[0])
    parser.add_argument("--port-file", required=True, help="written last, with the port number: the lab is ready")
    parser.add_argument("--clouds-yaml", required=True, help="clouds.yaml to write (cloud name: novalab)")
    parser.add_argument("--info-json", help="ids/endpoints as JSON (default: novalab.json next to --clouds-yaml)")
    parser.add_argument("--workdir", help="state dir (DBs, nova.conf, logs); default: a temp dir removed on exit")
    parser.add_argument("--log-file", help="nova's log file (default: WORKDIR/nova.log)")
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--computes", type=int, default=1, help="number of nova-compute services (hosts)")
    parser.add_argument("--ram-mb", type=int, default=8192, help="RAM of each fake hypervisor")
    parser.add_argument("--ram-ratio", type=float, default=1.5, help="ram_allocation_ratio")
    parser.add_argument("--reserved-ram-mb", type=int, default=512, help="reserved_host_memory_mb")
    parser.add_argument("--vcpus", type=int, default=16, help="vCPUs of each fake hypervisor")
    parser.add_argument("--cpu-ratio", type=float, default=4.0, help="cpu_allocation_ratio")
    parser.add_argument("--disk-gb", type=int, default=1000, help="disk of each fake hypervisor")
    parser.add_argument("--debug", action="store_true", help="nova debug logging")
    parser.add_argument(
        "--exit-with-parent", action="store_true", help="stop when the process that started us dies (no orphans)"
    )
    parser.add_argument("--orphan-cleanup", metavar="DIR", help="with --exit-with-parent: remove DIR when the parent died")
    args = parser.parse_args(argv)
    if args.computes < 1:
        parser.error("--computes must be >= 1")
    try:
        return serve(args)
    except BaseException:  # pylint: disable=broad-except
        # a failed start-up must not linger in interpreter teardown: report and go
        import traceback

        traceback.print_exc()
        sys.stderr.flush()
        os._exit(1)  # pylint: disable=protected-access


if __name__ == "__main__":
    sys.exit(main())
