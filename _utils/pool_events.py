"""
The pool events the keeper acts on, checked before anything happens.

Events are only triggers: the keeper re-reads the cloud, so a dropped, duplicated or forged
"taken" event costs one bounded keeper pass. A start event leads to a baseline and a ready mark,
so its subject is checked against what a desktop cannot forge. Pure: what the checks look up
(minion keys, Nova servers, a ping over the authenticated return path) is passed in.
"""

import re

from pool_config import POOL_KEY, STATE_KEY

TAKEN_TAG = "deskfleet/pool/taken"
START_TAG_RE = re.compile(r"salt/minion/([^/]{1,128})/start")


class Refused(Exception):
    """An event the keeper does not act on; the message says why."""


def kind(tag, data):
    """``"taken"`` or ``"start"``; anything else is refused."""
    if not isinstance(data, dict):
        raise Refused("event data is not a mapping")
    if tag == TAKEN_TAG:
        return "taken"
    if START_TAG_RE.fullmatch(str(tag)):
        return "start"
    raise Refused("not a pool event")


def taken_pool(data, pools, master_id, is_member):
    """
    The pool of a ``deskfleet/pool/taken`` event ``{"pool": P}``, sent from the master or the API
    (no minion id, or the master's) or by a desktop of pool P itself (``is_member(sender, P)``).
    """
    sender = data.get("id")
    payload = data.get("data") if isinstance(data.get("data"), dict) else data
    pool = payload.get("pool")
    if not isinstance(pool, str) or pool not in pools:
        raise Refused(f"unknown pool {str(pool)[:64]!r}")
    if sender is not None and sender != master_id and not is_member(sender, pool):
        raise Refused(f"{str(sender)[:64]} is neither the master nor a desktop of pool {pool}")
    return pool


def started_desktop(tag, data, pools, key_accepted, find, answers_ping):
    """
    ``(server name, pool)`` of a ``salt/minion/<id>/start`` event that may start the ready flow.
    ``key_accepted(id)``, ``find(id)`` (the Nova server or None) and ``answers_ping(id)`` are asked
    in that order, each only if the one before passed.
    """
    vm = START_TAG_RE.fullmatch(str(tag)).group(1)
    accepted = key_accepted(vm)
    server = find(vm) if accepted else None
    reason = check_start(tag, data, server, accepted, pools)
    if not reason and not answers_ping(vm):
        reason = f"{vm} did not answer a ping over the authenticated return path (a forged start event?)"
    if reason:
        raise Refused(reason)
    return vm, server["metadata"][POOL_KEY]


def check_start(tag, data, server, key_accepted, pools):
    """
    Why a ``salt/minion/<id>/start`` event must not start the ready flow, or None.

    The tag and ``data["id"]`` are NOT proof of the sender: a desktop can put any tag and data on the
    bus through the batched ``events`` form of ``_minion_event``. What a desktop cannot forge: the
    minion key for ``<id>`` accepted on this master, and a Nova server named ``<id>`` in a known pool,
    still booting (not ready, not taken). ``server`` is that Nova server (dict with name, status,
    metadata) or None. The baseline job that follows is answered over the authenticated return path.
    """
    match = START_TAG_RE.fullmatch(str(tag))
    if not match:
        return "not a minion start event"
    vm = match.group(1)
    if isinstance(data, dict) and data.get("id") not in (None, vm):
        return f"start event for {vm} carries id {str(data.get('id'))[:64]}"
    if not key_accepted:
        return f"{vm} has no accepted minion key"
    if server is None or server.get("name") != vm:
        return f"{vm} is not a server in the cloud"
    meta = server.get("metadata") or {}
    if meta.get(POOL_KEY) not in pools:
        return f"{vm} is not a desktop of a known pool"
    if meta.get(STATE_KEY) in ("ready", "taken"):
        return f"{vm} is already {meta[STATE_KEY]}"
    if (server.get("status") or "").upper() != "ACTIVE":
        return f"{vm} is {server.get('status')}, not ACTIVE"
    return None
