"""
One RSA key per simulated seat, generated once and cached outside the checkout
(``~/.cache/deskfleet/swarm-keys/<seat>/minion.{pem,pub}``), and the seat names.
"""

import os
import pathlib
import shutil
import time

CACHE = pathlib.Path(os.environ.get("DESKFLEET_SWARM_KEYS", pathlib.Path.home() / ".cache/deskfleet/swarm-keys"))
KEY_BITS = 2048  # Salt's minion default


def seat_name(index):
    return f"tc-swarm-{index:05d}"


def ensure(count, say=print):
    """Keys for seats 0..count-1 (made where missing); returns ``{seat: key dir}``."""
    import salt.crypt  # pylint: disable=import-outside-toplevel

    made, t0 = 0, time.time()
    dirs = {}
    for index in range(count):
        seat = seat_name(index)
        path = CACHE / seat
        if not (path / "minion.pem").exists() or not (path / "minion.pub").exists():
            path.mkdir(parents=True, exist_ok=True)
            salt.crypt.write_keys(str(path), "minion", KEY_BITS)
            made += 1
        dirs[seat] = path
    if made:
        say(f"   made {made} seat keys in {time.time() - t0:.1f} s (cached in {CACHE})")
    return dirs


def pki_dir(key_dir, run_dir):
    """
    A run's own pki dir for one seat: its cached key pair copied in (the master
    key a seat learns on first sign-in belongs to this run's master only).
    """
    target = pathlib.Path(run_dir) / key_dir.name
    target.mkdir(parents=True, exist_ok=True)
    for name in ("minion.pem", "minion.pub"):
        shutil.copyfile(key_dir / name, target / name)
    (target / "minion.pem").chmod(0o400)
    return target


def accept(master_pki, key_dirs):
    """Accept every seat's key on the master up front (the bench measures capacity, not enrollment)."""
    accepted = pathlib.Path(master_pki) / "minions"
    accepted.mkdir(parents=True, exist_ok=True)
    for seat, path in key_dirs.items():
        shutil.copyfile(path / "minion.pub", accepted / seat)
