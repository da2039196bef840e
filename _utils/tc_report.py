"""
The thin-client fleet report: one self-contained HTML file (inline CSS and
SVG, no scripts, no external assets), so it can be mailed or served as is.
"""

import collections
import datetime
import html

STATUS_COLOURS = {"online": "#2e7d32", "stale": "#f9a825", "offline": "#c62828"}


def counts(seats):
    """Counts of seats by status, firmware and site."""
    by_status = collections.Counter(s["status"] for s in seats)
    return {
        "total": len(seats),
        "by_status": {k: by_status.get(k, 0) for k in STATUS_COLOURS},
        "by_firmware": dict(sorted(collections.Counter(s["firmware"] or "unknown" for s in seats).items())),
        "by_site": dict(sorted(collections.Counter(s["site"] or "unknown" for s in seats).items())),
    }


def firmware_svg(by_firmware, width=560, bar=22):
    """A horizontal bar chart of seats per firmware version, as an inline SVG element."""
    esc = html.escape
    label_w, gap = 120, 6
    top = max(by_firmware.values(), default=1)
    height = max(1, len(by_firmware)) * (bar + gap) + gap
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'role="img" aria-label="Seats per firmware version">'
    ]
    for i, (version, n) in enumerate(by_firmware.items()):
        y = gap + i * (bar + gap)
        w = max(2, int((width - label_w - 60) * n / top))
        parts.append(
            f'<text x="{label_w - 8}" y="{y + bar * 0.7:.0f}" text-anchor="end">{esc(version)}</text>'
            f'<rect class="bar" x="{label_w}" y="{y}" width="{w}" height="{bar}"><title>{esc(version)}: {n}</title></rect>'
            f'<text x="{label_w + w + 6}" y="{y + bar * 0.7:.0f}">{n}</text>'
        )
    parts.append("</svg>")
    return "".join(parts)


def _ts(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")


def render(seats, now, heartbeat, offline_after):
    """The whole report as an HTML string."""
    esc = html.escape
    c = counts(seats)
    tiles = "".join(
        f'<div class="tile" style="border-color:{colour}"><b>{c["by_status"][status]}</b>{status}</div>'
        for status, colour in STATUS_COLOURS.items()
    )
    offline = [s for s in seats if s["status"] == "offline"]
    rows = "".join(
        "<tr>"
        + "".join(
            f"<td>{esc(str(v))}</td>"
            for v in (
                s["seat"],
                s["site"] or "",
                s["serial"] or "",
                s["mac"] or "",
                ", ".join(s["ips"]),
                s["firmware"] or "",
                _ts(s["last_seen"]),
            )
        )
        + "</tr>"
        for s in offline
    )
    offline_table = (
        "<table><tr><th>seat</th><th>site</th><th>serial</th><th>MAC</th><th>IP</th>"
        f"<th>firmware</th><th>last seen</th></tr>{rows}</table>"
        if offline
        else "<p>No seat is offline.</p>"
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>deskfleet: thin-client fleet report</title>
<style>
body{{font-family:sans-serif;margin:2em;color:#222}}
.tiles{{display:flex;gap:1em}} .tile{{border-left:6px solid;padding:.5em 1em;background:#f5f5f5}}
.tile b{{display:block;font-size:2em}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}} .bar{{fill:#1565c0}}
svg text{{font-size:12px}}
</style></head><body>
<h1>Thin-client fleet</h1>
<p>{c["total"]} seats, generated {_ts(now)}. Heartbeat {heartbeat:g} s; offline after {offline_after:g} missed heartbeats.</p>
<div class="tiles">{tiles}</div>
<h2>Firmware versions</h2>
{firmware_svg(c["by_firmware"])}
<h2>Offline seats ({len(offline)})</h2>
{offline_table}
</body></html>
"""


# ---- active users against the shift plan (salt-run activity.report) ---------------------


def _path(points, x, y):
    return " ".join(f"{'M' if i == 0 else 'L'}{x(t):.1f},{y(v):.1f}" for i, (t, v) in enumerate(points))


def activity_svg(site, points, start, end, width=720, height=200):
    """
    Active seats (solid) against planned (dashed, a step line) over ``[start, end)``
    for one site, as an inline SVG element. ``points``: ``[(bucket, active, expected or None)]``.
    """
    esc = html.escape
    left, right, top, bottom = 44, 10, 10, 24
    peak = max([1] + [p[1] for p in points] + [p[2] for p in points if p[2] is not None])
    span = max(1.0, end - start)

    def x(t):
        return left + (width - left - right) * (t - start) / span

    def y(v):
        return top + (height - top - bottom) * (1 - v / peak)

    actual = _path([(t, a) for t, a, _ in points], x, y)
    planned, segment = [], []
    for t, _, e in points:  # a hole in the plan breaks the dashed line
        if e is None:
            planned.append(segment)
            segment = []
        else:
            segment.append((t, e))
    planned.append(segment)
    plan_paths = "".join(f'<path class="plan" d="{_path(s, x, y)}"/>' for s in planned if s)
    ticks = "".join(
        f'<text x="{x(start + h * 3600):.0f}" y="{height - 6}" text-anchor="middle">{h:02d}</text>'
        for h in range(0, 25, 3) if start + h * 3600 <= end
    )
    return (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" role="img" '
        f'aria-label="Active against planned seats at {esc(site)}">'
        f'<text x="{left - 6}" y="{top + 10}" text-anchor="end">{peak}</text>'
        f'<text x="{left - 6}" y="{height - bottom}" text-anchor="end">0</text>{ticks}'
        f'<line class="axis" x1="{left}" y1="{height - bottom}" x2="{width - right}" y2="{height - bottom}"/>'
        f'{plan_paths}<path class="actual" d="{actual}"/></svg>'
    )


def render_activity(sites, now, start, end, rows):
    """
    The active-users page: per site a chart of the day and the live table.
    ``sites``: ``{site: points}``; ``rows``: ``activity.now`` rows. Every name a seat
    reported is escaped.
    """
    esc = html.escape
    charts = "".join(
        f"<h2>{esc(site)}</h2>{activity_svg(site, points, start, end)}" for site, points in sites.items()
    ) or "<p>No active-user series for this day yet.</p>"
    cols = ("site", "department", "online", "connected", "active", "idle", "expected", "deviation", "alert")
    body = "".join(
        "<tr" + (' class="alert"' if r.get("alert") == "firing" else "") + ">"
        + "".join(f"<td>{esc('' if r.get(c) is None else str(r.get(c)))}</td>" for c in cols) + "</tr>"
        for r in rows
    )
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>deskfleet: active users against the shift plan</title>
<style>
body{{font-family:sans-serif;margin:2em;color:#222}} table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:.25em .6em;text-align:left}} tr.alert td{{background:#ffebee}}
svg text{{font-size:11px}} .actual{{fill:none;stroke:#1565c0;stroke-width:2}}
.plan{{fill:none;stroke:#ef6c00;stroke-width:2;stroke-dasharray:6 4}} .axis{{stroke:#999}}
</style></head><body>
<h1>Active users against the shift plan</h1>
<p>{_ts(start)} to {_ts(end)}, generated {_ts(now)}. Solid: active seats; dashed: planned.</p>
{charts}
<h2>Now</h2>
<table><tr>{"".join(f"<th>{c}</th>" for c in cols)}</tr>{body}</table>
</body></html>
"""
