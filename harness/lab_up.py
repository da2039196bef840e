"""
``make lab-up`` / ``make lab-status`` / ``make lab-down``: the deskfleet lab that stays up.

``up`` starts a detached supervisor (``serve``) that brings up, under one directory
(``$DESKFLEET_LAB``, default ``/tmp/deskfleet-lab``): the embedded Nova (3 computes) with
the pool ``callcentre-win11``; the tc and vm masters from the shipped ``master.d`` (as
``harness.saltconf`` rewrites them for every lab); five thin clients with varied facts
(sites LON, MAN, BHX; firmware; sessions; one stopped after its first reports, so it goes
stale then offline); two desktops. ``up`` waits until all of it answers, then prints the
one line to source. ``env.sh`` puts the venv first on PATH and defines ``use_tc`` /
``use_vm``, which point ``SALT_CONFIG_DIR`` at one master's config dir: every Salt CLI
takes its ``-c`` default from it (``salt/utils/parsers.py`` ConfigDirMixIn), and the
master's ``master.d`` includes are read next to that file. ``SALT_MASTER_CONFIG`` alone
would not do: Salt honours it only while ``-c`` is the default ``/etc/salt`` and still
reads ``/etc/salt/master.d`` (``salt/config/__init__.py`` load_config, include_config).

``down`` stops the supervisor (which stops every daemon), kills what is left of each
recorded process group, checks that no process of the lab remains and removes the
directory. ``status`` says what runs; a half-dead lab is reported (exit 1) and ``down``
cleans it. Components and pids: ``<dir>/lab.json``; supervisor log: ``<dir>/lab.log``.
"""

import argparse
import contextlib
import json
import os
import pathlib
import shutil
import signal
import subprocess
import sys
import threading
import time

from harness import saltconf
from harness.proc import signal_group, spawn
from harness.wait import poll, wait_for

DEFAULT_DIR = "/tmp/deskfleet-lab"
STATE, READY, FAILED, LOG = "lab.json", "ready", "failed", "lab.log"
UP_TIMEOUT = 1200  # seconds; a loaded 2-core box


def lab_dir(value=None):
    return pathlib.Path(value or os.environ.get("DESKFLEET_LAB") or DEFAULT_DIR).resolve()


def source_line(base):
    return f". {base / 'env.sh'}"


# ---------------------------------------------------------------------------------------------
# state: which process groups belong to the lab
# ---------------------------------------------------------------------------------------------


def read_state(base):
    try:
        return json.loads((base / STATE).read_text())
    except (OSError, ValueError):
        return {}


def record(base, name, pid, stopped=False):
    """Note one component's process group (atomically: ``down`` may read it at any time); ``stopped``: on purpose."""
    state = read_state(base)
    state.setdefault("components", {})[name] = pid
    if stopped:
        state.setdefault("stopped", []).append(name)
    tmp = base / (STATE + ".tmp")
    tmp.write_text(json.dumps(state, indent=1))
    os.replace(tmp, base / STATE)


def alive(pid):
    """True if ``pid`` runs (a zombie does not count)."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def leftovers(base, state):
    """Processes of the lab: in a recorded process group, or a salt/novalab process started under ``base``."""
    groups = set(state.get("components", {}).values())
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            stat = (entry / "stat").read_text(errors="replace").rsplit(")", 1)[1].split()
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except (OSError, IndexError):
            continue
        if stat[0] == "Z":
            continue
        ours = str(base) + "/" in cmd and any(k in cmd for k in ("salt-", "novalab", "harness.lab_up"))
        if int(stat[2]) in groups or ours:
            found.append((int(entry.name), cmd.strip()[:160]))
    return found


def describe(base):
    """(verdict, lines): verdict is 'up', 'starting', 'down' or 'half-dead'."""
    state = read_state(base)
    comps = state.get("components", {})
    if not base.exists():
        return "down", [f"no lab at {base}"]
    lines = [f"{name:<14} pid {pid:<8} {'running' if alive(pid) else 'DEAD'}" for name, pid in comps.items()]
    running = [name for name, pid in comps.items() if alive(pid)]
    expected_dead = set(state.get("stopped", []))
    dead = [name for name in comps if name not in running and name not in expected_dead]
    if (base / READY).exists() and not dead:
        return "up", lines
    if "supervisor" in running and not dead and not (base / FAILED).exists():
        return "starting", lines + [f"start-up under way (log {base / LOG})"]
    if not running and not leftovers(base, state):
        return "half-dead", lines + [f"nothing runs, but {base} is left over"]
    return "half-dead", lines + [f"not running: {', '.join(dead) or '(start-up unfinished)'}"]


# ---------------------------------------------------------------------------------------------
# commands
# ---------------------------------------------------------------------------------------------


def cmd_status(base):
    verdict, lines = describe(base)
    for line in lines:
        print(line)
    print(f"lab at {base}: {verdict}" + ("" if verdict != "half-dead" else " (make lab-down cleans it)"))
    return {"up": 0, "down": 3}.get(verdict, 1)


def cmd_up(base):
    verdict, lines = describe(base)
    if verdict == "up":
        print(f"lab already up at {base}; to use it:", file=sys.stderr)
        print(source_line(base))
        return 0
    if verdict in ("half-dead", "starting"):
        advice = "wait (make lab-status)" if verdict == "starting" else "run make lab-down first"
        print("\n".join(lines + [f"lab at {base} is {verdict}: {advice}"]), file=sys.stderr)
        return 1
    base.mkdir(parents=True)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(saltconf.CHECKOUT), os.environ.get("PYTHONPATH")])))
    proc = spawn([sys.executable, "-m", "harness.lab_up", "serve", "--dir", str(base)], base / LOG,
                 cwd=str(saltconf.CHECKOUT), env=env, stdin=subprocess.DEVNULL)
    record(base, "supervisor", proc.pid)
    print(f"lab starting at {base} (log {base / LOG}) ...", file=sys.stderr)
    started = time.monotonic()
    try:
        wait_for(lambda: (base / READY).exists() or (base / FAILED).exists(), UP_TIMEOUT, 1, "the lab", proc=proc)
    except (RuntimeError, TimeoutError) as exc:
        (base / FAILED).write_text(str(exc))
    if (base / FAILED).exists():
        print(f"lab failed to start: {(base / FAILED).read_text()[-2000:]}\n(log: {base / LOG}); stopping it",
              file=sys.stderr)
        cmd_down(base, keep=True)
        return 1
    print(f"lab up in {time.monotonic() - started:.0f} s; to use it:", file=sys.stderr)
    print(source_line(base))
    return 0


def cmd_down(base, keep=False):
    state = read_state(base)
    if not base.exists():
        print(f"no lab at {base}")
        return 0
    sup = state.get("components", {}).get("supervisor")
    if sup and alive(sup):
        signal_group(sup, signal.SIGTERM)  # it stops every daemon and the Nova lab on its way out
        poll(lambda: not alive(sup), 120, 0.5)
    for pid in state.get("components", {}).values():
        signal_group(pid, signal.SIGKILL)
    for pid, _ in leftovers(base, state):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signal.SIGKILL)
    poll(lambda: not leftovers(base, state), 30, 0.5)
    left = leftovers(base, state)
    if left:
        print("processes of the lab still running:\n" + "\n".join(f"  {pid} {cmd}" for pid, cmd in left))
        return 1
    if not keep:
        shutil.rmtree(base, ignore_errors=True)
    print(f"lab at {base} stopped; no process of it left" + (f" (kept {base})" if keep else ""))
    return 0


def cmd_serve(base):
    """The supervisor: build the lab, mark it ready, hold it until SIGTERM, then stop it all."""
    from harness import lab_build  # pylint: disable=import-outside-toplevel

    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    try:
        with lab_build.built(base, lambda name, pid, stopped=False: record(base, name, pid, stopped), stop):
            (base / READY).write_text(time.strftime("%Y-%m-%dT%H:%M:%S%z\n"))
            print(f"lab ready: {source_line(base)}", flush=True)
            stop.wait()
            print("lab: stopping", flush=True)
    except BaseException as exc:  # pylint: disable=broad-except
        import traceback  # pylint: disable=import-outside-toplevel

        traceback.print_exc()
        if not stop.is_set():
            (base / FAILED).write_text(f"{type(exc).__name__}: {exc}")
        return 1
    return 0


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.strip().split("\n", 1)[0])
    parser.add_argument("command", choices=("up", "down", "status", "serve"))
    parser.add_argument("--dir", help=f"lab directory (default $DESKFLEET_LAB or {DEFAULT_DIR})")
    parser.add_argument("--keep", action="store_true", help="down: keep the directory (logs)")
    args = parser.parse_args(argv)
    base = lab_dir(args.dir)
    if args.command == "up":
        return cmd_up(base)
    if args.command == "down":
        return cmd_down(base, keep=args.keep)
    if args.command == "status":
        return cmd_status(base)
    return cmd_serve(base)


if __name__ == "__main__":
    sys.exit(main())
