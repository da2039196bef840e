"""
The shift plan: expected active seats per site and department per time slot,
as ops export it from a workforce tool (CSV), checked before anything uses it.

Format (one header line; column order free; extra columns ignored; ``,`` or
``;`` as separator; a UTF-8 BOM is accepted)::

    site,department,start,end,expected
    LON,sales,2026-11-30T08:00:00+00:00,2026-11-30T12:00:00+00:00,40
    LON,sales,2026-11-30T12:00:00+00:00,2026-11-30T18:00:00+00:00,25

``start``/``end`` are ISO 8601 times WITH an offset (``Z`` or ``+01:00``): a
plan crosses time zones and daylight-saving changes, so a naive time is
refused. ``expected`` is a whole number of active seats (0 for closed hours).

Rules, each broken one an error naming the CSV line and the field:
- site and department must be known (``deskfleet:tc:activity:sites``, else
  the pairs the inventory has seen);
- ``end`` after ``start``; ``expected`` a whole number in [0, 100000];
- per site and department the slots cover the plan's whole span (earliest
  start to latest end) without gap or overlap: a closed floor is a slot with
  ``expected`` 0, never a hole.

Pure functions; the caller reads the file and holds the store.
"""

import bisect
import csv
import datetime
import hashlib
import io

COLUMNS = ("site", "department", "start", "end", "expected")
MAX_BYTES = 8 * 1024 * 1024
MAX_ROWS = 200_000
MAX_EXPECTED = 100_000
MAX_ERRORS = 50  # listed; the count says how many more


class PlanError(ValueError):
    """A plan that cannot be used; ``errors`` lists ``{"row", "field", "error"}``."""

    def __init__(self, errors, total=None):
        self.errors = errors[:MAX_ERRORS]
        self.total = total if total is not None else len(errors)
        first = "; ".join(describe(e) for e in self.errors[:3])
        more = f" (and {self.total - 3} more)" if self.total > 3 else ""
        super().__init__(f"shift plan refused, {self.total} error(s): {first}{more}")


def describe(err):
    where = f"row {err['row']}" if err.get("row") else "file"
    return f"{where}, {err['field']}: {err['error']}" if err.get("field") else f"{where}: {err['error']}"


def digest(data):
    return hashlib.sha256(data).hexdigest()


def _time(text):
    when = datetime.datetime.fromisoformat(text.strip())
    if when.tzinfo is None:
        raise ValueError("has no UTC offset (write 2026-11-30T08:00:00+00:00 or ...Z)")
    return when.timestamp()


def _expected(text):
    value = int(text.strip())
    if not 0 <= value <= MAX_EXPECTED:
        raise ValueError(f"must be between 0 and {MAX_EXPECTED}")
    return value


def _reader(data):
    if len(data) > MAX_BYTES:
        raise PlanError([{"row": None, "field": None, "error": f"file of {len(data)} bytes is over {MAX_BYTES}"}])
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise PlanError([{"row": None, "field": None, "error": f"not UTF-8 text ({exc.reason} at byte {exc.start})"}])
    first = text.split("\n", 1)[0]
    delimiter = ";" if ";" in first and "," not in first else ","
    reader = csv.DictReader(io.StringIO(text, newline=""), delimiter=delimiter)
    names = [(n or "").strip().lower() for n in (reader.fieldnames or [])]
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise PlanError([{"row": 1, "field": c, "error": "column missing from the header"} for c in missing])
    reader.fieldnames = names
    return reader


def _row(line, raw, known):
    """One CSV row → ``(slot, errors)``; slot is ``(site, department, start, end, expected, line)``."""
    errors, values = [], {}
    cells = {c: (raw.get(c) or "").strip() for c in COLUMNS}
    for field in ("site", "department"):
        if not cells[field]:
            errors.append({"row": line, "field": field, "error": "is empty"})
    site, dept = cells["site"], cells["department"]
    if site and dept and known is not None:
        if site not in known:
            errors.append({"row": line, "field": "site", "error": f"unknown site {site[:64]!r}"
                           f" (known: {', '.join(sorted(known)[:20]) or 'none'})"})
        elif dept not in known[site]:
            errors.append({"row": line, "field": "department", "error": f"unknown department {dept[:64]!r} at"
                           f" site {site} (known: {', '.join(sorted(known[site])[:20]) or 'none'})"})
    for field, parse in (("start", _time), ("end", _time), ("expected", _expected)):
        try:
            values[field] = parse(cells[field])
        except ValueError as exc:
            shown = cells[field][:40]
            errors.append({"row": line, "field": field, "error": f"{shown!r} {exc}" if "must" in str(exc)
                           or "offset" in str(exc) else f"{shown!r} is not a valid {field}"})
    if "start" in values and "end" in values and values["end"] <= values["start"]:
        errors.append({"row": line, "field": "end", "error": "is not after start"})
    if errors:
        return None, errors
    return (site, dept, values["start"], values["end"], values["expected"], line), []


def _iso(epoch):
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _coverage(slots, span):
    """Gaps and overlaps of one pair's slots (sorted by start) over the plan's ``span``."""
    errors = []
    first, last = slots[0], slots[-1]
    if first[2] > span[0]:
        errors.append({"row": first[5], "field": "start", "error": f"gap: {first[0]}/{first[1]} has no slot from"
                       f" {_iso(span[0])} (the plan's start) to {_iso(first[2])}"})
    for prev, cur in zip(slots, slots[1:]):
        if cur[2] < prev[3]:
            errors.append({"row": cur[5], "field": "start", "error": f"overlap: starts {_iso(cur[2])}, before row"
                           f" {prev[5]} of {cur[0]}/{cur[1]} ends ({_iso(prev[3])})"})
        elif cur[2] > prev[3]:
            errors.append({"row": cur[5], "field": "start", "error": f"gap: {cur[0]}/{cur[1]} has no slot from"
                           f" {_iso(prev[3])} (end of row {prev[5]}) to {_iso(cur[2])}"})
    if last[3] < span[1]:
        errors.append({"row": last[5], "field": "end", "error": f"gap: {last[0]}/{last[1]} has no slot from"
                       f" {_iso(last[3])} to {_iso(span[1])} (the plan's end)"})
    return errors


def parse(data, known=None):
    """
    Check a plan file's bytes. ``known`` maps site → set of departments (None:
    no check). Returns ``{"slots": [...], "start", "end", "pairs", "digest"}``
    or raises :class:`PlanError` listing every broken row (nothing is partly used).
    """
    reader = _reader(data)
    slots, errors, broken = [], [], set()
    for raw in reader:
        if reader.line_num > MAX_ROWS + 1:
            errors.append({"row": reader.line_num, "field": None, "error": f"more than {MAX_ROWS} rows"})
            break
        if not any((v or "").strip() for v in raw.values() if isinstance(v, str)):
            continue  # blank line
        slot, bad = _row(reader.line_num, raw, known)
        errors.extend(bad)
        if bad:
            broken.add(((raw.get("site") or "").strip(), (raw.get("department") or "").strip()))
        if slot:
            slots.append(slot)
    if not slots and not errors:
        errors.append({"row": None, "field": None, "error": "the plan has no slot"})
    if slots:  # coverage of the good rows too: one pass lists every kind of error
        span = (min(s[2] for s in slots), max(s[3] for s in slots))
        by_pair = {}
        for slot in sorted(slots, key=lambda s: (s[0], s[1], s[2], s[5])):
            by_pair.setdefault((slot[0], slot[1]), []).append(slot)
        for pair, pair_slots in by_pair.items():
            if pair not in broken:  # a broken row would only show up again as a gap
                errors.extend(_coverage(pair_slots, span))
    if errors:
        errors.sort(key=lambda e: (e["row"] or 0, e["field"] or ""))
        raise PlanError(errors)
    return {"slots": slots, "start": span[0], "end": span[1], "pairs": sorted(by_pair), "digest": digest(data)}


class Lookup:
    """Expected active seats of a pair at a time, from stored slots ``(site, dept, start, end, expected)``."""

    def __init__(self, slots):
        self.by_pair = {}
        for site, dept, start, end, expected in sorted(slots, key=lambda s: s[2]):
            self.by_pair.setdefault((site, dept), ([], []))
            starts, rest = self.by_pair[(site, dept)]
            starts.append(start)
            rest.append((end, expected))

    def pairs(self):
        return list(self.by_pair)

    def expected(self, pair, when):
        """The slot's ``expected`` at ``when``, or None outside the plan."""
        found = self.by_pair.get(pair)
        if not found:
            return None
        starts, rest = found
        i = bisect.bisect_right(starts, when) - 1
        if i < 0 or when >= rest[i][0]:
            return None
        return rest[i][1]
