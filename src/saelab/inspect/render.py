"""`inspect` as a command would run it: compute cards, store them in the run, print them.

Printed contexts shade each token by the feature's activation there (relative to the
feature's largest activation), the way the report's cards do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from rich.text import Text

from saelab.inspect.card import FeatureCard, feature_card
from saelab.inspect.store import save_cards
from saelab.progress import console, say


def inspect_features(
    run: str | Path,
    hook: str,
    features: str | list[int],
    top: int = 20,
    corpus: str | None = None,
    prompts: str | None = None,
    quiet: bool = False,
    **options: Any,
) -> list[FeatureCard]:
    """Compute the cards of `features` at `hook` (see `feature_card` for `options`), store
    them under RUN/inspect/HOOK/, and return them."""
    cards = feature_card(
        run, hook, features, top=top, corpus=corpus, prompts=prompts, quiet=quiet, **options
    )
    paths = save_cards(run, cards)
    if paths:
        say(f"cards stored in {paths[0].parent}", quiet)
    return cards


def shade(tokens: list[str], acts: list[float], peak: float, mark: int | None = None) -> Text:
    """Tokens as one line, each on a background as strong as its activation / peak; the peak
    token also between » « so it shows where colours do not (logs, pipes)."""
    out = Text()
    for i, (tok, a) in enumerate(zip(tokens, acts, strict=True)):
        level = 0.0 if peak <= 0 else max(0.0, min(1.0, a / peak))
        g = int(255 - 150 * level)
        style = f"black on rgb(255,{g},{int(255 - 230 * level)})" if level > 0 else ""
        if mark is not None and i == mark:
            style += " bold underline"
        text = tok.replace("\n", "\u21b5")
        if mark is not None and i == mark:
            text = f"\u00bb{text}\u00ab"
        out.append(text, style=style.strip() or None)
    return out


def print_cards(cards: list[FeatureCard], contexts: int = 8) -> None:
    """A readable summary of each card on stdout."""
    out = console()
    for c in cards:
        out.print(
            f"[bold]{c.hook} feature {c.feature}[/bold]: fires on {c.n_fire:,} of"
            f" {c.n_tokens:,} tokens (density {c.density:.3g}), in {c.n_prompts_fire:,} of"
            f" {c.n_prompts:,} contexts; max {c.max_value:.3g} [dim]({c.source})[/dim]"
        )
        if c.group_means:
            means = ", ".join(f"{g} {m:.3g}" for g, m in c.group_means.items())
            out.print(f"  mean per group ({c.pool} over tokens): {means}")
        if c.contrast and c.contrast.get("tested"):
            k = c.contrast
            out.print(
                f"  contrast: d {k.get('cohen_d') or 0:+.2f}, AUC {k.get('auc') or 0:.2f},"
                f" q {k.get('q') if k.get('q') is not None else float('nan'):.2g}"
            )
        for p in c.patch:
            if p.get("group") == "all":
                extra = (
                    f", delta logp diff {p['delta_logp_diff']:+.3g}"
                    if p.get("delta_logp_diff") is not None
                    else ""
                )
                out.print(f"  patch {p['edit']}: mean KL {p.get('mean_kl') or 0:.3g}{extra}")
        if c.lens.get("promoted"):
            out.print("  promotes: " + " ".join(repr(t) for t in c.lens["promoted"][:8]))
            out.print("  suppresses: " + " ".join(repr(t) for t in c.lens["suppressed"][:8]))
        tops = [x for x in c.contexts if x["kind"] == "top"][:contexts]
        if not tops:
            out.print("  [yellow]no context: the feature never fires on these texts[/yellow]")
        for x in tops:
            line = Text(f"  {x['value']:7.3g}  ")
            line.append(shade(x["tokens"], x["acts"], c.max_value, x["position"] - x["start"]))
            out.print(line)
        lows = [x for x in c.contexts if x["kind"] == "quantile"]
        for x in lows:
            line = Text(f"  q{x['quantile']:.1f} {x['value']:5.2g}  ")
            line.append(shade(x["tokens"], x["acts"], c.max_value, x["position"] - x["start"]))
            out.print(line)
