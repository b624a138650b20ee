"""Parsing and formatting of human quantities: sizes (`512M`, `1G`), rates (`10M/s`) and CPU counts.

The same rules as `jobcore.units` (binary multiples: K = 1024), duplicated on purpose: jobclient is a
separate distribution and must not depend on jobcore. `tests/jobclient/test_units.py` pins the rules.
"""

from __future__ import annotations

import re

_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgtp]?)(i?b?)\s*$", re.IGNORECASE)
_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5}


def parse_size(text: str) -> int:
    """Parse a byte size: `1048576`, `512K`, `512M`, `1G`, `1.5GiB` (binary multiples: K = 1024).

    Raises ValueError naming the offending text on anything else (`-1M`, `12X`, `0.5` bytes).
    """
    m = _SIZE_RE.match(text)
    if not m:
        raise ValueError(f"invalid size {text!r}: expected a number with an optional K, M, G, T or P suffix")
    number, unit, _ = m.groups()
    value = float(number) * (1024 ** _POWERS[unit.lower()])
    if value != int(value):
        raise ValueError(f"invalid size {text!r}: not a whole number of bytes")
    return int(value)


def parse_rate(text: str) -> int:
    """Parse a bytes-per-second rate: `10M/s`, `10M`, `1G/s`."""
    stripped = text.strip()
    if stripped.lower().endswith("/s"):
        stripped = stripped[:-2]
    return parse_size(stripped)


def parse_cpu(text: str) -> float:
    """Parse a CPU amount in cores: `0.5`, `2`. Range checks belong to `Limits` (as in jobcore)."""
    try:
        value = float(text)
    except ValueError:
        raise ValueError(
            f"invalid CPU amount {text!r}: expected a number of cores such as 0.5 or 2"
        ) from None
    return value


def format_size(n: int) -> str:
    """Format bytes compactly with binary units: 1536 -> `1.5K`, 1073741824 -> `1G`."""
    value = float(n)
    for unit in ("", "K", "M", "G", "T"):
        if abs(value) < 1024 or unit == "T":
            text = f"{value:.1f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
        value /= 1024
    raise AssertionError("unreachable")
