"""
``make bench-ingest`` / ``python -m bench.ingest``: thin-client asset ingestion
on the tc master, four paths side by side in one run, on this box, with the
same firehose (``bench/_modules/tc_firehose.py``: real salt-minions sending
signed ``tc_status`` beacon events, one event per request, as the beacon does).

1. bus          - a master WITHOUT the tc_ingest engine; a bare listener on the
                  master event bus counts the events. Nothing stores anything.
                  Its rate is what the request-at-a-time minions offer, not a
                  master limit.
2. naive        - reactor -> runner per event (``bench/reactor/tc_naive.sls`` ->
                  ``bench/_runners/tc_naive.py``), same store and validation.
3. deskfleet    - the shipped config: the tc_ingest engine, batches by size/time.
                  Plus a tail probe: a partial batch with nothing after it must
                  be stored on the engine's own timer.
4. store only   - signed events fired straight onto the deskfleet master's bus
                  (no minion transport): how fast the engine validates and stores.
                  Compared with the same firehose counted by the bare listener on
                  the engine-less master (direct-fire bus rate), and with the
                  engine draining a queued backlog (engine paused while firing).

Bus and deskfleet run in interleaved rounds (both masters up, idle one waits),
the median of each is reported; then store only; then naive on its own master.
On the storing paths the path's consumer is the only one on the bus (no probe
listener): the start is the first send by a minion, the end the last increase
of the store's ``accepted`` counter. Every daemon is stopped on exit. The last
line of output is one JSON object, led by master CPU per event on the engine path
and on the naive path (the fair comparison: a few minions cannot offer a master
its limit, so no seats-per-master figure is derived from these rates).

Files: ``ingest_lab`` (daemons, firehose), ``ingest_paths`` (the paths),
``ingest_probe`` (helper processes), ``ingest_store`` (store and CPU readings),
``ingest_summary`` (the summary and the JSON line).
"""

import argparse
import faulthandler
import json
import os
import pathlib
import shutil
import signal
import sys
import tempfile
import time

from bench import ingest_probe as probe

CHECKOUT = pathlib.Path(__file__).resolve().parents[1]


def _interrupt(*_):
    raise KeyboardInterrupt


def _parser():
    parser = argparse.ArgumentParser(prog="python -m bench.ingest", description=__doc__.split("\n\n")[0], allow_abbrev=False)
    sub = parser.add_subparsers(dest="cmd")
    parser.add_argument("--minions", type=int, default=4)
    parser.add_argument("--events", type=int, default=3000, help="events per minion path (bus, deskfleet)")
    parser.add_argument("--naive-events", type=int, default=None, help="events on the naive path (default: --events)")
    parser.add_argument("--store-events", type=int, default=4000)
    parser.add_argument("--firers", type=int, default=3, help="processes firing the store-only events")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the bus/deskfleet/store-only paths (median)")
    parser.add_argument("--naive-cap", type=float, default=150.0, help="max seconds to wait for the naive path")
    parser.add_argument("--naive-hwm", type=int, default=None, help="reactor_worker_hwm on the naive master (Salt default 10000)")
    parser.add_argument("--naive-threads", type=int, default=None, help="reactor_worker_threads (Salt default 10)")
    parser.add_argument("--only", default="bus,naive,deskfleet", help="paths to run (store-only runs with deskfleet)")
    parser.add_argument("--keep", action="store_true", help="keep the temp dir (logs, stores) afterwards")
    lp = sub.add_parser("_listen")
    for name in ("--master-conf", "--out", "--ready"):
        lp.add_argument(name, required=True)
    lp.add_argument("--expect", type=int, required=True)
    lp.add_argument("--returns", type=int, default=0)
    lp.add_argument("--idle", type=float, default=8.0)
    lp.add_argument("--deadline", type=float, default=300.0)
    fp = sub.add_parser("_fire")
    for name in ("--master-conf", "--out", "--ready"):
        fp.add_argument(name, required=True)
    fp.add_argument("--count", type=int, required=True)
    fp.add_argument("--start-seq", type=int, default=1)
    fp.add_argument("--go", default=None, help="fire only once this file exists")
    fp.add_argument("--key", action="append", required=True, help="seat=path/to/minion.pem")
    return parser


def main(argv=None):
    args = _parser().parse_args(argv)
    if args.cmd == "_listen":
        return probe.listen(args)
    if args.cmd == "_fire":
        return probe.fire(args)
    # the lab side is imported only here: the helper processes above stay light
    from bench.ingest_paths import IngestBench, say  # pylint: disable=import-outside-toplevel
    from bench.ingest_store import foreign_salt  # pylint: disable=import-outside-toplevel
    from bench.ingest_summary import summary  # pylint: disable=import-outside-toplevel
    from harness.lab import stop_daemons  # pylint: disable=import-outside-toplevel

    signal.signal(signal.SIGTERM, _interrupt)
    faulthandler.register(signal.SIGUSR1)  # kill -USR1 <pid>: where is it?
    per_minion = max(1, args.events // args.minions)
    naive_per_minion = max(1, (args.naive_events or args.events) // args.minions)
    started = time.time()
    base = pathlib.Path(tempfile.mkdtemp(prefix="dfb-"))
    say(f"deskfleet ingest bench: {args.minions} minions, {per_minion * args.minions} events per minion path "
        f"({naive_per_minion * args.minions} naive), {args.store_events} store-only; lab in {base}")
    foreign = foreign_salt(base)
    if foreign:
        say(f"   WARNING: {foreign} other salt processes are running on this box: rates are pessimistic")
    bench = IngestBench(base, args.minions, per_minion, naive_per_minion, args.store_events, args.naive_cap, args.firers, args.rounds)
    for key, value in (("reactor_worker_hwm", args.naive_hwm), ("reactor_worker_threads", args.naive_threads)):
        if value is not None:
            bench.naive_opts[key] = value
    bench.results["box"] = {"load_avg_at_start": os.getloadavg()[0], "foreign_salt_procs_at_start": foreign}
    try:
        bench.run(set(args.only.split(",")))
    finally:
        # helpers first (they hold bus connections), then every daemon of the lab
        probe.reap_all()
        stop_daemons(bench.lab.daemons, timeout=12)
        if args.keep:
            say(f"   kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)
    wall = time.time() - started
    result = summary(bench, wall)
    results = CHECKOUT / "bench" / "results"
    results.mkdir(exist_ok=True)
    (results / f"ingest-{time.strftime('%Y%m%dT%H%M%S')}.json").write_text(
        json.dumps({"summary": result, "detail": bench.results, "wall_s": round(wall, 1)}, indent=1, default=str)
    )
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
