"""
What the pool keeper reads from and asks of the cloud, through openstacksdk only: the
keeper's servers (filtered on the server side), per-host placement data, flavors, boots.
Every call is bounded: ``connect`` sets the sdk's API timeout and retry counts.
"""

import datetime
import os
import re
import uuid

import keystoneauth1.exceptions
import openstack
import openstack.config
import openstack.exceptions

import host_capacity
from pool_config import POOL_KEY

# what a cloud call can raise: the sdk's errors and the transport's (timeouts, refused connections)
CLOUD_ERRORS = (openstack.exceptions.SDKException, keystoneauth1.exceptions.ClientException)


# deskfleet:vm:pool_keeper's bounds hold for every cloud call the vm master makes (keeper, portal, maintenance)
CONNECT_DEFAULTS = {"cloud_timeout": 10, "cloud_retries": 1}


def connect_conf(vm_conf):
    """``connect`` bounded by ``cloud_timeout``/``cloud_retries`` of ``vm_conf`` (``deskfleet:vm``) ``pool_keeper``."""
    bounds = {**CONNECT_DEFAULTS, **(vm_conf.get("pool_keeper") or {})}
    return connect(vm_conf, bounds["cloud_timeout"], bounds["cloud_retries"])


def connect(vm_conf, timeout, retries):
    """A Connection from clouds.yaml (``deskfleet:vm:cloud`` / ``clouds_yaml``, else ``$OS_CLOUD``) with
    ``timeout`` seconds per API call and ``retries`` retries of failed connections and 5xx/429 answers."""
    cloud = vm_conf.get("cloud") or os.environ.get("OS_CLOUD")
    if not cloud:
        raise openstack.exceptions.ConfigException(
            "no cloud configured: set deskfleet:vm:cloud in the vm master config or OS_CLOUD"
        )
    files = [vm_conf["clouds_yaml"]] if vm_conf.get("clouds_yaml") else None
    region = openstack.config.OpenStackConfig(config_files=files).get_one(
        cloud=cloud, api_timeout=timeout, connect_retries=retries, status_code_retries=retries
    )
    return openstack.connection.Connection(config=region)


def _epoch(iso):
    try:
        return datetime.datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def servers(conn, prefix):
    """The keeper's servers: names ``<prefix>-…`` (filtered by Nova), with pool metadata."""
    return [
        {"id": s.id, "name": s.name, "status": s.status, "metadata": dict(s.metadata or {}), "created": _epoch(s.created_at)}
        for s in conn.compute.servers(details=True, name=f"^{re.escape(prefix)}-")
        if POOL_KEY in (s.metadata or {})
    ]


def providers(conn):
    """Per compute provider: inventories (with max_unit), usages, and whether nova disabled it."""
    disabled = {rp.id for rp in conn.placement.resource_providers(required=host_capacity.DISABLED_TRAIT)}
    out = []
    for rp in conn.placement.resource_providers():
        inventories = {
            inv.resource_class: {
                "total": inv.total,
                "reserved": inv.reserved or 0,
                "allocation_ratio": inv.allocation_ratio or 1.0,
                "max_unit": inv.max_unit if inv.max_unit is not None else inv.total,
            }
            for inv in conn.placement.resource_provider_inventories(rp)
        }
        usages = conn.placement.fetch_resource_provider_usages(rp).usages or {}
        out.append({"name": rp.name, "inventories": inventories, "usages": usages, "disabled": rp.id in disabled})
    return out


def flavors(conn, names):
    out = {}
    for name in set(names):
        flavor = conn.compute.find_flavor(name, ignore_missing=True)
        if flavor is not None:
            out[name] = {"id": flavor.id, "ram": flavor.ram, "vcpus": flavor.vcpus, "disk": flavor.disk}
    return out


def new_name(prefix, name):
    """A fresh server name for pool ``name``: ``<prefix>-<pool>-<8 hex>``."""
    return f"{prefix}-{name}-{uuid.uuid4().hex[:8]}"


def boot(conn, server_name, name, pool, flavor_id, **extra):
    """Ask Nova for desktop ``server_name`` of pool ``name`` (``extra``: e.g. user_data); returns its name."""
    conn.compute.create_server(
        **extra,
        name=server_name,
        flavor_id=flavor_id,
        image_id=pool["image"],
        networks=[{"uuid": pool["network"]}],
        metadata=dict(pool["metadata"], **{POOL_KEY: name}),
    )
    return server_name


def find(conn, name):
    """The server named exactly ``name`` as a plain dict, or None."""
    found = conn.compute.find_server(str(name), ignore_missing=True)
    if found is None:
        return None
    return {"id": found.id, "name": found.name, "status": found.status, "metadata": dict(found.metadata or {})}
