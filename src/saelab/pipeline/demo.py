"""`saelab demo`: the main job on the default model, end to end, with nothing to download.

Today that is `plan` (calibrated on this machine), `extract` over the built-in prompts,
`train`: a TopK SAE on layer 7 streamed over Python's docstrings (the built-in prompts are far
too few tokens for an SAE), and `encode` of the prompts with it; later stages join as they are
built. The plan is recorded first
so the run shows the prediction beside what was measured.
"""

from __future__ import annotations

from saelab.pipeline.encode import EncodeOptions, run_encode
from saelab.pipeline.extract import describe_result, run_extract
from saelab.pipeline.extract_job import ExtractOptions
from saelab.pipeline.plan import plan_extract, record_plan, render_plan
from saelab.pipeline.train import TrainOptions, run_train
from saelab.progress import say

DEMO_TRAIN_TOKENS = 131_072  # ~1.5 min on 2 cores; README's 400k-token command reaches EV 0.89


def run_demo(run: str = "runs/demo", hooks: str = "resid_post.0-29", quiet: bool = False) -> None:
    opts = ExtractOptions(model="default", hooks=hooks, run=run, quiet=quiet)
    say("[bold]1/4 plan[/bold]", quiet)
    result, lm = plan_extract(opts, calibrate=True)
    if not quiet:
        render_plan(result)
    record_plan(result)
    say("[bold]2/4 extract[/bold]", quiet)
    out = run_extract(opts, lm=lm)
    print(describe_result(out))
    del lm
    say("[bold]3/4 train[/bold] (TopK SAE, streamed over builtin:stdlib)", quiet)
    run_train(
        TrainOptions(
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
    say("[bold]4/4 encode[/bold] (the built-in prompts through the new SAE)", quiet)
    enc = run_encode(EncodeOptions(saes=f"{run}/saes", run=run, quiet=quiet))
    for hook, info in enc.hooks.items():
        print(f"{hook}: {info['rows']:,} token codes, mean L0 {info['mean_l0']:.1f}")
    print(
        f"codes: saelab.store.open_codes({run!r}); export with: saelab export {run} --features 0,1"
    )
    print(f"describe it again with: saelab show {run}")
