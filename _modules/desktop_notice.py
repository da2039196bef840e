"""
A short message to the people logged on to this desktop (host maintenance tells
users before their desktop moves). Windows: ``msg * /time:<s> <text>`` (every
session; needs the sessions' Message permission, text under 256 characters).
Linux: ``wall`` with the text on stdin (every terminal session).

The text is passed as one argument (Windows) or on stdin (Linux), never through a
shell.
"""

import logging

from salt.exceptions import CommandExecutionError

log = logging.getLogger(__name__)

__virtualname__ = "desktop_notice"
MAX_TEXT = 255


def __virtual__():
    if __grains__.get("deskfleet_role") in ("tc",):
        return (False, "desktop_notice: not for thin clients")
    return __virtualname__


def _check(text, seconds):
    if not isinstance(text, str) or not text.strip():
        raise CommandExecutionError("desktop_notice: text is required")
    if len(text) > MAX_TEXT or any(ord(c) < 32 for c in text):
        raise CommandExecutionError(f"desktop_notice: text must be one line of at most {MAX_TEXT} characters")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 < seconds <= 86400:
        raise CommandExecutionError(f"desktop_notice: seconds must be an integer in 1..86400, got {seconds!r}")


def send(text, seconds=600):
    """
    Show ``text`` to every session on this desktop for ``seconds`` (Windows; Linux
    ``wall`` has no timeout). Returns ``{"sent": True, "method": "msg"|"wall"}``.

    CLI Example:

    .. code-block:: bash

        salt 'desk-0042' desktop_notice.send 'Your desktop moves to another host within 10 min.'
    """
    _check(text, seconds)
    if __grains__.get("kernel") == "Windows":
        method, out = "msg", __salt__["cmd.run_all"](
            ["msg", "*", f"/time:{seconds}", text], python_shell=False, ignore_retcode=True
        )
    else:
        method, out = "wall", __salt__["cmd.run_all"](["wall"], stdin=text + "\n", python_shell=False, ignore_retcode=True)
    if out.get("retcode") != 0:
        raise CommandExecutionError(f"desktop_notice: {method} failed ({out.get('retcode')}): {out.get('stderr', '')[:200]}")
    return {"sent": True, "method": method}
