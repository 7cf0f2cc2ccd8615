"""Which of an SAE's features a user means: `features` "645,1170,3-7" as sorted unique ids."""

from __future__ import annotations

from collections.abc import Sequence

from saelab.errors import SaelabError


def parse_features(spec: str | Sequence[int] | None, d_sae: int | None = None) -> list[int] | None:
    """`features` "645,1170,3-7" -> sorted unique ids; out of range is a one-line error."""
    if spec is None or spec == "":
        return None
    items: list[int] = []
    parts = spec.split(",") if isinstance(spec, str) else [str(x) for x in spec]
    for part in parts:
        part = part.strip()
        try:
            if "-" in part[1:]:
                a, b = part.split("-", 1)
                items.extend(range(int(a), int(b) + 1))
            elif part:
                items.append(int(part))
        except ValueError as e:
            raise SaelabError(
                f"`features` {spec!r}: {part!r} is not a feature id or range (e.g. 645,1170,3-7)"
            ) from e
    out = sorted(set(items))
    if out and out[0] < 0:
        raise SaelabError(f"`features` {spec!r}: feature ids are non-negative")
    if d_sae is not None and out and out[-1] >= d_sae:
        raise SaelabError(
            f"`features` {spec!r}: feature {out[-1]} does not exist (the SAE has {d_sae},"
            f" numbered 0-{d_sae - 1})"
        )
    return out
