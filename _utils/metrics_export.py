"""
Publish deskfleet's snapshot through Salt's own metrics layer (``salt.utils.metrics``, Salt 3008).

Salt builds one ``MeterProvider`` per process and, with ``exporter: prometheus``, binds its
``/metrics`` listener in whichever process configures first: the master parent takes the port
of the master's ``metrics:`` block and every MWorker that configures after it fails to bind.
deskfleet's numbers are therefore published from ONE process per master, the
``deskfleet_metrics`` engine, with a block of its own (``deskfleet:metrics``, same keys as
Salt's ``metrics:``) and its own port: no fight with Salt's listener or the other master.

Each metric of :data:`metrics_collect.SPECS` is one observable instrument whose callback
reads the latest snapshot (gauges: ``observable_gauge``; store totals: ``observable_counter``).
"""

import logging
import threading

import metrics_collect

log = logging.getLogger(__name__)

DEFAULTS = {
    "enabled": True,
    "exporter": "prometheus",
    "prometheus": {"host": "127.0.0.1", "port": 9465},
    "export_interval_seconds": 60,
    "service_name": "deskfleet",
}


def settings(block, role):
    """Salt's ``metrics:`` keys from ``deskfleet:metrics`` over :data:`DEFAULTS` (service named per role)."""
    block = dict(block or {})
    conf = {**DEFAULTS, "service_name": f"deskfleet-{role}"}
    for key in ("enabled", "exporter", "endpoint", "headers", "insecure", "export_interval_seconds",
                "resource_attributes", "service_name"):
        if key in block:
            conf[key] = block[key]
    conf["prometheus"] = {**DEFAULTS["prometheus"], **(block.get("prometheus") or {})}
    return conf


class Publisher:
    """Holds the newest snapshot; Salt's metric reader pulls it through the instruments' callbacks."""

    def __init__(self):
        self._lock = threading.Lock()
        self._snapshot = {}
        self.registered = False

    def update(self, snapshot):
        with self._lock:
            self._snapshot = dict(snapshot)

    def samples(self, name):
        with self._lock:
            return list(self._snapshot.get(name, ()))

    def start(self, metrics_conf, opts):
        """
        Configure Salt's metrics layer in this process and register every instrument.
        Returns None, or why nothing is published (disabled, no opentelemetry, port taken).
        """
        import salt.utils.metrics as salt_metrics  # pylint: disable=import-outside-toplevel

        # a provider inherited through fork (the master parent's) would serve the parent's
        # instruments from this process too: drop it, then build ours
        salt_metrics.shutdown()
        salt_metrics.configure({"metrics": metrics_conf, "__role": opts.get("__role") or "master",
                                "id": opts.get("id")})
        if not metrics_conf.get("enabled"):
            return "disabled (deskfleet:metrics:enabled is false)"
        meter = salt_metrics.get_meter()
        if meter is None:
            return "opentelemetry is not importable"
        if metrics_conf.get("exporter") == "prometheus" and getattr(salt_metrics, "_prometheus_server_thread", 1) is None:
            port = metrics_conf["prometheus"]
            salt_metrics.shutdown()  # so the next start() binds again
            return f"could not bind the Prometheus listener on {port['host']}:{port['port']} (in use?)"
        self._register(meter)
        return None

    def _register(self, meter):
        from opentelemetry.metrics import Observation  # pylint: disable=import-outside-toplevel

        def callback_for(name):
            def observe(_options):
                return [Observation(value, labels) for labels, value in self.samples(name)]

            return observe

        for name, (kind, description, unit) in metrics_collect.SPECS.items():
            create = meter.create_observable_counter if kind == "counter" else meter.create_observable_gauge
            create(name, callbacks=[callback_for(name)], description=description, unit=unit)
        self.registered = True
