"""
The lease that keeps two ``software.tick`` runs off the same rollout: an owner
(``host:pid:token``) and an expiry in the rollout's row. A holder that was a process
of this host and has exited (a tick killed by a master restart) loses it at once.
"""

import os
import secrets
import socket

import deskfleet_store as store


class LeaseLost(RuntimeError):
    """Another tick took the rollout over (our lease expired)."""


def acquire(conn, rollout_id, owner, now, ttl):
    """
    Take the rollout for ``ttl`` seconds unless another owner holds an unexpired
    lease. A lease whose holder was a process on this host that no longer exists
    (a tick killed by a master restart) is taken over at once.
    """
    with store.transaction(conn):
        row = conn.execute("SELECT lease_owner, lease_until FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
        if row is None:
            return False
        holder = row["lease_owner"]
        free = holder is None or row["lease_until"] is None or row["lease_until"] <= now or holder == owner
        if not free and not _holder_gone(holder):
            return False
        conn.execute(
            "UPDATE rollouts SET lease_owner = ?, lease_until = ? WHERE id = ?", (owner, now + ttl, rollout_id)
        )
        return True


def _holder_gone(holder):
    """True if ``holder`` (``host:pid:token``) names a process of this host that has exited."""
    host, _, rest = str(holder).partition(":")
    pid = rest.partition(":")[0]
    if host != socket.gethostname() or not pid.isdigit():
        return False
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: it exists, someone else's
        return False
    return False


def renew(conn, rollout_id, owner, now, ttl):
    with store.transaction(conn):
        check_held(conn, rollout_id, owner)
        conn.execute("UPDATE rollouts SET lease_until = ? WHERE id = ?", (now + ttl, rollout_id))


def release(conn, rollout_id, owner):
    with store.transaction(conn):
        conn.execute(
            "UPDATE rollouts SET lease_owner = NULL, lease_until = NULL WHERE id = ? AND lease_owner = ?",
            (rollout_id, owner),
        )


def check_held(conn, rollout_id, owner):
    """Raise :class:`LeaseLost` unless ``owner`` still holds the lease (inside the caller's transaction)."""
    row = conn.execute("SELECT lease_owner FROM rollouts WHERE id = ?", (rollout_id,)).fetchone()
    if row is None or row["lease_owner"] != owner:
        raise LeaseLost(f"rollout {rollout_id}: lease now held by {row and row['lease_owner']!r}")


def owner_name():
    return f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
