"""
File distribution onto desktops and hosts: one file, pinned by sha256.

- ``salt://`` sources come through the minion's file cache; ``http(s)://``
  sources are downloaded straight to a partial file beside the destination and
  resumed with a ``Range`` request when a transfer was cut. Big files belong on
  HTTP (Salt's fileserver is not meant for them; see ``bench/filedist.py``).
- The destination is replaced atomically (temp file in the same directory,
  fsync, rename), and only after the hash matched: a bad download leaves the
  old file as it was.
- Nothing is copied when the destination already has the hash; owner and mode
  are still enforced.
- Pushes into one directory on one machine take turns (a lock on the
  directory): two jobs placing the same file would share its partial file.
"""

import contextlib
import fcntl
import grp
import hashlib
import logging
import os
import pwd
import re
import time

log = logging.getLogger(__name__)

__virtualname__ = "filedist"

CHUNK = 1024 * 1024
SHA256_RE = re.compile(r"[0-9a-f]{64}")
LOCK_WAIT = 600  # seconds a push waits for another one into the same directory

try:
    import requests

    HAS_REQUESTS = True
except ImportError:  # pragma: no cover - requests ships with Salt
    HAS_REQUESTS = False


def __virtual__():
    if os.name != "posix":
        return (False, "filedist: POSIX minions only for now (Windows desktops use the software catalog)")
    if not HAS_REQUESTS:
        return (False, "filedist: python requests is not importable")
    return __virtualname__


class PushError(Exception):
    pass


def _sha256_of(path, prefix_bytes=None):
    """sha256 of a file (or of its first ``prefix_bytes``), and the hasher for going on."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as fh:
        while prefix_bytes is None or done < prefix_bytes:
            want = CHUNK if prefix_bytes is None else min(CHUNK, prefix_bytes - done)
            block = fh.read(want)
            if not block:
                break
            digest.update(block)
            done += len(block)
    return digest


def _ids(user, group):
    uid = pwd.getpwnam(user).pw_uid if user else -1
    gid = grp.getgrnam(group).gr_gid if group else -1
    return uid, gid


def _meta_changes(path, uid, gid, mode):
    st = os.stat(path)
    changes = {}
    if uid != -1 and st.st_uid != uid:
        changes["user"] = uid
    if gid != -1 and st.st_gid != gid:
        changes["group"] = gid
    if mode is not None and (st.st_mode & 0o7777) != mode:
        changes["mode"] = oct(mode)
    return changes


def _apply_meta(path, uid, gid, mode):
    if uid != -1 or gid != -1:
        os.chown(path, uid, gid)
    if mode is not None:
        os.chmod(path, mode)


def _part_path(dest, sha256):
    # Named by the wanted hash: a resume never mixes bytes of two versions.
    return os.path.join(os.path.dirname(dest), f".{os.path.basename(dest)}.{sha256[:16]}.part")


def _download(url, part, timeout=30, session=None):
    """
    Download ``url`` into ``part``, resuming from its current size with a Range
    request. Returns ``(resumed_from, hasher)``: the hasher covers the whole file.
    """
    session = session or requests.Session()
    have = os.path.getsize(part) if os.path.exists(part) else 0
    headers = {"Range": f"bytes={have}-"} if have else {}
    with session.get(url, headers=headers, stream=True, timeout=timeout) as resp:
        if resp.status_code == 416 and have:
            # the part is already complete (or longer than the file): start over
            os.unlink(part)
            return _download(url, part, timeout, session)
        if resp.status_code not in (200, 206):
            raise PushError(f"GET {url}: HTTP {resp.status_code}")
        if resp.status_code == 200:
            have = 0  # server ignored the range: start over
        hasher = _sha256_of(part, have) if have else hashlib.sha256()
        with open(part, "r+b" if have else "wb") as fh:
            fh.seek(have)
            fh.truncate()
            for block in resp.iter_content(CHUNK):
                fh.write(block)
                hasher.update(block)
            fh.flush()
            os.fsync(fh.fileno())
    return have, hasher


def _result(ok, dest, comment, changes=None, **extra):
    return dict({"result": ok, "name": dest, "comment": comment, "changes": changes or {}}, **extra)


def _refusal(source, dest, sha256):
    """Why these arguments are refused, or None."""
    if not SHA256_RE.fullmatch(sha256):
        return "sha256 must be 64 hex digits"
    if not os.path.isabs(dest):
        return "dest must be an absolute path"
    if ".." in dest.replace("\\", "/").split("/"):
        return "dest must not contain '..' components"
    if not str(source).startswith(("salt://", "http://", "https://")):
        return "source must be salt://, http:// or https://"
    return None


def _fetch(source, part, saltenv, timeout):
    """``(bytes resumed, sha256 hex)`` of ``source`` written to ``part``."""
    if source.startswith("salt://"):
        cached = __salt__["cp.cache_file"](source, saltenv)
        if not cached:
            raise PushError(f"{source} not found on the master")
        _copy(cached, part)
        return 0, _sha256_of(cached).hexdigest()
    resumed, hasher = _download(source, part, timeout)
    return resumed, hasher.hexdigest()


def push(source, dest, sha256, user=None, group=None, mode=None, saltenv="base", test=False, timeout=30):
    """
    Put ``source`` at ``dest`` if its sha256 is ``sha256``; atomic, resumable,
    idempotent.

    source
        ``salt://path`` or ``http(s)://…``
    sha256
        required: the expected hex digest; a file that does not match is refused
    dest
        absolute path; ``{minion}`` in it becomes the minion id
    mode
        octal string or int, e.g. ``'0644'``

    CLI Example:

    .. code-block:: bash

        salt 'desk-*' filedist.push https://files.example/wallpaper.png /srv/wallpaper.png sha256=9f86… mode=0644
        salt 'desk-*' filedist.push salt://files/motd /etc/motd sha256=… test=True
    """
    sha256 = str(sha256 or "").lower()
    dest = str(dest).replace("{minion}", __opts__["id"])
    refused = _refusal(source, dest, sha256)
    if refused:
        return _result(False, dest, refused)
    try:
        mode = int(str(mode), 8) if mode is not None else None
        uid, gid = _ids(user, group)
    except (KeyError, ValueError) as exc:
        return _result(False, dest, f"bad owner or mode: {exc}")

    if test:
        return _place(source, dest, sha256, uid, gid, mode, saltenv, test, timeout)
    os.makedirs(os.path.dirname(dest), exist_ok=True)
    try:
        with _dir_lock(os.path.dirname(dest), LOCK_WAIT):
            return _place(source, dest, sha256, uid, gid, mode, saltenv, test, timeout)
    except TimeoutError as exc:
        return _result(False, dest, str(exc))


@contextlib.contextmanager
def _dir_lock(path, wait):
    """Exclusive flock on the directory itself: no lock file left beside the destination."""
    fd = os.open(path, os.O_RDONLY)
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another push into {path} held it for over {wait} s; nothing changed") from None
                time.sleep(0.2)
        yield
    finally:
        os.close(fd)  # releases the lock


def _place(source, dest, sha256, uid, gid, mode, saltenv, test, timeout):
    """The push itself; under the directory lock unless ``test`` (re-checked there: a turn may find it done)."""
    if os.path.isfile(dest) and _sha256_of(dest).hexdigest() == sha256:
        changes = _meta_changes(dest, uid, gid, mode)
        if changes and not test:
            _apply_meta(dest, uid, gid, mode)
        comment = "already has this content" + ("; owner/mode fixed" if changes and not test else "")
        return _result(None if test and changes else True, dest, comment, changes, copied=False)
    if test:
        return _result(None, dest, f"would place {source}", {"sha256": {"old": _old_hash(dest), "new": sha256}})

    part = _part_path(dest, sha256)
    try:
        resumed, got = _fetch(source, part, saltenv, timeout)
    except (OSError, PushError, requests.RequestException) as exc:
        # keep the partial file: the next push resumes it
        return _result(False, dest, f"transfer failed, {os.path.getsize(part) if os.path.exists(part) else 0} bytes kept for resume: {exc}")
    if got != sha256:
        os.unlink(part)
        return _result(False, dest, f"sha256 mismatch: got {got}, want {sha256}; {dest} left unchanged")
    old = _old_hash(dest)
    _apply_meta(part, uid, gid, mode if mode is not None else 0o644)
    os.replace(part, dest)
    _fsync_dir(os.path.dirname(dest))
    return _result(
        True,
        dest,
        f"placed {source}",
        {"sha256": {"old": old, "new": sha256}},
        copied=True,
        bytes=os.path.getsize(dest),
        resumed_from=resumed,
    )


def _old_hash(dest):
    return _sha256_of(dest).hexdigest() if os.path.isfile(dest) else None


def _copy(src, part):
    with open(src, "rb") as fin, open(part, "wb") as fout:
        while block := fin.read(CHUNK):
            fout.write(block)
        fout.flush()
        os.fsync(fout.fileno())


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check(dest, sha256):
    """
    Whether ``dest`` has the given sha256.

    CLI Example:

    .. code-block:: bash

        salt 'desk-*' filedist.check /srv/wallpaper.png 9f86…
    """
    have = _old_hash(dest)
    return {"name": dest, "sha256": have, "matches": have == str(sha256).lower()}
