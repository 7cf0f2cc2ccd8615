"""Feature cards: everything saelab can say about a few SAE features, computed in one pass.

`feature_card(run, hook, features)` streams the run's token codes (or texts put through the
model and the SAE) into per-feature summaries (`saelab.inspect.accumulate`), adds the logit
lens of each decoder direction, the feature's mean per group, and its contrast row and patch
effects when the run has them. `inspect_features` does the same and stores the cards in the
run (`RUN/inspect/HOOK/features.parquet` + `contexts.parquet`) so the report reads them
without recomputing.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import saelab.inspect.run_info as run_info
from saelab.data import iter_texts, pack_windows, read_prompts
from saelab.errors import SaelabError
from saelab.inspect.accumulate import Context, FeatureAccumulator
from saelab.inspect.blocks import code_blocks, model_blocks, store_blocks
from saelab.inspect.lens import decode_tokens, logit_lens
from saelab.models.describe import describe_model
from saelab.models.hooks import hook_point, parse_hooks
from saelab.models.loading import load_model
from saelab.models.tokens import tokenize_prompts
from saelab.progress import Reporter, say
from saelab.sae.features import parse_features
from saelab.sae.pretrained import load_sae
from saelab.store import open_activations, open_codes


@dataclass
class FeatureCard:
    """One feature's card (see `feature_card`)."""

    hook: str
    feature: int
    source: str  # what the contexts come from: "codes", "activations", "prompts:F", "corpus:F"
    sae: str
    model: str
    n_tokens: int
    n_fire: int
    density: float
    n_prompts: int
    n_prompts_fire: int
    max_value: float
    hist_edges: list[float]
    hist_counts: list[int]
    pool: str
    group_means: dict[str, float]
    group_sizes: dict[str, int]
    contexts: list[dict[str, Any]] = field(default_factory=list)
    lens: dict[str, list[Any]] = field(default_factory=dict)
    contrast: dict[str, Any] | None = None
    patch: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class CardTarget:
    """What cards are computed of, resolved and checked before any model loads: the run (or
    None), the model spec, the hook's name, the SAE's location and the feature ids. Small
    and plain, so it can travel to another process."""

    run: str | None
    model: str
    hook: str
    sae: str
    features: tuple[int, ...]


def card_target(
    run: str | Path | None,
    hook: str,
    features: str | list[int],
    *,
    top: int = 20,
    corpus: str | None = None,
    prompts: str | None = None,
    sae: str | None = None,
    model: str | None = None,
    depth: int | None = None,
) -> tuple[CardTarget, Any]:
    """Check everything `feature_card` can check without the model (the hook against the
    model's depth from its header, the features against the SAE's width) and return the
    target with the SAE it loaded."""
    run_path = Path(run) if run is not None else None
    if run_path is not None and not run_path.is_dir():
        raise SaelabError(f"run folder {run} does not exist; check the path")
    if run_path is None and (sae is None or not (corpus or prompts)):
        raise SaelabError("without a run folder, give the SAE and a corpus or prompts file")
    if corpus and prompts:
        raise SaelabError("give either a corpus or a prompts file, not both")
    if top < 0:
        raise SaelabError(f"top {top} must be 0 or more")
    spec = model or (run_info.model_spec(run_path) if run_path else "default")
    depth = depth if depth is not None else describe_model(spec).shape.n_layers
    hp = parse_hooks(hook, depth)
    if len(hp) != 1:
        raise SaelabError(f"hook {hook!r} names {len(hp)} hook points; name exactly one")
    hook_name = hp[0].name
    codes = _codes(run_path, hook_name)
    location = sae or run_info.sae_location(run_path, hook_name, codes.meta if codes else None)  # type: ignore[arg-type]
    the_sae = load_sae(location).sae
    feats = parse_features(features if isinstance(features, str) else list(features),
                           int(the_sae.cfg.d_sae))  # fmt: skip
    if not feats:
        raise SaelabError("give the features to inspect, e.g. 12,845")
    run_str = str(run_path) if run_path is not None else None
    return CardTarget(run_str, spec, hook_name, location, tuple(feats)), the_sae


def feature_card(
    run: str | Path | None,
    hook: str,
    features: str | list[int],
    *,
    top: int = 20,
    corpus: str | None = None,
    prompts: str | None = None,
    sae: str | None = None,
    model: str | None = None,
    context: int = 64,
    max_tokens: int = 50_000,
    window: tuple[int, int] = (12, 4),
    lens_k: int = 10,
    batch_size: int = 8,
    lm: Any = None,
    quiet: bool = False,
) -> list[FeatureCard]:
    """Cards of `features` of the SAE at `hook`.

    Contexts come from `corpus` (a text file/folder or builtin:stdlib, cut into windows of
    `context` tokens, at most `max_tokens`), from `prompts` (a prompt file), or, with
    neither, from the run's own codes or activation store. Without a run, give `sae` (and
    `corpus` or `prompts`). `window` is (tokens before, tokens after) the peak.
    """
    target, the_sae = card_target(
        run, hook, features, top=top, corpus=corpus, prompts=prompts, sae=sae, model=model,
        depth=lm.n_layers if lm is not None else None,
    )  # fmt: skip
    lm = lm or load_model(target.model, quiet=quiet)
    return target_cards(
        target, lm, the_sae, top=top, corpus=corpus, prompts=prompts, context=context,
        max_tokens=max_tokens, window=window, lens_k=lens_k, batch_size=batch_size, quiet=quiet,
    )  # fmt: skip


def target_cards(
    target: CardTarget,
    lm: Any,
    the_sae: Any,
    *,
    top: int = 20,
    corpus: str | None = None,
    prompts: str | None = None,
    context: int = 64,
    max_tokens: int = 50_000,
    window: tuple[int, int] = (12, 4),
    lens_k: int = 10,
    batch_size: int = 8,
    quiet: bool = False,
) -> list[FeatureCard]:
    """The cards of a checked target with its model and SAE loaded (see `feature_card`)."""
    run_path = Path(target.run) if target.run is not None else None
    hook_name, feats = target.hook, list(target.features)
    pool = run_info.contrast_pool(run_path) if run_path else "max"
    acc = FeatureAccumulator(feats, top=top, window=window, pool=pool)
    if corpus or prompts:
        source, ids, blocks, total = _text_blocks(
            lm, hook_point(hook_name), the_sae, feats, corpus, prompts, context, max_tokens,
            batch_size,
        )  # fmt: skip
    else:
        assert run_path is not None
        codes = _codes(run_path, hook_name)
        source, ids, blocks, total = _run_blocks(run_path, hook_name, codes, the_sae, feats)
    with Reporter(f"inspect {hook_name}", total=total, unit="prompts", quiet=quiet) as rep:
        for b in blocks:
            acc.add(b)
            rep.advance(len(b.offsets) - 1, int(b.codes.shape[0]))
    lens = _lens(lm, the_sae, feats, lens_k, quiet)
    contrast = run_info.contrast_rows(run_path, hook_name, feats) if run_path else {}
    patch = run_info.patch_rows(run_path, hook_name, feats) if run_path else {}
    cards = []
    for k, res in enumerate(acc.results()):
        f = res.pop("feature")
        ctx = [_context_dict(c, ids, lm.tokenizer) for c in res.pop("contexts")]
        cards.append(
            FeatureCard(
                hook=hook_name,
                feature=f,
                source=source,
                sae=target.sae,
                model=lm.name,
                contexts=ctx,
                lens=lens[k],
                contrast=contrast.get(f),
                patch=patch.get(f, []),
                **res,
            )
        )
    return cards


def _codes(run: Path | None, hook: str) -> Any:
    if run is None or not (run / "codes").is_dir():
        return None
    codes = open_codes(run)
    return codes[hook] if hook in codes.hooks else None


def _skip_first(store: Any) -> bool:
    return bool(store.attrs.get("prepend_bos", True)) and not store.attrs.get("drop_bos", False)


def _run_blocks(run: Path, hook: str, codes: Any, sae: Any, feats: list[int]) -> tuple:
    """The run's own token codes, else its activation store through the SAE."""
    try:
        store = open_activations(run)
    except SaelabError as e:
        raise SaelabError(
            f"{run} has no activation store to read tokens from; give a prompts file or a"
            " corpus to inspect features on"
        ) from e
    groups = run_info.run_groups(run)
    ids = run_info.run_prompt_ids(run)
    if codes is not None and codes.positions == "all" and store.positions == "all":
        if codes.features is not None and not set(feats) <= set(codes.features):
            missing = sorted(set(feats) - set(codes.features))[0]
            raise SaelabError(
                f"{hook} was encoded with only some features; feature {missing} was not kept:"
                " encode again with it, or give a prompts file or a corpus"
            )
        blocks = code_blocks(codes, store, feats, _skip_first(store), groups)
        return "codes", ids, blocks, len(codes.prompt_index)
    if store.positions != "all" or hook not in store.hooks:
        raise SaelabError(
            f"{run} holds no per-token codes or activations of {hook} (codes and store keep"
            f" positions={store.positions}); give a prompts file or a corpus to inspect on"
        )
    blocks = store_blocks(store, hook, sae, feats, _skip_first(store), groups)
    return "activations", ids, blocks, store.n_prompts


def _text_blocks(
    lm: Any,
    hp: Any,
    sae: Any,
    feats: list[int],
    corpus: str | None,
    prompts: str | None,
    context: int,
    max_tokens: int,
    batch_size: int,
) -> tuple:
    """Texts through the model and the SAE: a prompt file's prompts or a corpus's windows."""
    if prompts:
        table = read_prompts(prompts)
        tok = tokenize_prompts(lm.tokenizer, table.texts)
        blocks = model_blocks(
            lm,
            hp,
            sae,
            tok.ids,
            feats,
            skip_first=tok.bos_id is not None,
            groups=table.groups,
            batch_size=batch_size,
        )
        return f"prompts:{prompts}", list(table.ids), blocks, len(tok.ids)
    windows = pack_windows(
        iter_texts(str(corpus)),
        lm.tokenizer,
        context=context,
        max_tokens=max_tokens,
        source=str(corpus),
    )
    lists = [list(map(int, w)) for w in windows.windows]
    ids = [f"window {i}" for i in range(len(lists))]
    blocks = model_blocks(
        lm, hp, sae, lists, feats, skip_first=windows.bos_id is not None, batch_size=batch_size
    )
    return f"corpus:{corpus}", ids, blocks, len(lists)


def _lens(lm: Any, sae: Any, feats: list[int], k: int, quiet: bool) -> list[dict[str, Any]]:
    """Logit lens per feature; an SAE off the residual stream's width gets an empty lens."""
    rows = sae.W_dec.detach()[feats].float()
    try:
        return logit_lens(lm, rows, k)
    except SaelabError as e:
        say(f"[yellow]inspect[/yellow]: no logit lens ({e})", quiet)
        return [{} for _ in feats]


def _context_dict(c: Context, ids: list[str], tokenizer: Any) -> dict[str, Any]:
    d = asdict(c)
    d.pop("key", None)
    d["prompt_id"] = ids[c.prompt] if 0 <= c.prompt < len(ids) else str(c.prompt)
    d["tokens"] = decode_tokens(tokenizer, c.token_ids)
    return d
