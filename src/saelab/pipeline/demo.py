"""`saelab demo`: the main job on the default model, end to end, with nothing to download.

Today that is `plan` (calibrated on this machine) followed by `extract` over the built-in
prompts; later stages join as they are built. The plan is recorded first so the run shows
the prediction beside what was measured.
"""

from __future__ import annotations

from saelab.pipeline.extract import describe_result, run_extract
from saelab.pipeline.extract_job import ExtractOptions
from saelab.pipeline.plan import plan_extract, record_plan, render_plan
from saelab.progress import say


def run_demo(run: str = "runs/demo", hooks: str = "resid_post.0-29", quiet: bool = False) -> None:
    opts = ExtractOptions(model="default", hooks=hooks, run=run, quiet=quiet)
    say("[bold]1/2 plan[/bold]", quiet)
    result, lm = plan_extract(opts, calibrate=True)
    if not quiet:
        render_plan(result)
    record_plan(result)
    say("[bold]2/2 extract[/bold]", quiet)
    out = run_extract(opts, lm=lm)
    print(describe_result(out))
    print(f"describe it again with: saelab show {run}")
