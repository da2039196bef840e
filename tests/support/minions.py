"""Start several salt-factories minions at once, synced and with fresh pillar."""

import contextlib


@contextlib.contextmanager
def running(master, factories, tgt, **start_kwargs):
    """Yield ``{minion id: factory}`` once every minion answers with deskfleet's modules and pillar."""
    with contextlib.ExitStack() as stack:
        for factory in factories:
            stack.enter_context(factory.started(**start_kwargs))
        cli = master.salt_cli(timeout=120)
        for args in (("saltutil.sync_all",), ("saltutil.refresh_pillar", "wait=True")):
            ret = cli.run(*args, minion_tgt=tgt)
            assert ret.returncode == 0, ret
        yield {factory.id: factory for factory in factories}
