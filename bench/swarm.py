"""
``make bench-swarm`` / ``python -m bench.swarm --seats N``: simulated thin clients
(``bench/swarm_seat.py``: Salt's own sign-in, publication and request channels,
the beacon's real signed payload, one cached RSA key per seat, many seats per
process) against a tc master started from the shipped ``salt_tc/master.d``.

Per variant, each on a fresh master (same seats): ``default`` = the shipped template
with Salt's own sign-in values (``auth_timeout`` 5 ...), ``shipped`` =
``salt_tc/minion/deskfleet-tc.conf`` and ``salt_tc/master.d`` as is, ``salt_master`` =
the shipped template against a master with Salt's one worker pool and ``zmq_backlog``.

1. ramp          per size of ``--sizes`` (default: ``--seats`` only), one master throughout:
   login storm   the step's new seats sign in and send ``start`` (``--login-window`` s for the largest size, pro rata)
   steady        one heartbeat per seat over ``--steady`` s: master CPU (share of one core), PSS
                 (the ramp stops at the first size not fully signed in or short of memory: largest reached)
   idle          at the largest size reached, ``--idle`` s with no seat sending: the cost of the connections
2. status storm  one ``change`` per seat within ``--storm-window`` s
3. re-auth storm the master restarts (new AES key), then ONE publication to one seat: every
                 seat signs in again; auth requests counted per seat (seat side, resends
                 included, and ``salt/auth`` events on the master), then one heartbeat each
4. AES rotation  ``salt-key -d`` of one key (a retired seat): the maintenance loop makes a new AES
                 key, then ONE publication: the same storm without a restart (``--no-rotation`` skips it)
5. loss          per (seat, seq) against the inventory store; duplicates absorbed apart

The last line is one JSON object. The box is shared: keep ``--seats`` small.
"""

import argparse
import json
import os
import pathlib
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import yaml

from bench import swarm_keys, swarm_phases, swarm_report

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]
# Salt 3008.3's own values of what the template sets (the baseline)
SALT_DEFAULTS = {"auth_timeout": 5, "acceptance_wait_time_max": 0, "random_reauth_delay": 10}
# ... and of what salt_tc/master.d/50-capacity.conf sets (None: the key removed, Salt's default applies)
SALT_MASTER_DEFAULTS = {"worker_pools": None, "zmq_backlog": 1000}
# name: (seat overrides, master overrides)
VARIANTS = {"default": (SALT_DEFAULTS, {}), "shipped": ({}, {}), "salt_master": ({}, SALT_MASTER_DEFAULTS)}


def say(text=""):
    print(text, flush=True)


def _interrupt(*_):
    raise KeyboardInterrupt


class SeatProcs:
    """The seat processes of one variant: a line of JSON in, a line of JSON out."""

    def __init__(self, work, master, key_dirs, overrides, per_proc, root):
        from harness import saltconf  # pylint: disable=import-outside-toplevel

        conf = saltconf.tc_minion_template(master="127.0.0.1")
        conf.update(overrides, master_port=master.master.config["ret_port"], user=master.master.lab.user,
                    publish_port=master.master.config["publish_port"], root_dir=str(work), log_level="warning")
        (work / "minion").write_text(yaml.safe_dump(conf))
        self.auth_timeout = conf["auth_timeout"]
        self.recon_default, self.recon_max = conf["recon_default"], conf["recon_max"]
        self.work, self.per_proc, self.root = work, per_proc, root
        self.procs = []
        if key_dirs:
            self.add(key_dirs)

    def add(self, key_dirs):
        """Start processes for more seats (a ramp step); returns the new processes (they have not signed in)."""
        from harness.proc import spawn  # pylint: disable=import-outside-toplevel

        work = self.work
        seats = sorted(key_dirs)
        new = []
        for first in range(0, len(seats), self.per_proc):
            chunk = seats[first : first + self.per_proc]
            tag = chunk[0].rsplit("-", 1)[1]
            spec = {"minion_conf": str(work / "minion"), "run_dir": str(work), "root": str(self.root),
                    "indices": [int(s.rsplit("-", 1)[1]) for s in chunk],
                    "pki_dirs": [str(swarm_keys.pki_dir(key_dirs[s], work / "pki")) for s in chunk]}  # fmt: skip
            path = work / f"spec-{tag}.json"
            path.write_text(json.dumps(spec))
            with open(work / f"seats-{tag}.log", "ab") as log:
                proc = spawn([sys.executable, "-m", "bench.swarm_seat", str(path)], None, cwd=str(CHECKOUT),
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=log, text=True)  # fmt: skip
            new.append(proc)
        self.procs.extend(new)
        for proc in new:
            if "ready" not in json.loads(proc.stdout.readline() or '{"error": "seat process died"}'):
                self.drop(new)
                raise RuntimeError(f"a seat process died at start (see {work}/seats-*.log)")
        return new

    def drop(self, procs):
        """Stop ``procs`` (a failed ramp step) so the later phases run on the seats that were reached."""
        from harness.proc import stop_groups  # pylint: disable=import-outside-toplevel

        for proc in procs:
            try:
                proc.stdin.write('{"cmd": "quit"}\n')
                proc.stdin.flush()
            except OSError:
                pass
        stop_groups(procs, grace=10)
        self.procs = [p for p in self.procs if p not in procs]

    def ask(self, cmd, procs=None):
        """Send ``cmd`` to every seat process (or ``procs``) at once; their answers, merged."""
        procs = self.procs if procs is None else procs
        for proc in procs:
            proc.stdin.write(json.dumps(cmd) + "\n")
            proc.stdin.flush()
        answers = [json.loads(proc.stdout.readline() or '{"error": "seat process died"}') for proc in procs]
        errors = [a["error"] for a in answers if "error" in a]
        if errors:
            raise RuntimeError(f"seat process: {errors[0]}")
        return answers

    def summed(self, cmd, procs=None):
        answers = self.ask(cmd, procs)
        out = {k: sum(a[k] for a in answers) for k in ("ok", "failed", "stuck")}
        out["wall_s"] = round(max(a["wall_s"] for a in answers), 1)
        lat = [a.get("latency_max_s") for a in answers if a.get("latency_max_s") is not None]
        if lat:
            out["latency_max_s"] = round(max(lat), 3)
            p50 = sorted(a["latency_p50_s"] for a in answers if a.get("latency_p50_s") is not None)
            out["latency_p50_s"] = round(p50[len(p50) // 2], 3)  # a process whose seats all failed has none
        return out

    def stats(self):
        merged = {}
        for answer in self.ask({"cmd": "stats"}):
            merged.update(answer)
        return merged

    def stop(self):
        from harness.proc import stop_groups  # pylint: disable=import-outside-toplevel

        for proc in self.procs:
            try:
                proc.stdin.write('{"cmd": "quit"}\n')
                proc.stdin.flush()
            except OSError:
                pass
        stop_groups(self.procs, grace=10)


def _parser():
    parser = argparse.ArgumentParser(prog="python -m bench.swarm", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    parser.add_argument("--seats", type=int, default=200)
    parser.add_argument("--sizes", default="", help="a ramp in one run, e.g. 1000,2500,5000,10000 (overrides --seats)")
    parser.add_argument("--no-rotation", action="store_true", help="skip the AES key rotation phase")
    parser.add_argument("--per-process", type=int, default=250,
                        help="seats per simulator process (about 4,000 descriptors each; 5 threads)")
    parser.add_argument("--login-window", type=float, default=30.0, help="seconds over which seats first sign in")
    parser.add_argument("--steady", type=float, default=60.0, help="seconds of steady state (one heartbeat per seat)")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="seconds with every seat connected and none sending, at the largest size (0: skip)")
    parser.add_argument("--storm-window", type=float, default=60.0, help="seconds for one status change per seat")
    parser.add_argument("--reauth-deadline", type=float, default=240.0, help="max seconds to wait for re-auth")
    parser.add_argument("--variants", default="default,shipped",
                        help="comma-separated: default (Salt's sign-in values on the seats), shipped, "
                             "salt_master (shipped seats, Salt's worker pool and zmq_backlog on the master)")
    parser.add_argument("--nofile", type=int, default=0,
                        help="open-file limit (soft and hard) for the master and seats; 0: as inherited. "
                             "Production sets LimitNOFILE; raising the hard limit needs root")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores)")
    return parser


def main(argv=None):
    from harness import tcroot  # pylint: disable=import-outside-toplevel
    from harness.lab import Lab, stop_daemons  # pylint: disable=import-outside-toplevel

    parser = _parser()
    args = parser.parse_args(argv)
    unknown = [v for v in args.variants.split(",") if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {', '.join(unknown)} (known: {', '.join(VARIANTS)})")
    args.sizes = args.sizes or str(args.seats)
    args.seats = max(int(x) for x in args.sizes.split(","))
    if args.nofile:
        hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (args.nofile, args.nofile))
        except ValueError:
            parser.error(f"--nofile {args.nofile}: above this box's hard limit {hard} (raising it needs CAP_SYS_RESOURCE)")
    signal.signal(signal.SIGTERM, _interrupt)
    started = time.time()
    base = pathlib.Path(tempfile.mkdtemp(prefix="dfs-"))
    say(f"deskfleet swarm bench: {args.sizes} seats, {args.per_process} per process; lab in {base}; "
        f"load {os.getloadavg()[0]:.1f}; open-file limit {resource.getrlimit(resource.RLIMIT_NOFILE)}")
    limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if limit < 2 * args.seats + 100:  # in a storm the master's request router holds two per seat
        say(f"   NOTE: open-file limit {limit} is under 2 x {args.seats} seats: the storms will wait on it (--nofile)")
    key_dirs = swarm_keys.ensure(args.seats, say)
    args.root = tcroot.make(base / "root", 1, session=("desk-0001", "connected"))
    results = {}
    lab = Lab(base)
    try:
        for name in args.variants.split(","):
            try:
                results[name] = swarm_phases.run_variant(lab, name, VARIANTS[name], key_dirs, args, SeatProcs)
            except Exception as exc:  # pylint: disable=broad-except
                say(f"   {name} FAILED: {exc!r}")
                results[name] = {"error": repr(exc)}
            finally:
                stop_daemons(lab.daemons, timeout=20)
    finally:
        stop_daemons(lab.daemons, timeout=20)
        if args.keep:
            say(f"   kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    wall = time.time() - started
    out = swarm_report.summary(results, args, wall)
    out_dir = CHECKOUT / "bench" / "results"
    out_dir.mkdir(exist_ok=True)
    (out_dir / f"swarm-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps({"summary": out, "detail": results, "args": {k: str(v) for k, v in vars(args).items()}}, indent=1)
    )
    print(json.dumps(out), flush=True)
    return 1 if any("error" in r or "phase_failed" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
