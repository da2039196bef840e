"""
Distribute one file to many desktops or hosts (the minions a target matches) in
batches (vm master), via ``filedist.push`` on each. The hash is checked on every
minion before the file goes live.
"""

import logging
import re

import salt.client

log = logging.getLogger(__name__)

__virtualname__ = "filedist"

try:
    import deskfleet_salt as glue

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils_dirs missing from the master config
    glue, _MISSING = None, f"filedist runner: deskfleet utils not importable (utils_dirs?): {_exc}"

SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")


def __virtual__():
    return glue.virtual(__virtualname__, __opts__, role="vm") if glue else (False, _MISSING)


def _progress(message):
    try:
        __jid_event__.fire_event({"message": message}, "progress")  # noqa: F821 - injected by salt-run
    except NameError:  # called outside salt-run (tests, orchestration)
        log.info(message)


def _summarize(returns, expected):
    """Per-minion results plus counts; minions that never answered count as failed."""
    minions = {}
    for minion in expected:
        ret = returns.get(minion)
        if not isinstance(ret, dict) or "result" not in ret:
            minions[minion] = {"result": False, "comment": f"no valid answer: {str(ret)[:200]}"}
        else:
            minions[minion] = ret
    ok = sorted(m for m, r in minions.items() if r["result"] is True)
    return {
        "total": len(minions),
        "succeeded": len(ok),
        "copied": sorted(m for m in ok if minions[m].get("copied")),
        "unchanged": sorted(m for m in ok if not minions[m].get("copied")),
        "failed": sorted(m for m, r in minions.items() if r["result"] is False),
        "minions": minions,
    }


def _bad_dest(dest):
    """Why ``dest`` is refused, or None: it must be absolute and free of ``..`` components."""
    text = str(dest or "")
    if not text or not (text.startswith("/") or re.match(r"^[A-Za-z]:[\\/]", text)):
        return f"dest must be an absolute path, got {text[:200]!r}"
    if ".." in re.split(r"[\\/]+", text):
        return f"dest must not contain '..' components, got {text[:200]!r}"
    return None


def distribute(tgt, source, dest, sha256, batch=10, tgt_type="glob", user=None, group=None, mode=None, test=False, timeout=600):
    """
    Push ``source`` to ``dest`` on every minion matching ``tgt``, ``batch`` minions
    at a time; returns per-minion results and counts. Exit code 1 (and
    ``error``) when any minion failed or did not answer.

    CLI Example:

    .. code-block:: bash

        salt-run filedist.distribute 'desk-*' https://files.example/agent.msi 'C:/deploy/agent.msi' sha256=… batch=50
        salt-run filedist.distribute 'desk-*' salt://files/policy.json /etc/deskfleet/policy.json sha256=… mode=0644 test=True
    """
    if not SHA256_RE.fullmatch(str(sha256 or "")):
        return glue.error(__context__, "sha256 must be 64 hex digits")
    bad = _bad_dest(dest)
    if bad:
        return glue.error(__context__, bad)
    client = salt.client.LocalClient(mopts=__opts__)
    kwarg = {"user": user, "group": group, "mode": mode, "test": bool(test)}
    args = [source, dest, str(sha256).lower()]
    expected = client.gather_minions(tgt, tgt_type)
    if not expected:
        return glue.error(__context__, f"target {tgt!r} matches no accepted minion")
    returns = {}
    for chunk in client.cmd_batch(
        tgt, "filedist.push", arg=args, kwarg=kwarg, tgt_type=tgt_type, batch=str(batch), timeout=timeout, raw=False
    ):
        for minion, ret in chunk.items():
            returns[minion] = ret.get("ret", ret) if isinstance(ret, dict) and "ret" in ret else ret
        _progress(f"filedist: {len(returns)}/{len(expected)} minions done")
    result = _summarize(returns, expected)
    if result["failed"]:
        failed = ", ".join(result["failed"][:20])
        return glue.error(__context__, f"{len(result['failed'])} of {result['total']} minions failed: {failed}", **result)
    return result
