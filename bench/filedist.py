"""
File distribution benchmark: one big file to N desktop minions through
``filedist.distribute`` on the vm master, over ``salt://`` (Salt's fileserver)
and over ``http://`` from a local server, side by side in one run.

Reports wall time and CPU seconds of the salt-master process tree (and of the
HTTP server for the HTTP path) per path, and the ratios.

    python -m bench.filedist [--mb 200] [--minions 10]
"""

import argparse
import hashlib
import http.server
import json
import multiprocessing
import os
import pathlib
import shutil
import tempfile
import time

import psutil

from harness.lab import Lab


def tree_cpu(pid):
    """CPU seconds (user + system) of a process and all its descendants."""
    total = 0.0
    try:
        procs = [psutil.Process(pid)]
        procs += procs[0].children(recursive=True)
    except psutil.NoSuchProcess:
        return 0.0
    for proc in procs:
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def make_file(path, mb):
    digest = hashlib.sha256()
    block = os.urandom(1024 * 1024)
    with open(path, "wb") as fh:
        for i in range(mb):
            chunk = block[:-8] + i.to_bytes(8, "big")  # distinct blocks, cheap to make
            fh.write(chunk)
            digest.update(chunk)
    return digest.hexdigest()


def serve(root, port_queue):
    handler = lambda *a, **k: http.server.SimpleHTTPRequestHandler(*a, directory=root, **k)  # noqa: E731
    http.server.SimpleHTTPRequestHandler.log_message = lambda *a: None
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    port_queue.put(httpd.server_address[1])
    httpd.serve_forever()


def run_path(master, label, source, sha, dest, minions, server_pid=None):
    m0, s0 = tree_cpu(master.proc.pid), tree_cpu(server_pid) if server_pid else 0.0
    t0 = time.time()
    ret = master.run(
        "filedist.distribute", "desk-*", source, dest, f"sha256={sha}", f"batch={minions}", "timeout=1800", timeout=3600
    )
    wall = time.time() - t0
    master_cpu = tree_cpu(master.proc.pid) - m0
    server_cpu = (tree_cpu(server_pid) - s0) if server_pid else 0.0
    ok = ret.get("succeeded") if isinstance(ret, dict) else None
    print(
        f"{label:>7}: {ok}/{minions} minions in {wall:6.1f} s wall; salt-master {master_cpu:6.2f} CPU s"
        + (f", http server {server_cpu:6.2f} CPU s" if server_pid else ""),
        flush=True,
    )
    if ok != minions:
        print(f"         failures: {json.dumps(ret)[:600]}")
    return {"wall": wall, "master_cpu": master_cpu, "server_cpu": server_cpu, "ok": ok}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mb", type=int, default=200)
    parser.add_argument("--minions", type=int, default=10)
    args = parser.parse_args(argv)
    base = pathlib.Path(tempfile.mkdtemp(prefix="dfbench-fd-"))
    server = None
    try:
        www = base / "www"
        www.mkdir()
        sha = make_file(www / "big.bin", args.mb)
        files = base / "files"
        (files / "bench").mkdir(parents=True)
        os.link(www / "big.bin", files / "bench" / "big.bin")
        queue = multiprocessing.Queue()
        server = multiprocessing.Process(target=serve, args=(str(www),), kwargs={"port_queue": queue}, daemon=True)
        server.start()
        port = queue.get(timeout=10)
        with Lab(base / "lab") as lab:
            vm = lab.master("vm-master", "vm")
            vm.config["file_roots"]["base"].append(str(files))
            (vm.conf_dir / "master").write_text(__import__("yaml").safe_dump(vm.config))
            vm.start()
            vm.wait_ready()
            ids = [f"desk-{i:04d}" for i in range(1, args.minions + 1)]
            for mid in ids:
                lab.minion(mid, vm, grains={"deskfleet_role": "desktop"}).start()
            for mid in ids:
                lab_wait_key(vm, mid)
            vm.wait_minions(ids, timeout=300)
            vm.salt("desk-*", "saltutil.sync_modules", timeout=120)
            print(f"file: {args.mb} MB, sha256 {sha[:16]}…, {args.minions} minions on one box", flush=True)
            results = {}
            for label, source in (("salt://", "salt://bench/big.bin"), ("http://", f"http://127.0.0.1:{port}/big.bin")):
                # every minion runs on this one box: give each its own destination
                dest = str(base / "dest" / label.strip(":/") / "{minion}" / "big.bin")
                results[label] = run_path(vm, label, source, sha, dest, args.minions, server.pid if label == "http://" else None)
                shutil.rmtree(base / "dest", ignore_errors=True)
        salt_, http_ = results["salt://"], results["http://"]
        ratio = lambda a, b: round(a / b, 2) if b > 0.005 else None  # noqa: E731
        summary = {
            "bench": "filedist",
            "mb": args.mb,
            "minions": args.minions,
            "salt_wall_s": round(salt_["wall"], 1),
            "http_wall_s": round(http_["wall"], 1),
            "salt_master_cpu_s": round(salt_["master_cpu"], 2),
            "http_master_cpu_s": round(http_["master_cpu"], 2),
            "http_server_cpu_s": round(http_["server_cpu"], 2),
            "wall_ratio_salt_over_http": ratio(salt_["wall"], http_["wall"]),
            "master_cpu_ratio_salt_over_http": ratio(salt_["master_cpu"], http_["master_cpu"]),
            "all_ok": salt_["ok"] == http_["ok"] == args.minions,
        }
        print(
            f"salt:// vs http://: wall x{summary['wall_ratio_salt_over_http']}, "
            f"salt-master CPU x{summary['master_cpu_ratio_salt_over_http']}"
        )
        print(json.dumps(summary))
    finally:
        if server is not None and server.is_alive():
            server.terminate()
            server.join(5)
        shutil.rmtree(base, ignore_errors=True)


def lab_wait_key(master, mid, timeout=120):
    deadline = time.time() + timeout
    while time.time() < deadline:
        keys = master.keys() or {}
        if mid in keys.get("minions", []):
            return
        if mid in keys.get("minions_pre", []):
            master.accept(mid)
            return
        time.sleep(1)
    raise TimeoutError(f"{mid} never asked for its key")


if __name__ == "__main__":
    main()
