"""
Proof that a desktop is really up: it answers a ping, read back from the master's
job cache. A return reaches the job cache only through the request channel, which
authenticates the minion (per-minion session key); the event bus does not (any
desktop can put a forged ``salt/minion/<other>/start`` or ``salt/job/.../ret/<other>``
on it), nor is a start event's sender: only an accepted key proves who a desktop is.
The pool keeper asks both before it believes a start event.
"""

import time


def answers(publish, lookup, minion_id, timeout=30.0, poll=1.0, clock=time.monotonic, sleep=time.sleep):
    """
    ``publish(minion_id) -> jid`` sends ``test.ping`` to exactly that minion; ``lookup(jid) -> {id: return}``
    reads the job cache. True once ``minion_id`` itself returned True, False after ``timeout`` seconds.
    """
    jid = publish(minion_id)
    if not jid:
        return False
    deadline = clock() + timeout
    while True:
        if (lookup(jid) or {}).get(minion_id) is True:
            return True
        if clock() >= deadline:
            return False
        sleep(poll)


def salt_publisher(master_opts):
    """``publish(minion_id) -> jid``: ``test.ping`` to exactly that minion through the master's LocalClient."""

    def publish(minion_id):
        import salt.client  # pylint: disable=import-outside-toplevel

        # the master's own config from disk: a runner nested in an orchestration gets minion-shaped opts
        conf = master_opts.get("conf_file")
        client = salt.client.get_local_client(conf) if conf else salt.client.get_local_client(mopts=master_opts)
        try:
            return client.cmd_async(minion_id, "test.ping", tgt_type="list")
        finally:
            client.destroy()

    return publish


def answers_ping(master_opts, lookup, minion_id, timeout):
    """:func:`answers` through this master's LocalClient; ``lookup(jid)`` reads the job cache (``jobs.lookup_jid``)."""
    return answers(salt_publisher(master_opts), lookup, minion_id, timeout=timeout)


def key_accepted(master_opts, minion_id):
    """The minion key for ``minion_id`` is accepted on this master (what a desktop cannot grant itself)."""
    import salt.exceptions  # pylint: disable=import-outside-toplevel
    import salt.key  # pylint: disable=import-outside-toplevel

    try:
        key = salt.key.get_key(master_opts).cache.fetch("keys", str(minion_id))
    except (salt.exceptions.SaltCacheError, OSError):
        return False
    return bool(key) and key.get("state") == "accepted"
