"""`builtin:styles`, the demo's two-group set: statements written formally and casually.

The demo contrasts the two groups and patches the features that separate them, so the set must
be big enough for the statistics (100+ per group), paired (each statement in both styles, so
topic cancels out), free of repeats, and not separable by one token: a set where every casual
line says "lol", or where only formal lines end with a period, teaches the contrast where that
token is, not what style is."""

from __future__ import annotations

import hashlib
import re
from collections import Counter

from saelab.data import read_prompts
from saelab.data.prompts import STYLES_SOURCE, builtin_prompts

# The first 40 pairs are the ones the README's contrast and patch figures were measured on
# (and what the contrast tests read with limit=80); new pairs go after them.
FIRST_40_PAIRS_SHA256 = "6fa612bf32fd0abe9b40297e7c1b52f38b761f4b8b213b948437604f09514cf2"
MAX_MARKER_SHARE = 0.30


def _tokens(text: str) -> set[str]:
    """Lower-cased words (with their apostrophes) and single punctuation marks of one line."""
    return set(re.findall(r"[a-z0-9']+|[^\w\s]", text.lower()))


def test_styles_has_100_aligned_pairs_without_repeats() -> None:
    t = builtin_prompts(STYLES_SOURCE)
    assert t.groups is not None
    counts = Counter(t.groups)
    assert set(counts) == {"formal", "casual"} and counts["formal"] == counts["casual"] >= 100
    # rows alternate formal-NN, casual-NN with the same NN: pair i is rows 2i and 2i+1
    for i in range(0, len(t), 2):
        n = f"{i // 2:02d}"
        assert t.ids[i : i + 2] == [f"formal-{n}", f"casual-{n}"], t.ids[i : i + 2]
        assert t.groups[i : i + 2] == ["formal", "casual"]
    normalised = [" ".join(x.lower().split()) for x in t.texts]
    assert len(set(normalised)) == len(t), [x for x, c in Counter(normalised).items() if c > 1]
    for text in t.texts:
        assert text == text.strip() and 5 <= len(text.split()) <= 25, text


def test_first_40_pairs_are_unchanged() -> None:
    t = read_prompts(STYLES_SOURCE, limit=80)
    cells = zip(t.ids, t.texts, t.groups or [], strict=True)
    rows = "\n".join(f"{i}\t{x}\t{g}" for i, x, g in cells)
    assert hashlib.sha256(rows.encode()).hexdigest() == FIRST_40_PAIRS_SHA256


def test_no_single_token_marks_the_casual_lines() -> None:
    t = builtin_prompts(STYLES_SOURCE)
    groups = t.groups or []
    casual = [_tokens(x) for x, g in zip(t.texts, groups, strict=True) if g == "casual"]
    formal = [_tokens(x) for x, g in zip(t.texts, groups, strict=True) if g == "formal"]
    in_casual = Counter(w for s in casual for w in s)
    in_formal = Counter(w for s in formal for w in s)
    limit = MAX_MARKER_SHARE * len(casual)
    # a token only casual lines use (lol, u, gonna, !) is in at most 30% of them ...
    only = {w: n for w, n in in_casual.items() if in_formal[w] == 0}
    assert max(only.values()) <= limit, sorted(only.items(), key=lambda kv: -kv[1])[:5]
    # ... and no token, shared or not, is in 30% more casual lines than formal ones
    net = {w: n - in_formal[w] for w, n in in_casual.items()}
    assert max(net.values()) <= limit, sorted(net.items(), key=lambda kv: -kv[1])[:5]
    # the casual markers are many: at least 20 casual-only tokens in 3+ lines each
    assert sum(n >= 3 for n in only.values()) >= 20, sorted(only.items(), key=lambda kv: -kv[1])


def test_the_final_period_does_not_mark_the_formal_lines() -> None:
    """Every formal line ends with a period; if casual ones never did, the contrast's strongest
    features would be sentence-final-period features, not style. (The first 40 casual lines
    have none, so the new ones carry them.)"""
    t = builtin_prompts(STYLES_SOURCE)
    ends = Counter((g, x[-1]) for x, g in zip(t.texts, t.groups or [], strict=True))
    n = len(t) // 2
    assert ends[("formal", ".")] == n
    assert ends[("casual", ".")] >= 0.35 * n
    assert ends[("casual", "!")] + ends[("casual", "?")] >= 0.1 * n
