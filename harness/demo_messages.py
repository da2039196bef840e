"""
Demo (called from ``harness/demo.py`` once the seats are in the inventory): a
site-wide notice from the tc master to the LON seats while their desktops are
unreachable, delivered as the notice file each seat's kiosk session shows; the
rate limit refusing a repeat; the audit of who sent what to whom.
"""

import json


def say(text=""):
    print(text, flush=True)


def main(tc, seat_roots):
    """``tc``: the running tc master (harness.lab.Master); ``seat_roots``: the seats' lab roots by seat id."""
    say("\n== Messages: a site-wide notice to the LON seats (tc master, seat_notice on each thin client)")
    tc.salt("tc-*", "saltutil.sync_modules", timeout=120)
    text = "Desktops in LON are unreachable; IT is on it. Please wait at your seat."
    sent = tc.run("message.send", "tc-*", text, "site=LON", "seconds=1800")
    say(f"   salt-run message.send 'tc-*' '{text[:30]}…' site=LON -> {json.dumps(sent.get('counts', sent))}")
    for seat, verdict in sorted((sent.get("targets") or {}).items()):
        notice = seat_roots / seat / "run" / "deskfleet" / "seat-notice.json"
        shown = json.loads(notice.read_text())["text"] if notice.exists() else "(no notice file)"
        say(f"   {seat}: {verdict['result']}; its kiosk shows: {shown!r}")
    limit = 3
    for _ in range(limit):
        again = tc.run("message.send", "tc-lon-0001", "Update: still working on it.")
    say(f"   repeated {limit} more times to tc-lon-0001: the last -> {again['targets']['tc-lon-0001']['detail']!r}"
        f" (exit code 1, alert deskfleet/alert/message)")
    too_long = tc.run("message.send", "tc-lon-0001", "x" * 300)
    say(f"   300 characters -> {too_long.get('error')!r}")
    rows = tc.run("message.audit", "limit=4")
    say("   salt-run message.audit limit=4:")
    for row in rows:
        say(f"     {row['target']:<12} {row['result']:<9} by {row['sender']}: {row['text'][:40]!r}")
