"""The master bus seen from a test: every event, collected in a thread while the ``with`` block runs."""

import threading

import salt.utils.event


class Bus:
    """``events``: every full event (``{"tag", "data"}``) in arrival order."""

    def __init__(self, master):
        self.events = []
        self.stop = threading.Event()
        self.bus = salt.utils.event.get_master_event(master.config, master.config["sock_dir"], listen=True)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            ev = self.bus.get_event(wait=0.2, full=True)
            if ev:
                self.events.append(ev)

    def tagged(self, tag):
        """The data of every event tagged exactly ``tag``."""
        return [e["data"] for e in list(self.events) if e["tag"] == tag]

    def runner_returns(self, fun):
        return [e["data"].get("return") for e in list(self.events) if e["tag"].endswith("/ret") and e["data"].get("fun") == fun]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.bus.destroy()
