"""
One file from a user's profile on this desktop, sent to the vm master for
``salt-run userdata.fetch`` (ops retrieve a user's files when a desktop is
replaced). Only a regular file strictly inside ``<profile root>\\<user>\\``: the
path is checked as given and again after resolving symlinks and junctions, then
opened without following links and compared with what was checked. At most
``max_bytes`` are read into a private staging copy, which ``cp.push`` sends
(and removes). The vm master checks everything again on arrival.
"""

import hashlib
import os
import re
import stat

from salt.exceptions import CommandExecutionError

try:
    # Salt puts the synced utils (extension_modules/utils) on sys.path while it loads modules.
    import userdata_path

    _MISSING = None
except ImportError as _exc:  # pragma: no cover - utils not synced yet
    userdata_path, _MISSING = None, f"profile_file: userdata_path util not synced: {_exc}"

__virtualname__ = "profile_file"
REQUEST_RE = re.compile(r"[0-9a-f]{32}")
CHUNK = 1 << 20


def __virtual__():
    if userdata_path is None:
        return (False, _MISSING)
    if __grains__.get("deskfleet_role") == "tc":
        return (False, "profile_file: not for thin clients")
    return __virtualname__


def _refuse(message):
    raise CommandExecutionError(f"profile_file: {message}")


def _stage(real, max_bytes, staged):
    """Copy ``real`` (a regular file, not a link) to ``staged`` (0600): ``(size, sha256)``."""
    before = os.lstat(real)
    if not stat.S_ISREG(before.st_mode):
        _refuse(f"path: {real} is not a regular file (directory, link, device or pipe)")
    if before.st_size > max_bytes:
        _refuse(f"path: {real} is {before.st_size} bytes, over the cap of {max_bytes}")
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)
    fd = os.open(real, flags)
    with os.fdopen(fd, "rb") as src:
        now = os.fstat(src.fileno())
        if not stat.S_ISREG(now.st_mode) or (now.st_dev, now.st_ino) != (before.st_dev, before.st_ino):
            _refuse(f"path: {real} changed while it was checked")
        digest, size = hashlib.sha256(), 0
        out_fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | getattr(os, "O_BINARY", 0), 0o600)
        with os.fdopen(out_fd, "wb") as dst:
            while True:
                chunk = src.read(CHUNK)
                if not chunk:
                    break
                size += len(chunk)
                if size > max_bytes:
                    _refuse(f"path: {real} grew over the cap of {max_bytes} bytes while read")
                digest.update(chunk)
                dst.write(chunk)
    return size, digest.hexdigest()


def push(path, request, max_bytes, roots=None):
    """
    Send the file at ``path`` (inside a user profile) to the master as
    ``userdata/<request>/file``. Called by ``salt-run userdata.fetch``, which
    passes its request id, size cap and profile roots. Returns path, real path,
    size and sha256.

    CLI Example:

    .. code-block:: bash

        salt-run userdata.fetch desk-0042 path='C:\\Users\\alice\\Documents\\report.xlsx'
    """
    flavor = "windows" if __grains__.get("kernel") == "Windows" else "linux"
    if not isinstance(request, str) or not REQUEST_RE.fullmatch(request):
        _refuse("request: must be 32 hex characters")
    if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes <= 0:
        _refuse(f"max_bytes: must be a positive integer, got {max_bytes!r}")
    try:
        want = userdata_path.check(path, roots or userdata_path.DEFAULT_ROOTS[flavor], flavor)
    except userdata_path.PathError as exc:
        _refuse(str(exc))
    real = os.path.realpath(want["path"])
    if not userdata_path.within(real, want["profile"], flavor):
        _refuse(f"path: {want['path']} resolves to {real}, outside {want['profile']} (a link out of the profile)")
    staging = os.path.join(__opts__["cachedir"], "deskfleet-userdata")
    os.makedirs(staging, mode=0o700, exist_ok=True)
    staged = os.path.join(staging, request)
    try:
        size, sha = _stage(real, max_bytes, staged)
        upload = f"userdata/{request}/file"
        if not __salt__["cp.push"](staged, upload_path=upload, remove_source=True):
            _refuse("cp.push was refused (file_recv off on this master, or the file is over file_recv_max_size)")
    except OSError as exc:
        _refuse(f"path: {want['path']}: {exc.strerror or exc}")
    finally:
        if os.path.exists(staged):
            os.unlink(staged)
    return {"path": want["path"], "real": real, "size": size, "sha256": sha, "upload_path": upload}
