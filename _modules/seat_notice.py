"""
A site-wide notice on a thin client's screen, for when the desktop behind the seat
cannot be reached (its session is gone, so ``desktop_notice`` cannot show it).

How the thin-client image displays it: this module writes
``<root>/run/deskfleet/seat-notice.json`` atomically (rename), mode 0644::

    {"text": "...", "shown_at": <epoch s>, "expires_at": <epoch s>, "seconds": <int>}

The image's kiosk session (the user session that runs the SPICE client) watches
that directory (inotify: ``inotifywait -m -e moved_to /run/deskfleet``) and shows
``text`` as a banner above the SPICE window until ``expires_at``; a file whose
``expires_at`` has passed is ignored. The kiosk reads the file, it never runs it:
no shell, no markup. ``root`` is ``/`` on a device (the ``deskfleet_lab_root``
grain moves it under a temp dir in the lab).
"""

import json
import os
import time

from salt.exceptions import CommandExecutionError

__virtualname__ = "seat_notice"
MAX_TEXT = 1024  # the master's limit (messages:max_length) is the one ops see; this is the device's own bound
NOTICE = "run/deskfleet/seat-notice.json"


def __virtual__():
    if __grains__.get("kernel") not in (None, "Linux"):
        return (False, "seat_notice: thin clients run Linux")
    return __virtualname__


def _path():
    return os.path.join(__grains__.get("deskfleet_lab_root") or "/", NOTICE)


def show(text, seconds=600):
    """
    Show ``text`` on this seat's screen for ``seconds`` (1..86400). Returns
    ``{"sent": True, "method": "notice-file", "path": ...}``.

    CLI Example:

    .. code-block:: bash

        salt 'tc-lon-*' seat_notice.show 'Desktops in LON are down; IT is on it.' seconds=1800
    """
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT or any(ord(c) < 32 for c in text):
        raise CommandExecutionError(f"seat_notice: text must be one line of 1..{MAX_TEXT} characters")
    if isinstance(seconds, bool) or not isinstance(seconds, int) or not 0 < seconds <= 86400:
        raise CommandExecutionError(f"seat_notice: seconds must be an integer in 1..86400, got {seconds!r}")
    path = _path()
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    now = time.time()
    body = json.dumps({"text": text, "shown_at": now, "expires_at": now + seconds, "seconds": seconds})
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(body)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return {"sent": True, "method": "notice-file", "path": path}

