"""
Which files user-data retrieval may take: regular files under a user's profile
directory (Windows ``C:\\Users\\<user>\\...``, Linux ``/home/<user>/...``).

Used twice: by the vm master before it asks (the path as typed), and by the
desktop before it reads (the path again, then its real path: a symlink or
junction that leaves the user's profile is refused). Plain Python, no Salt and
no store: this file is served to desktops.
"""

import ntpath
import posixpath
import re

DEFAULT_ROOTS = {"windows": ["C:\\Users"], "linux": ["/home"]}
MAX_PATH = 1024
# Windows profiles that are no user's own (shared or templates)
NOT_USERS = {"public", "default", "default user", "all users", "defaultapppool"}
DRIVE_RE = re.compile(r"[A-Za-z]:[\\/]")


class PathError(ValueError):
    """A refused path; ``field`` names the argument to fix."""

    def __init__(self, message, field="path"):
        super().__init__(f"{field}: {message}")
        self.field = field


def flavor_of(path):
    """``windows`` for ``X:\\...``, ``linux`` for ``/...``; anything else is refused."""
    if not isinstance(path, str) or not path:
        raise PathError("is required (an absolute path on the desktop)")
    if DRIVE_RE.match(path):
        return "windows"
    if path.startswith("/") and not path.startswith("//"):
        return "linux"
    raise PathError(f"{path[:80]!r} is not an absolute local path (C:\\Users\\... or /home/...)")


def _parts(path, flavor):
    """The components after the anchor; ``..`` refused, ``.`` and empty ones dropped."""
    if flavor == "windows":
        drive, rest = path[:2].upper(), path[2:]
        pieces = re.split(r"[\\/]", rest)
    else:
        drive, pieces = "", path.split("/")
    if any(p == ".." for p in pieces):
        raise PathError(f"{path[:80]!r} contains '..'")
    return drive, [p for p in pieces if p not in ("", ".")]


def _key(parts, flavor):
    return [p.lower() for p in parts] if flavor == "windows" else list(parts)


def _join(drive, parts, flavor):
    return (drive + "\\" + "\\".join(parts)) if flavor == "windows" else "/" + "/".join(parts)


def check(path, roots, flavor=None):
    """
    ``{"path", "profile", "user", "flavor"}`` for a path under ``<root>/<user>/`` of
    one of ``roots``, normalised; raises :class:`PathError` otherwise.
    """
    flavor = flavor or flavor_of(path)
    if flavor_of(path) != flavor:
        raise PathError(f"{path[:80]!r} is not a {flavor} path")
    if len(path) > MAX_PATH or any(ord(c) < 32 for c in path):
        raise PathError(f"must be at most {MAX_PATH} characters without control characters")
    drive, parts = _parts(path, flavor)
    if flavor == "windows" and any(":" in p or p.endswith((" ", ".")) for p in parts):
        raise PathError(f"{path[:80]!r}: ':' (alternate data streams) and names ending in a dot or space are refused")
    for root in roots:
        if flavor_of(root) != flavor:
            continue
        rdrive, rparts = _parts(root, flavor)
        n = len(rparts)
        if drive == rdrive and _key(parts[:n], flavor) == _key(rparts, flavor) and len(parts) >= n + 2:
            user = parts[n]
            if user.startswith(".") or user.lower() in NOT_USERS:
                raise PathError(f"{user!r} is not a user's profile")
            return {"path": _join(drive, parts, flavor), "profile": _join(drive, parts[: n + 1], flavor),
                    "user": user, "flavor": flavor}
    shown = ", ".join(r for r in roots if flavor_of(r) == flavor) or "none configured"
    raise PathError(f"{path[:80]!r} is not a file inside a user profile directory (under {shown})")


def within(real, profile, flavor):
    """True when ``real`` (the resolved path) is strictly inside ``profile``."""
    mod = ntpath if flavor == "windows" else posixpath
    real = mod.normpath(real)
    if flavor == "windows" and real.startswith("\\\\?\\"):
        real = real[4:]  # realpath's extended-length prefix
    try:
        drive, parts = _parts(real, flavor)
        pdrive, pparts = _parts(profile, flavor)
    except PathError:
        return False
    return drive == pdrive and len(parts) > len(pparts) and _key(parts[: len(pparts)], flavor) == _key(pparts, flavor)
