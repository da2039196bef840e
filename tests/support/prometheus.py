"""
A real Prometheus (Debian package ``prometheus``) for a test: its own config, data dir and
port in a temp dir, stopped with its process group at the end. Skips (naming the package)
where the binary is missing.
"""

import contextlib
import json
import shutil
import urllib.parse
import urllib.request

import pytest
import yaml

from harness import proc
from harness.lab import free_port
from harness.wait import wait_for


class Prometheus:
    def __init__(self, url, process):
        self.url, self.process = url, process

    def api(self, path, **params):
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=10) as resp:
            body = json.load(resp)
        assert body["status"] == "success", body
        return body["data"]

    def query(self, promql):
        """``[(labels, float value)]`` of an instant query."""
        return [(r["metric"], float(r["value"][1])) for r in self.api("query", query=promql)["result"]]

    def targets_up(self):
        """{scrape url: health} of the active targets."""
        return {t["scrapeUrl"]: t["health"] for t in self.api("targets")["activeTargets"]}


@contextlib.contextmanager
def running(tmp_path, targets, interval="2s"):
    """Prometheus scraping ``targets`` ({job: "host:port"}) every ``interval``; yields :class:`Prometheus`."""
    binary = shutil.which("prometheus")
    if binary is None:
        pytest.skip("prometheus is not installed (Debian package prometheus, tools/apt-packages.txt)")
    tmp_path.mkdir(parents=True, exist_ok=True)
    conf = {
        "global": {"scrape_interval": interval, "evaluation_interval": interval},
        "scrape_configs": [{"job_name": job, "static_configs": [{"targets": [addr]}]} for job, addr in targets.items()],
    }
    (tmp_path / "prometheus.yml").write_text(yaml.safe_dump(conf))
    port = free_port()
    argv = [binary, f"--config.file={tmp_path / 'prometheus.yml'}", f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}"]
    process = proc.spawn(argv, log_path=tmp_path / "prometheus.log", cwd=tmp_path)
    try:
        prom = Prometheus(f"http://127.0.0.1:{port}", process)

        def ready():
            try:
                with urllib.request.urlopen(f"{prom.url}/-/ready", timeout=5) as resp:
                    return resp.status == 200
            except OSError:
                return False

        wait_for(ready, timeout=60, what="prometheus ready", proc=process)
        yield prom
    finally:
        proc.stop_group(process)
