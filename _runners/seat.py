"""
Seat lifecycle on the tc master: retire a thin client in one step.
"""

import contextlib
import getpass
import logging
import os
import time
import types

log = logging.getLogger(__name__)

__virtualname__ = "seat"

try:
    import deskfleet_salt as glue
    import deskfleet_store
    import enroll_guard
    import enroll_keys
    import enroll_store
    import seat_records
    import tc_assets

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"seat: deskfleet utils not importable (utils_dirs?): {_exc}"
    deskfleet_store = types.SimpleNamespace(guard=lambda func: func)  # __virtual__ reports the import error


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="tc") if glue else (False, _MISSING)


def _who():
    return os.environ.get("SUDO_USER") or getpass.getuser()


@deskfleet_store.guard
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
    with contextlib.ExitStack() as opened:
        keys = enroll_keys.Keys(__opts__)
        opened.callback(keys.close)
        inventory = tc_assets.open_store(__opts__)  # also brings the inventory schema up to date
        opened.callback(inventory.close)
        conn = enroll_store.open_store(__opts__, "tc")
        opened.callback(conn.close)
        held = keys.listing()
        key_states = [status for status, ids in held.items() if minion_id in ids]
        rows = seat_records.count(inventory, minion_id)
        tokens = [t["token_id"] for t in enroll_store.tokens(conn, state="issued", minion_id=minion_id)]
        approved = enroll_store.approved(conn, minion_id)
        if not (key_states or rows or tokens or approved):
            return glue.error(__context__, f"nothing known about {minion_id!r} (no key, inventory row, token or approval)",
                              id=minion_id)  # fmt: skip
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
    glue.alert(__opts__, enroll_guard.TAG + "retired", {"id": minion_id, "keys": deleted_keys, "store_rows": deleted_rows})
    log.warning("seat: %s retired by %s: keys %s, rows %s", minion_id, _who(), deleted_keys, deleted_rows)
    return dict(plan, keys=deleted_keys, store_rows=deleted_rows, retired=True)
