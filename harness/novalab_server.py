"""
The novalab server process (``python -m harness.novalab``; see ``harness/novalab.py``): build
the lab step by step, announce it (clouds.yaml, info JSON, then the port file), run until
SIGTERM/SIGINT or the parent's death, stop within a bound.
"""

# Nova is imported inside functions on purpose: eventlet must monkey-patch before nova loads.
# pylint: disable=import-outside-toplevel

import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time
import types
import uuid

from harness import novalab_nova as parts
from harness.novalab import CLOUD, FLAVORS, IMAGE_ID, PROJECT_ID, REGION, TOKEN, flavor_id


def serve(args):
    """Build the lab, announce it, run until SIGTERM/SIGINT, stop it. Returns an exit code."""
    t0 = time.monotonic()
    parent = os.getppid()  # before the slow start-up: a parent dying meanwhile is noticed too
    # eventlet mode, exactly as nova's services start: before anything else imports nova
    from nova import monkey_patch

    monkey_patch.patch(backend="eventlet")
    import eventlet

    lab = _workdir(args)
    lab.sock = eventlet.listen(("127.0.0.1", args.port))
    lab.port = lab.sock.getsockname()[1]
    lab.base_url = f"http://127.0.0.1:{lab.port}"
    lab.compute_url = lab.base_url + "/v2.1"
    lab.placement_url = lab.base_url + "/placement"
    conf, log = _configure(args, lab)
    _build(args, lab, conf, log)
    info = _announce(args, lab, t0)
    log.info("novalab ready on %s in %.2fs %s", lab.base_url, info["startup_seconds"], info["timings"])
    print(f"novalab ready on {lab.base_url} in {info['startup_seconds']}s (clouds.yaml: {args.clouds_yaml})", flush=True)
    stopping = _run(args, lab, parent, log)
    _shutdown(args, lab, stopping, log)


def _workdir(args):
    """The lab's state: one namespace filled in step by step, all files under ``workdir``."""
    own = args.workdir is None
    workdir = pathlib.Path(args.workdir or tempfile.mkdtemp(prefix="novalab-srv-")).resolve()
    for sub in ("state", "instances", "locks"):
        (workdir / sub).mkdir(parents=True, exist_ok=True)
    log_file = pathlib.Path(args.log_file or workdir / "nova.log").resolve()
    return types.SimpleNamespace(workdir=workdir, own_workdir=own, log_file=log_file, timings={})


def _db_url(lab, name):
    return f"sqlite:///{lab.workdir / name}.sqlite"


def _configure(args, lab):
    """nova.conf + api-paste.ini in the work dir, like a real deployment; parse them; set up logging."""
    venv_paste = pathlib.Path(sys.prefix) / "etc" / "nova" / "api-paste.ini"
    paste = venv_paste.read_text()
    # keystonemiddleware would validate tokens against keystone; the lab auth stands in for it
    paste = paste.replace(" authtoken keystonecontext", " keystonecontext")
    (lab.workdir / "api-paste.ini").write_text(paste)
    conf_text = parts.NOVA_CONF.format(
        debug=str(bool(args.debug)).lower(),
        log_file=lab.log_file,
        workdir=lab.workdir,
        ram_ratio=args.ram_ratio,
        cpu_ratio=args.cpu_ratio,
        reserved_ram_mb=args.reserved_ram_mb,
        api_db=_db_url(lab, "nova_api"),
        cell1_db=_db_url(lab, "nova_cell1"),
        placement_url=lab.placement_url,
        token=TOKEN,
        region=REGION,
    )
    (lab.workdir / "nova.conf").write_text(conf_text)

    from oslo_log import log as oslo_logging

    from nova import config as nova_config
    import nova.conf

    conf = nova.conf.CONF
    nova_config.parse_args(["nova-novalab", "--config-file", str(lab.workdir / "nova.conf")], default_config_files=[])
    oslo_logging.setup(conf, "nova")
    return conf, oslo_logging.getLogger("novalab")


def _build(args, lab, conf, log):
    """Databases, placement, fake image/network, the API, the services, the flavors."""
    from nova import context as nova_context
    from nova import objects

    objects.register_all()
    lab.ctxt = nova_context.get_admin_context()
    for step, build in (
        ("nova_db", _nova_databases),
        ("placement", _placement),
        ("fakes", _image_and_network),
        ("api", _api),
    ):
        t = time.monotonic()
        build(lab, conf)
        lab.timings[step] = time.monotonic() - t
    t = time.monotonic()
    _services(args, lab, log)
    lab.timings["services"] = time.monotonic() - t
    _flavors(lab)


def _nova_databases(lab, _conf):
    """api, cell1 by nova's own migrations; cell0 is a copy of the fresh cell1; cell mappings."""
    from nova import objects
    from nova.db import migration as nova_migration

    parts.serialize_sqlite_writers()
    for name in ("nova_api", "nova_cell1", "placement"):
        parts.new_wal_sqlite(lab.workdir / f"{name}.sqlite")
    nova_migration.db_sync(database="api")
    nova_migration.db_sync(database="main")
    from nova.db.main import api as main_db_api

    main_db_api.get_engine().dispose()
    parts.copy_sqlite(lab.workdir / "nova_cell1.sqlite", lab.workdir / "nova_cell0.sqlite")
    objects.CellMapping(
        lab.ctxt,
        uuid=objects.CellMapping.CELL0_UUID,
        name="cell0",
        transport_url="none:///",
        database_connection=_db_url(lab, "nova_cell0"),
    ).create()
    # cell1's message queue is the process-wide fake:// transport: a cell transport_url of
    # "none:///" makes nova use the default RPC client instead of opening a second (separate)
    # fake transport that no service listens on.
    objects.CellMapping(
        lab.ctxt,
        uuid=str(uuid.uuid5(uuid.NAMESPACE_URL, "deskfleet:novalab:cell1")),
        name="cell1",
        transport_url="none:///",
        database_connection=_db_url(lab, "nova_cell1"),
    ).create()


def _placement(lab, _conf):
    """Placement: its own config object, DB by its migrations, the real WSGI app."""
    from oslo_config import cfg
    from oslo_policy import opts as policy_opts
    from placement import conf as placement_conf
    from placement import db_api as placement_db
    from placement import deploy as placement_deploy
    from placement.db.sqlalchemy import migration as placement_migration

    pconf = cfg.ConfigOpts()
    placement_conf.register_opts(pconf)
    pconf.set_override("connection", _db_url(lab, "placement"), group="placement_database")
    pconf.set_override("sync_on_startup", False, group="placement_database")
    pconf.set_override("auth_strategy", "noauth2", group="api")
    # as placement's own functional fixture does: legacy policy defaults, token "admin" = admin
    policy_opts.set_defaults(pconf, enforce_new_defaults=False)
    pconf([], project="placement", default_config_files=[])
    placement_db.configure(pconf)
    placement_migration.upgrade("head")
    lab.placement_app = placement_deploy.loadapp(pconf)


def _image_and_network(lab, conf):
    """nova's own Glance and Neutron fakes, with the lab's desktop image."""
    lab.host = parts.FixtureHost(conf)
    glance_cls, neutron_cls = parts.load_nova_fakes()
    glance = lab.host.useFixture(glance_cls(lab.host))
    neutron = lab.host.useFixture(neutron_cls(lab.host))
    image = dict(glance.image1)
    image.update(
        id=IMAGE_ID,
        name="win10-desktop",
        tags=["deskfleet"],
        properties={"architecture": "x86_64", "os_type": "windows", "hw_disk_bus": "sata"},
    )
    glance.create(None, image)
    lab.network_id = neutron.network_1["id"]


def _api(lab, conf):
    """The API app (nova's paste pipeline) behind the lab auth, served on the one socket."""
    import eventlet
    import eventlet.wsgi

    from nova.api import wsgi as nova_wsgi
    from nova.api.openstack import wsgi_app

    wsgi_app._setup_service(conf.host, "osapi_compute")  # pylint: disable=protected-access
    nova_app = nova_wsgi.Loader().load_app("osapi_compute")
    app = parts.lab_auth(nova_app, lab.placement_app)
    lab.access_log = open(lab.workdir / "access.log", "a", buffering=1)  # pylint: disable=consider-using-with
    lab.server = eventlet.spawn(
        eventlet.wsgi.server,
        lab.sock,
        app,
        custom_pool=eventlet.GreenPool(256),
        log=lab.access_log,
        log_output=True,
        keepalive=True,
        socket_timeout=120,
        debug=False,
    )


def _services(args, lab, log):
    """Conductor, scheduler, computes; host discovery as ``nova-manage cell_v2`` does it."""
    from nova import service as nova_service
    from nova.compute import rpcapi as compute_rpcapi
    from nova.objects import host_mapping

    parts.lab_driver(args.vcpus, args.ram_mb, args.disk_gb)
    lab.services = []
    for binary, topic in (("nova-conductor", "conductor"), ("nova-scheduler", "scheduler")):
        lab.services.append(nova_service.Service.create(binary=binary, topic=topic))
        lab.services[-1].start()
    lab.computes = [f"compute{i}" for i in range(1, args.computes + 1)]
    for name in lab.computes:
        svc = nova_service.Service.create(
            host=name,
            binary="nova-compute",
            topic=compute_rpcapi.RPC_TOPIC,
            topic_alt=compute_rpcapi.RPC_TOPIC_ALT,
        )
        svc.start()
        lab.services.append(svc)
    mapped = host_mapping.discover_hosts(lab.ctxt, by_service=False)
    log.info("novalab: mapped hosts %s", [m.host for m in mapped])


def _flavors(lab):
    from nova import objects

    for name, (ram, vcpus, disk) in FLAVORS.items():
        objects.Flavor(
            context=lab.ctxt,
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


def _info(args, lab, t0):
    capacity_mb = (args.ram_mb - args.reserved_ram_mb) * args.ram_ratio
    return {
        "cloud": CLOUD,
        "port": lab.port,
        "pid": os.getpid(),
        "compute_url": lab.compute_url,
        "placement_url": lab.placement_url,
        "token": TOKEN,
        "project_id": PROJECT_ID,
        "image_id": IMAGE_ID,
        "network_id": lab.network_id,
        "flavors": {name: flavor_id(name) for name in FLAVORS},
        "flavor_sizes": {name: {"ram_mb": r, "vcpus": v, "disk_gb": d} for name, (r, v, d) in FLAVORS.items()},
        "computes": lab.computes,
        "per_compute": {
            "ram_mb": args.ram_mb,
            "reserved_ram_mb": args.reserved_ram_mb,
            "ram_ratio": args.ram_ratio,
            "ram_capacity_mb": capacity_mb,
            "vcpus": args.vcpus,
            "cpu_ratio": args.cpu_ratio,
            "disk_gb": args.disk_gb,
        },
        "workdir": str(lab.workdir),
        "log_file": str(lab.log_file),
        "startup_seconds": round(time.monotonic() - t0, 2),
        "timings": {k: round(v, 2) for k, v in lab.timings.items()},
    }


def _announce(args, lab, t0):
    """clouds.yaml, then the info JSON, then (last: "ready") the port file."""
    import yaml

    info = _info(args, lab, t0)
    cloud_entry = {
        "auth_type": "admin_token",
        "auth": {"endpoint": lab.compute_url, "token": TOKEN},
        "region_name": REGION,
        "compute_endpoint_override": lab.compute_url,
        "placement_endpoint_override": lab.placement_url,
        "placement_api_version": "1",
        "novalab": {k: info[k] for k in ("image_id", "network_id", "flavors", "computes", "project_id")},
    }
    _write_atomic(args.clouds_yaml, yaml.safe_dump({"clouds": {CLOUD: cloud_entry}}, sort_keys=False))
    info_json = args.info_json or str(pathlib.Path(args.clouds_yaml).with_name("novalab.json"))
    info["clouds_yaml"] = str(pathlib.Path(args.clouds_yaml).resolve())
    _write_atomic(info_json, json.dumps(info, indent=2))
    _write_atomic(args.port_file, f"{lab.port}\n")
    return info


def _write_atomic(path, text):
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _run(args, lab, parent, log):
    """Serve until SIGTERM/SIGINT, the server's death, or (``--exit-with-parent``) the parent's."""
    import eventlet

    stopping = []

    def on_signal(signum, _frame):
        stopping.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    while not stopping and not lab.server.dead:
        eventlet.sleep(0.2)
        if args.exit_with_parent and os.getppid() != parent:
            log.warning("novalab: parent process %s is gone, stopping", parent)
            stopping.append("parent-exit")
    return stopping


def _shutdown(args, lab, stopping, log):
    """Orderly stop, bounded: a hung service must not keep the process alive. Never returns."""
    import eventlet

    # a real OS thread (not a greenthread): it fires even if a stop call never yields
    real_threading = eventlet.patcher.original("threading")
    real_time = eventlet.patcher.original("time")

    def watchdog():
        real_time.sleep(20)
        os._exit(3)  # pylint: disable=protected-access

    real_threading.Thread(target=watchdog, daemon=True).start()
    log.info("novalab stopping (signal %s)", stopping[:1])
    t = time.monotonic()
    lab.server.kill()
    for svc in reversed(lab.services):
        t_svc = time.monotonic()
        try:
            svc.stop()
        except Exception:  # pylint: disable=broad-except
            log.exception("novalab: stopping %s failed", svc)
        log.info("novalab: stopped %s %s in %.2fs", svc.binary, svc.host, time.monotonic() - t_svc)
    lab.host.cleanup()
    lab.access_log.close()
    try:
        os.unlink(args.port_file)
    except FileNotFoundError:
        pass
    if lab.own_workdir:
        shutil.rmtree(lab.workdir, ignore_errors=True)
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
