"""`saelab demo`: the main job on the default model, end to end, with nothing to download.

`plan` (calibrated on this machine) and `extract` over the built-in two-style prompts
(`builtin:styles`: 40 statements written formally and casually), `train` a TopK SAE on layer 7
streamed over Python's docstrings (80 short prompts are far too few tokens for an SAE),
`encode` the prompts with it, and `contrast` the two styles. The plan is recorded first so the
run shows the prediction beside what was measured.
"""

from __future__ import annotations

from saelab.pipeline.contrast import ContrastConfig, run_contrast
from saelab.pipeline.encode import EncodeConfig, run_encode
from saelab.pipeline.extract import describe_result, run_extract
from saelab.pipeline.extract_job import ExtractConfig
from saelab.pipeline.options import RunOptions, option
from saelab.pipeline.plan import plan_extract, record_plan, render_plan
from saelab.pipeline.train import TrainConfig, run_train
from saelab.progress import say

DEMO_PROMPTS = "builtin:styles"
DEMO_TRAIN_TOKENS = 131_072  # ~1.5 min on 2 cores; README's 400k-token command reaches EV 0.89


class DemoConfig(RunOptions):
    """The main job on the default model: plan, extract, train, encode, contrast."""

    run: str | None = option("runs/demo", "run folder")
    hooks: str = option("resid_post.0-29", "hook points to plan and extract")


def run_demo(run: str = "runs/demo", hooks: str = "resid_post.0-29", quiet: bool = False) -> None:
    opts = ExtractConfig(model="default", prompts=DEMO_PROMPTS, hooks=hooks, run=run, quiet=quiet)
    say("[bold]1/5 plan[/bold]", quiet)
    result, lm = plan_extract(opts, calibrate=True)
    if not quiet:
        render_plan(result)
    record_plan(result)
    say("[bold]2/5 extract[/bold]", quiet)
    out = run_extract(opts, lm=lm)
    print(describe_result(out))
    del lm
    say("[bold]3/5 train[/bold] (TopK SAE on layer 7, streamed over builtin:stdlib)", quiet)
    run_train(
        TrainConfig(
            run=run,
            stream=True,
            corpus="builtin:stdlib",
            hooks="blocks.7.hook_resid_post",
            d_sae=4608,
            k=32,
            tokens=DEMO_TRAIN_TOKENS,
            quiet=quiet,
        )
    )
    say("[bold]4/5 encode[/bold] (the prompts through the new SAE)", quiet)
    enc = run_encode(EncodeConfig(saes=f"{run}/saes", run=run, quiet=quiet))
    for hook, info in enc.hooks.items():
        print(f"{hook}: {info['rows']:,} token codes, mean L0 {info['mean_l0']:.1f}")
    say("[bold]5/5 contrast[/bold] (formal vs casual)", quiet)
    run_contrast(ContrastConfig(run=run, groups="formal,casual", pool="max", top=10, quiet=quiet))
    print(f'codes: saelab.store.open_codes({run!r}); tables: saelab query --run {run} "SELECT ..."')
    print(f"describe it again with: saelab show --run {run}")
