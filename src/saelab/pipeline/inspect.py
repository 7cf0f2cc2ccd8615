"""`saelab inspect`: feature cards of a hook's SAE features, as a stage.

A run grows by sections, one per (hook, feature set): inspecting other features of a hook
later is a new section, the same command again finds its section complete and prints the
stored cards. Each section is one unit, which may run on any worker (the model from its
`Worker`): it computes the cards and writes them, whole and atomically, to files of its own,
`RUN/inspect/HOOK/sections/FEATURES/{features,contexts}.parquet`, which nothing rewrites.

The hook's cards as the report and `load_cards` read them (`RUN/inspect/HOOK/{features,
contexts}.parquet`: inspecting more features adds their rows, inspecting a feature again
replaces them) are the driver's to write, in `finish`, from the section files of this call;
they are recorded as the stage's own files, with the hashes of their latest bytes, so a later
section that rewrites them leaves no record stale (`saelab verify` stays clean). The stage's
`merged` field lists the sections in the order they went in, so files lost to a repair are
rebuilt from the sections as they were.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelab.inspect.card import CardTarget, FeatureCard, card_target, target_cards
from saelab.inspect.render import print_cards
from saelab.inspect.store import (
    FEATURES,
    INSPECT_DIR,
    card_rows,
    cards_from_rows,
    merge_rows,
    read_rows,
    write_rows,
)
from saelab.pipeline.driver import run_stage
from saelab.pipeline.options import StageOptions, option
from saelab.pipeline.stage import Done, Finished, Stage, Unit, UnitResult, Worker, hashed
from saelab.progress import say
from saelab.sae.pretrained import load_sae

SECTIONS_DIR = "sections"
_LONG = 48  # a feature list longer than this names its folder by a hash


class InspectConfig(StageOptions):
    """Feature cards: density, histogram, top and quantile contexts, logit lens, group means,
    contrast and patch effects; stored in RUN/inspect/HOOK for the report."""

    hook: str = option(..., "the SAE's hook, e.g. resid_post.7")
    features: str = option(..., "feature ids, e.g. 12,845 or 3-7")
    top: int = option(20, "top-activating contexts per feature", minimum=0)
    prompts: str | None = option(None, "run these prompts through the model and SAE instead")
    corpus: str | None = option(
        None, "or windows of this corpus (txt/jsonl/parquet, folder, builtin:stdlib)"
    )
    context: int = option(64, "--corpus: tokens per window", minimum=2)
    max_tokens: int = option(50_000, "--corpus: tokens to read at most", minimum=1)
    sae: str | None = option(None, "SAE to use (default: the one the run's codes used)")


def compact(features: tuple[int, ...] | list[int]) -> str:
    """Sorted feature ids as runs: (3, 4, 5, 7, 12) -> "3-5,7,12"."""
    out: list[str] = []
    fs = sorted(features)
    i = 0
    while i < len(fs):
        j = i
        while j + 1 < len(fs) and fs[j + 1] == fs[j] + 1:
            j += 1
        out.append(str(fs[i]) if j == i else f"{fs[i]}-{fs[j]}")
        i = j + 1
    return ",".join(out)


def section_folder(section: str) -> str:
    """Where a section ("HOOK:FEATURES") keeps its files, relative to the run folder."""
    hook, features = section.split(":", 1)
    name = features
    if len(features) > _LONG:
        name = f"{features[:24]}-{hashlib.sha256(features.encode()).hexdigest()[:12]}"
    return f"{INSPECT_DIR}/{hook}/{SECTIONS_DIR}/{name}"


@dataclass(frozen=True)
class SectionUnit(Unit):
    """One (hook, feature set): what to compute (checked on the driver) and where it goes."""

    target: CardTarget | None = None
    folder: str = ""


class InspectStage(Stage[InspectConfig]):
    """One section per (hook, feature set), one unit per section (see the module doc)."""

    name = "inspect"
    sections = True

    def prepare(self) -> dict[str, Any]:
        o = self.config
        target, sae = card_target(self.run.path, o.hook, o.features, top=o.top, corpus=o.corpus,
                                  prompts=o.prompts, sae=o.sae)  # fmt: skip
        self.target = target
        # checking the features needed the SAE: a unit run by this very object (the local
        # executor) takes it rather than loading it again; a worker elsewhere loads its own
        self._checked_sae: Any = sae
        self.section = f"{target.hook}:{compact(target.features)}"
        source = "prompts" if o.prompts else "corpus" if o.corpus else "run"
        binding: dict[str, Any] = {
            "hook": target.hook, "features": compact(target.features), "model": target.model,
            "sae": target.sae, "top": o.top, "source": source, "prompts": o.prompts,
            "corpus": o.corpus,
        }  # fmt: skip
        if o.corpus:
            binding.update(context=o.context, max_tokens=o.max_tokens)
        return {self.section: binding}

    def outputs(self, sections: list[str] | None = None) -> list[str]:
        if sections is None:
            return [INSPECT_DIR]
        return [section_folder(s) for s in sections]

    def units(self) -> list[Unit]:
        return [SectionUnit(self.section, 1, self.target, section_folder(self.section))]

    def finish(self, done: Done) -> Finished:
        run = self.run
        cards: list[FeatureCard] = []
        for key in done.records:
            cards += cards_from_rows(read_rows(run.path / section_folder(key)))
        if done.already:
            say(f"inspect: {', '.join(done.records)} already inspected; the stored cards:",
                self.config.quiet)  # fmt: skip
            return Finished(cards)
        st = run.stage(self.name)
        files = dict(st.get("files") or {})
        # the sections in the order their cards went into the hook's files (the manifest
        # keeps units by name, not by time): a later one's rows replace an earlier one's
        order = [k for k in st.get("merged") or [] if k not in done.records]
        # this call's hooks, and any other whose cards a repair removed (it removes all the
        # stage's own files): rebuilt from their sections, as the rebuild command promises
        units = st.get("units") or {}
        lost = [h for h in (k.split(":", 1)[0] for k in order if k in units)
                if not (run.path / INSPECT_DIR / h / FEATURES).is_file()]  # fmt: skip
        for hook in dict.fromkeys([*(k.split(":", 1)[0] for k in done.records), *lost]):
            mine = [k for k in done.records if k.startswith(hook + ":")]
            paths = self._merge(hook, mine, order)
            files.update(hashed(run, paths))
            say(f"cards stored in {paths[0].parent}", self.config.quiet)
        fields = {"files": dict(sorted(files.items())), "merged": [*order, *done.records]}
        return Finished(cards, fields)

    def _merge(self, hook: str, sections: list[str], earlier: list[str]) -> list[Path]:
        """Write the hook's cards: what they were with these sections' rows in place. Cards
        that are not there (a first inspect, or files removed by `saelab verify --repair`)
        start from the `earlier` sections of the hook still recorded, in their order."""
        folder = self.run.path / INSPECT_DIR / hook
        if (folder / FEATURES).is_file():
            rows = read_rows(folder)
        else:
            rows = ([], [])
            units = self.run.stage(self.name).get("units") or {}
            for key in earlier:
                if key.startswith(hook + ":") and key in units:
                    rows = merge_rows(rows, read_rows(self.run.path / section_folder(key)))
        for key in sections:
            rows = merge_rows(rows, read_rows(self.run.path / section_folder(key)))
        return write_rows(folder, rows)

    # -- any process -----------------------------------------------------------------------
    def run_unit(self, unit: SectionUnit, worker: Worker) -> UnitResult:
        o, target = self.config, unit.target
        assert target is not None
        lm = worker.model(target.model, quiet=o.quiet)
        sae, self._checked_sae = getattr(self, "_checked_sae", None), None
        if sae is None:
            sae = load_sae(target.sae).sae  # one per unit, released with it (as encode does)
        cards = target_cards(target, lm, sae, top=o.top, corpus=o.corpus, prompts=o.prompts,
                             context=o.context, max_tokens=o.max_tokens, quiet=o.quiet)  # fmt: skip
        paths = write_rows(self.run.path / unit.folder, card_rows(target.hook, cards))
        return UnitResult(hashed(self.run, paths), {"hook": target.hook, "cards": len(cards)})


def run_inspect(c: InspectConfig) -> list[FeatureCard]:
    """Compute (or find) the cards, store them in the run and print them."""
    cards = run_stage(InspectStage(c))
    print_cards(cards)
    return cards
