"""
The returns of one published job, read from the master's job cache, never from
the event bus: a return reaches the job cache only through the request channel,
which authenticates the minion, while any minion can put a forged
``salt/job/<jid>/ret/<other id>`` on the bus (``tools/repro_forged_job_return.py``).
LocalClient's ``cmd``/``cmd_iter`` read the bus; runners that act on returns use this.
"""

import time


def wait(read, targets, timeout, clock=time.monotonic, sleep=time.sleep, poll=0.5):
    """
    ``{id: {"ret": ..., "retcode": n}}`` for the ``targets`` that returned, polling
    ``read() -> {id: {"return": ..., "retcode": n}}`` (the job cache) until all did
    or ``timeout`` seconds passed. Returns of ids not targeted are ignored.
    """
    wanted, deadline = set(targets), clock() + timeout
    while True:
        found = read() or {}
        got = {m: {"ret": r.get("return"), "retcode": r.get("retcode", 0)}
               for m, r in found.items() if m in wanted and isinstance(r, dict) and "return" in r}
        if set(got) == wanted or clock() >= deadline:
            return got
        sleep(poll)


def run(opts, list_job, targets, fun, args=(), kwarg=None, timeout=30):
    """Publish ``fun`` to exactly ``targets`` and wait for their returns in the job cache (``jobs.list_job``)."""
    import salt.client  # pylint: disable=import-outside-toplevel

    with salt.client.get_local_client(mopts=opts) as client:
        jid = client.cmd_async(list(targets), fun, list(args), tgt_type="list", kwarg=kwarg or {})
    if not jid:
        raise RuntimeError(f"the publication of {fun} was refused (no job id)")
    return wait(lambda: (list_job(jid, display_progress=False) or {}).get("Result") or {}, targets, timeout)
