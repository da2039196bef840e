"""
Seat lifecycle on the tc master: retire a thin client in one step.
"""

import getpass
import logging
import os
import time

import salt.utils.event

log = logging.getLogger(__name__)

__virtualname__ = "seat"

try:
    import enroll_guard
    import enroll_keys
    import enroll_store
    import seat_records
    import tc_assets

    HAS_UTILS = True
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    HAS_UTILS = False
    _IMPORT_ERROR = str(_exc)


def __virtual__():
    if not HAS_UTILS:
        return (False, f"seat: deskfleet utils not importable (utils_dirs?): {_IMPORT_ERROR}")
    role = (__opts__.get("deskfleet") or {}).get("role")
    if role != "tc":
        return (False, f"seat: runs on the tc master only (deskfleet:role is {role!r})")
    return __virtualname__


def _who():
    return os.environ.get("SUDO_USER") or getpass.getuser()


def retire(minion_id, test=False):
    """
    Retire a seat: delete its minion key (accepted, pending, rejected or
    denied), its inventory row and every history row about it, and revoke its
    unused token. The enrollment audit log keeps a record of the retirement.
    With ``test=True`` nothing changes; the return says what would be deleted.

    CLI Example:

    .. code-block:: bash

        salt-run seat.retire tc-lon-0042 test=True
        salt-run seat.retire tc-lon-0042
    """
    minion_id = str(minion_id)
    keys = enroll_keys.Keys(__opts__)
    inventory = tc_assets.open_store(__opts__)  # also brings the inventory schema up to date
    conn = enroll_store.open_store(__opts__, "tc")
    try:
        held = keys.listing()
        key_states = [status for status, ids in held.items() if minion_id in ids]
        rows = seat_records.count(inventory, minion_id)
        tokens = [t["token_id"] for t in enroll_store.tokens(conn, state="issued", minion_id=minion_id)]
        approved = enroll_store.approved(conn, minion_id)
        if not (key_states or rows or tokens or approved):
            __context__["retcode"] = 1
            return {"error": f"nothing known about {minion_id!r} (no key, inventory row, token or approval)",
                    "id": minion_id, "retcode": 1}  # fmt: skip
        plan = {"id": minion_id, "keys": key_states, "store_rows": rows, "tokens": tokens,
                "approved_key": approved and approved["fingerprint"]}  # fmt: skip
        if test:
            return dict(plan, test=True, retired=False)
        deleted_keys = keys.delete(minion_id)
        deleted_rows = seat_records.delete(inventory, minion_id)
        forgot = enroll_store.forget(conn, time.time(), minion_id, _who())
        enroll_store.audit(conn, time.time(), "retire", _who(),
                           f"keys {deleted_keys}, rows {deleted_rows}, tokens {forgot['tokens_revoked']}",
                           minion_id, None, approved and approved["fingerprint"])  # fmt: skip
    finally:
        conn.close()
        inventory.close()
        keys.close()
    with salt.utils.event.get_master_event(__opts__, __opts__["sock_dir"], listen=False) as bus:
        bus.fire_event({"id": minion_id, "keys": deleted_keys, "store_rows": deleted_rows}, enroll_guard.TAG + "retired")
    log.warning("seat: %s retired by %s: keys %s, rows %s", minion_id, _who(), deleted_keys, deleted_rows)
    return dict(plan, keys=deleted_keys, store_rows=deleted_rows, retired=True)
