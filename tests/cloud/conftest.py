"""
Cloud tier: a real Nova API + placement + conductor + scheduler + fake-driver computes
(``harness.novalab``) in one server process on 127.0.0.1, reached only through
openstacksdk and the clouds.yaml it writes.

Fixtures:

* ``novalab`` (module scope): a running lab (one compute, 8192 MB, reserved 512 MB,
  ram ratio 1.5 -> 11520 MB of placement capacity). Attributes: ``clouds_yaml``,
  ``cloud``, ``image_id``, ``network_id``, ``flavors``, ``flavor_id``, ``computes``,
  ``env()`` (for subprocesses) and ``connect()`` (an openstacksdk Connection). The server
  process group is stopped and its temp dir removed at module teardown, pass or fail.
  Skipped, naming what is missing, when nova/placement/openstacksdk cannot be imported.
* ``cloud`` (function scope): an openstacksdk Connection to ``novalab``; on teardown it
  deletes every server the test left and waits until placement shows no usage, so each
  test starts from an empty cloud.
* ``novalab_factory``: start extra labs with other sizes (``novalab_factory(computes=2)``);
  each is stopped at teardown of the test that made it.
"""

import time

import pytest

from harness import novalab as novalab_mod


def _skip_if_missing():
    reason = novalab_mod.missing()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="module")
def novalab():
    _skip_if_missing()
    with novalab_mod.NovaLab() as lab:
        print(f"\nnovalab up in {lab.startup_seconds:.2f}s on {lab.compute_url} (server: {lab.info['timings']})")
        yield lab


@pytest.fixture
def novalab_factory():
    _skip_if_missing()
    labs = []

    def make(**kwargs):
        lab = novalab_mod.NovaLab(**kwargs)
        labs.append(lab)
        return lab.__enter__()

    yield make
    for lab in reversed(labs):
        lab.stop()


def clear_servers(conn, timeout=60):
    """Delete every server and wait until placement shows no usage on any provider."""
    servers = list(conn.compute.servers(all_projects=True))
    for server in servers:
        conn.compute.delete_server(server, ignore_missing=True)
    for server in servers:
        conn.compute.wait_for_delete(server, interval=0.2, wait=timeout)
    deadline = time.monotonic() + timeout
    while True:
        used = {
            rp.name: {k: v for k, v in (conn.placement.fetch_resource_provider_usages(rp).usages or {}).items() if v}
            for rp in conn.placement.resource_providers()
        }
        if not any(used.values()):
            return
        if time.monotonic() > deadline:
            raise TimeoutError(f"placement usages did not drop to zero: {used}")
        time.sleep(0.2)


@pytest.fixture
def cloud(novalab):
    conn = novalab.connect()
    try:
        yield conn
    finally:
        try:
            clear_servers(conn)
        finally:
            conn.close()
