"""`saelab demo`: the whole path on the default model and built-in data, nothing downloaded.

`plan` (calibrated on this machine) and `extract` the built-in two-style statements
(`builtin:styles`: 100 formal, 100 casual) at layer 7, `train` a TopK SAE there streamed over
Python's docstrings (200 short statements are far too few tokens for an SAE), `encode` the
statements with it, `contrast` the two styles, `patch` the strongest features (each steered
along its decoder direction) while the model continues the statements, `inspect` those
features and write the `report`. Every stage is the ordinary one on one run folder, so a second
`saelab demo` skips what is done; the stages' own tables go to RUN/demo.log and the screen
gets one line per stage, then the three strongest findings (`demo_findings`).

Training uses what makes it fast rather than fewer checks: the sparse TopK trainer, capture
overlapped with training (the stream's prefetch thread), and epochs after the first read the
rows of the first from memory (an in-memory activation store), so the model runs over each
corpus token once.
"""

from __future__ import annotations

import contextlib
import io
import json
import resource
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saelab.atomic import atomic_write_bytes
from saelab.data import read_prompts
from saelab.inspect import inspect_features, load_cards
from saelab.models.loading import LoadedModel
from saelab.pipeline.contrast import ContrastConfig, ContrastStage
from saelab.pipeline.demo_findings import findings, stage_notes
from saelab.pipeline.driver import run_stage
from saelab.pipeline.encode import EncodeConfig, EncodeStage
from saelab.pipeline.executors import LocalExecutor
from saelab.pipeline.extract import extract_stage
from saelab.pipeline.extract_job import ExtractConfig
from saelab.pipeline.options import RunOptions, option
from saelab.pipeline.patch import PatchConfig, PatchStage
from saelab.pipeline.patch_sets import from_sweep
from saelab.pipeline.plan import plan_extract, record_plan, render_plan
from saelab.pipeline.stage import Worker
from saelab.pipeline.train import TrainConfig, TrainStage
from saelab.progress import say
from saelab.report import build_report
from saelab.units import format_seconds

PROMPTS = "builtin:styles"
LAYER = 7
HOOK = f"blocks.{LAYER}.hook_resid_post"
GROUPS = "formal,casual"
# the next token after a statement: formal ones go on with "\n\nThe ...", casual ones with
# ".\n\nI'm ..."; the log-prob difference ' The' - ' I' and the label of each continuation
TARGETS = " The, I"
OUTCOMES = ["The=\\bThe\\b", "I=\\bI\\b"]


@dataclass(frozen=True)
class Settings:
    """How big each stage is (the full demo, or `--fast` for a smoke test)."""

    prompts: int | None  # statements of builtin:styles extracted and contrasted (None: all)
    train_tokens: int  # training tokens (token-steps)
    epochs: int  # the stream reads train_tokens / epochs distinct corpus tokens
    d_sae: int
    context: int  # tokens per training window
    patch_prompts: int  # the first N statements (alternately formal, casual) patched
    top: int  # strongest features patched and inspected
    generate: int  # new tokens per patched continuation


FULL = Settings(None, 131_072, 4, 4608, 128, 80, 3, 4)
FAST = Settings(40, 4_096, 2, 1024, 64, 10, 2, 3)
# steering adds STEER x the feature's decoder row, whose norm is the layer's mean token norm
# (input scaling is folded into the SAE): a push of one typical token's size
STEER = 1


class DemoConfig(RunOptions):
    """The whole path on the default model: plan, extract, train, encode, contrast, patch,
    inspect, report; then the three strongest findings."""

    run: str | None = option("runs/demo", "run folder")
    fast: bool = option(False, "tiny settings (under a minute): checks the path, finds little")


def run_demo(config: DemoConfig, lm: LoadedModel | None = None) -> dict[str, Any]:
    """Every stage on `config.run` (skipping what a previous demo there finished); returns
    the stage lines, the report's path and the findings. `lm`: the default model, already
    loaded (a test's), used by every stage instead of loading it."""
    s = FAST if config.fast else FULL
    run = str(config.run or "runs/demo")
    quiet = config.quiet
    demo = _Demo(run, s, quiet)
    if lm is not None:
        demo.executor.worker.adopt(lm)
    extract = ExtractConfig(model="default", prompts=PROMPTS, hooks=f"resid_post.{LAYER}",
                            run=run, quiet=quiet, limit=s.prompts)  # fmt: skip
    demo.step("plan", lambda: _plan(extract, demo), "manifest.json")
    demo.step("extract", lambda: run_stage(extract_stage(extract), demo.executor), "activations")
    demo.step("train", lambda: demo.stage(TrainStage(_train_config(run, s, quiet))),
              f"saes/{HOOK}")  # fmt: skip
    saes = str(Path(run) / "saes")
    demo.step("encode", lambda: demo.stage(EncodeStage(EncodeConfig(saes=saes, run=run,
              quiet=quiet))), "codes")  # fmt: skip
    contrast = ContrastConfig(run=run, groups=GROUPS, pool="max", top=10, quiet=quiet)
    demo.step("contrast", lambda: demo.stage(ContrastStage(contrast)), "stats/contrast.parquet")
    demo.step("patch", lambda: demo.stage(PatchStage(_patch_config(run, s, quiet))),
              "patch/summary.parquet")  # fmt: skip
    demo.step("inspect", lambda: _inspect(run, s, demo), f"inspect/{HOOK}")
    demo.step("report", lambda: _report(run), "report/index.html")
    report = Path(run) / "report" / "index.html"
    found = findings(Path(run), s.top, LAYER, STEER)
    print(f"report: {report}  (open it in a browser; the stages' tables: {run}/demo.log)")
    print("strongest findings:")
    for i, line in enumerate(found[:3], 1):
        print(f"  {i}. {line}")
    return {"stages": demo.lines, "report": report, "findings": found}


class _Demo:
    """The stages in order on one executor (the model loaded once), each timed, its printed
    tables kept in RUN/demo.log, its line on the screen."""

    def __init__(self, run: str, settings: Settings, quiet: bool):
        self.run, self.settings, self.quiet = run, settings, quiet
        self.executor = LocalExecutor(Worker())
        self.lines: list[str] = []
        self.n = 8

    def stage(self, stage: Any) -> Any:
        return run_stage(stage, self.executor)

    def step(self, name: str, work: Callable[[], Any], where: str) -> None:
        before = _complete(Path(self.run), name)
        say(f"[bold]{len(self.lines) + 1}/{self.n} {name}[/bold]", self.quiet)
        t0, c0 = time.perf_counter(), _cpu()
        with self._log(name):
            work()
        secs, cpu = time.perf_counter() - t0, _cpu() - c0
        what = stage_notes(Path(self.run), name, self.settings)
        done = " (done before: skipped)" if before else ""
        line = (
            f"{len(self.lines) + 1}/{self.n} {name:<8} {format_seconds(secs):>7}"
            f" (cpu {format_seconds(cpu)})  {what}{done} -> {Path(self.run) / where}"
        )
        self.lines.append(line)
        print(line, flush=True)

    @contextlib.contextmanager
    def _log(self, name: str) -> Iterator[None]:
        buf = io.StringIO()
        try:
            with contextlib.redirect_stdout(buf):
                yield
        finally:
            text = buf.getvalue()
            if text.strip():
                log = Path(self.run) / "demo.log"
                old = log.read_text() if log.is_file() else ""
                atomic_write_bytes(log, (old + f"== {name}\n{text}").encode())


def _cpu() -> float:
    """CPU seconds of this process so far (every thread): the work, whatever the load."""
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def _complete(run: Path, name: str) -> bool:
    """Whether an earlier demo finished this step (the manifest, or the step's files)."""
    mf = run / "manifest.json"
    m = json.loads(mf.read_text()) if mf.is_file() else {}
    if name == "plan":
        return "extract" in m.get("plans", {})
    if name == "inspect":
        return (run / "inspect" / HOOK).is_dir()
    if name == "report":
        return False
    return bool(m.get("stages", {}).get(name, {}).get("complete"))


def _plan(extract: ExtractConfig, demo: _Demo) -> None:
    """Plan the extract (calibrated on this machine) once; the loaded model stays for the
    stages after it."""
    if _complete(Path(demo.run), "plan"):
        return
    worker = demo.executor.worker
    lm = worker.model("default") if worker.has_model("default") else None
    result, lm = plan_extract(extract, calibrate=True, lm=lm)
    if lm is not None:
        demo.executor.worker.adopt(lm)
    render_plan(result)
    record_plan(result)


def _train_config(run: str, s: Settings, quiet: bool) -> TrainConfig:
    return TrainConfig(run=run, stream=True, corpus="builtin:stdlib", hooks=HOOK, arch="topk",
                       d_sae=s.d_sae, k=32, tokens=s.train_tokens, epochs=s.epochs,
                       context=s.context, quiet=quiet)  # fmt: skip


def _patch_config(run: str, s: Settings, quiet: bool) -> PatchConfig:
    """The strongest features, each steered along its decoder direction, on the first
    statements of both groups."""
    path = Path(run) / "demo" / "patch_prompts.jsonl"
    if not path.is_file():
        t = read_prompts(PROMPTS, limit=s.patch_prompts)
        rows = [{"id": i, "text": x, "group": g}
                for i, x, g in zip(t.ids, t.texts, t.groups or [], strict=True)]  # fmt: skip
        atomic_write_bytes(path, "".join(json.dumps(r) + "\n" for r in rows).encode())
    return PatchConfig(run=run, sweep=f"top:{s.top}", values=f"@{STEER}", prompts=str(path),
                       generate=s.generate, targets=TARGETS, outcome=OUTCOMES,
                       quiet=quiet)  # fmt: skip


def _top_features(run: str, s: Settings) -> list[int]:
    """The features the patch sweep picked, in its order."""
    sets = from_sweep(Path(run), f"top:{s.top}", "0")
    return [e.feature for es in sets for e in es.edits]


def _inspect(run: str, s: Settings, demo: _Demo) -> None:
    features = _top_features(run, s)
    have = load_cards(Path(run)).get(HOOK, {}) if (Path(run) / "inspect").is_dir() else {}
    if all(f in have for f in features):
        return
    lm = demo.executor.worker.model("default", quiet=demo.quiet)
    inspect_features(run, HOOK, features, top=10, quiet=demo.quiet, lm=lm)


def _report(run: str) -> None:
    build_report(run)
