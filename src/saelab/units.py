"""Human sizes and durations, parsed from flags and printed in tables."""

from __future__ import annotations

import re

from saelab.errors import SaelabError

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "t": 1000**4,
    "tb": 1000**4,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
}


def parse_size(text: str | int | float | None, flag: str = "size") -> int | None:
    """Parse '4GB', '512MiB', '1.5g' or a plain byte count; None and '' mean no limit."""
    if text is None:
        return None
    if isinstance(text, (int, float)):
        return int(text)
    s = text.strip().lower().replace(" ", "")
    if s in ("", "none", "inf", "unlimited"):
        return None
    m = re.fullmatch(r"([0-9]*\.?[0-9]+)([a-z]*)", s)
    if not m or m.group(2) not in _UNITS:
        raise SaelabError(f"{flag} {text!r} is not a size: write it like 8GB, 512MiB or 2.5G")
    return int(float(m.group(1)) * _UNITS[m.group(2)])


def format_bytes(n: float | None) -> str:
    """Binary units, three significant digits: '1.21 GiB'."""
    if n is None:
        return "-"
    n = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1000 or unit == "TiB":
            if unit == "B":
                return f"{int(n)} B"
            return f"{n:.3g} {unit}"
        n /= 1024
    return f"{n:.3g} TiB"


def format_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    if s < 1:
        return f"{s * 1000:.0f} ms"
    if s < 90:
        return f"{s:.1f} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"
