"""
Installed versions against catalog versions: numeric parts compared as numbers
(``1.10 > 1.9``), trailing zeros ignored, a letter suffix a pre-release.
Runs on each desktop (``_modules/software.py``).
"""

import re

_TOKEN_RE = re.compile(r"\d+|[A-Za-z]+")


def _version_key(version):
    parts = [int(t) if t.isdigit() else t.lower() for t in _TOKEN_RE.findall(str(version))]
    while parts and parts[-1] == 0:  # 8.6.9 == 8.6.9.0
        parts.pop()
    return parts


def compare(left, right):
    """-1, 0, 1 like ``cmp``: numeric parts compared as numbers, ``1.10 > 1.9``, ``8.6.9 == 8.6.9.0``."""
    a, b = _version_key(left), _version_key(right)
    for x, y in zip(a, b):
        if x == y:
            continue
        if isinstance(x, int) and isinstance(y, int):
            return -1 if x < y else 1
        if isinstance(x, int):  # 1.0.1 > 1.0rc
            return 1
        if isinstance(y, int):
            return -1
        return -1 if x < y else 1
    longer_is_a = len(a) > len(b)
    rest = (a if longer_is_a else b)[min(len(a), len(b)):]
    for extra in rest:
        if extra == 0:
            continue
        # 1.0.1 > 1.0, but 1.0rc1 < 1.0 (a pre-release)
        bigger = isinstance(extra, int)
        return (1 if bigger else -1) * (1 if longer_is_a else -1)
    return 0
