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

Files: this one is the client (``NovaLab``) and the command line; the server process runs
``harness/novalab_server.py`` (the build steps, the run loop, the bounded stop) over
``harness/novalab_nova.py`` (nova.conf, nova's in-process fakes, the fake driver, SQLite, auth).

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

from harness.proc import signal_group, spawn, stop_group
from harness.wait import wait_for

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
        self.proc = spawn(argv, self.workdir / "server.out", cwd=str(CHECKOUT), env=env, stdin=subprocess.DEVNULL)
        self.pid = self.proc.pid
        deadline = started + self.timeout
        try:
            wait_for(self.port_file.exists, self.timeout, 0.1, "the novalab port file", proc=self.proc)
        except RuntimeError as exc:
            raise RuntimeError(f"novalab server exited with {self.proc.returncode} during start-up:\n{self.tail()}") from exc
        except TimeoutError as exc:
            raise TimeoutError(f"novalab did not become ready within {self.timeout}s:\n{self.tail()}") from exc
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
        try:
            wait_for(self._answers, max(0.0, deadline - time.monotonic()), 0.1, "the novalab API", proc=self.proc)
        except (RuntimeError, TimeoutError) as exc:
            raise RuntimeError(f"novalab API does not answer on {self.compute_url}:\n{self.tail()}") from exc
        self.startup_seconds = time.monotonic() - started
        return self

    def stop(self, grace=20):
        """SIGTERM the server's process group, SIGKILL it after ``grace`` seconds; remove temp files."""
        if self.proc is not None:
            self.returncode = stop_group(self.proc, grace)
            self.proc = None
        if self.workdir is not None and not self.keep:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- helpers --
    def _answers(self):
        try:
            with urllib.request.urlopen(self.compute_url + "/", timeout=5) as resp:  # nosec: loopback
                return resp.status == 200
        except (urllib.error.URLError, OSError):
            return False

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
        signal_group(self.proc.pid, signal.SIGSTOP)

    def resume(self):
        signal_group(self.proc.pid, signal.SIGCONT)

    def env(self):
        """Environment for other processes that should reach the lab through clouds.yaml."""
        return {"OS_CLIENT_CONFIG_FILE": self.clouds_yaml, "OS_CLOUD": self.cloud}

    def connect(self, **kwargs):
        """An openstacksdk Connection to the lab, made from the lab's clouds.yaml only."""
        import openstack.config
        import openstack.connection

        region = openstack.config.OpenStackConfig(config_files=[self.clouds_yaml]).get_one(cloud=self.cloud)
        return openstack.connection.Connection(config=region, **kwargs)


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
    from harness.novalab_server import serve

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
