"""Collect events of a test master's bus in a thread (``with Events(master) as bus: ... bus.events``)."""

import threading

import salt.utils.event


class Events:
    """Every ``(tag, data)`` whose tag starts with ``prefix``, in arrival order."""

    def __init__(self, master, prefix="deskfleet/alert/"):
        self.prefix, self.events, self.stop = prefix, [], threading.Event()
        self.bus = salt.utils.event.get_master_event(master.config, master.config["sock_dir"], listen=True)
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self):
        while not self.stop.is_set():
            ev = self.bus.get_event(wait=0.2, full=True)
            if ev and ev["tag"].startswith(self.prefix):
                self.events.append((ev["tag"], ev["data"]))

    def tagged(self, tag):
        return [data for t, data in self.events if t == tag]

    def __enter__(self):
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join(5)
        self.bus.destroy()
