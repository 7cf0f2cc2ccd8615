"""`--executor ray` on a local Ray cluster with two logical GPUs (no external service): every
stage gives the bytes `--executor local` gives, a worker killed mid-unit changes nothing, a
killed driver resumes with the same command, a unit's user error crosses the boundary as
itself.

The cluster is started (and shut down) by a module fixture, as `ray.init(num_cpus=2,
num_gpus=2)`: Ray then places one worker per logical GPU and sets CUDA_VISIBLE_DEVICES, while
torch sees no GPU and runs on the CPU, as the local executor does.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import saelab
from saelab.atomic import file_digest
from saelab.cli import main
from saelab.errors import BudgetError, SaelabError
from saelab.pipeline.contrast import ContrastConfig, ContrastStage
from saelab.pipeline.driver import run_stage
from saelab.pipeline.encode import EncodeConfig, EncodeStage
from saelab.pipeline.executors import LocalExecutor
from saelab.pipeline.extract import ExtractStage
from saelab.pipeline.extract_job import ExtractConfig
from saelab.pipeline.inspect import InspectConfig, InspectStage
from saelab.pipeline.patch import PatchConfig, PatchStage
from saelab.pipeline.stage import Worker
from saelab.pipeline.traces import TracesStage
from saelab.pipeline.train import TrainConfig, TrainStage
from saelab.progress import WorkerRates
from saelab.run import RunFolder
from tests import hub_server
from tests.cli_errors import cli, one_line
from tests.test_encode import random_sae
from tests.test_encode_hub import gemma_release

ray = pytest.importorskip("ray")
from saelab.pipeline.executors_ray import RayExecutor  # noqa: E402

pytestmark = pytest.mark.slow
hub = hub_server.hub

RUN = "r"  # every run is `r` under its own working directory: records name relative paths
TRACES = "t"  # and the generation traces are `t` beside it
EXTRACT = dict(prompts="builtin:styles", limit=16, hooks="resid_post.3,resid_post.7",
               shard_size=4, run=RUN, quiet=True)  # fmt: skip
STAGES = [
    (ExtractStage, ExtractConfig(**EXTRACT)),
    (TrainStage, TrainConfig(run=RUN, hooks="resid_post.3,resid_post.7", k=8, expansion=2,
                             batch_size=64, epochs=2, holdout=4, splice=False, quiet=True)),
    (EncodeStage, EncodeConfig(run=RUN, saes=f"{RUN}/saes", quiet=True)),
    (ContrastStage, ContrastConfig(run=RUN, groups="formal,casual", quiet=True)),
    # generation traces, sampled: each shard seeds its own sampling, whichever worker runs it
    (TracesStage, ExtractConfig(prompts="builtin:styles", limit=4, generate=2, temperature=0.8,
                                hooks="resid_post.2", attentions="0", shard_size=2, run=TRACES,
                                quiet=True)),
    (PatchStage, PatchConfig(run=RUN, sweep="top:1", values="0,@20", prompts="p.txt",
                             generate=2, targets=" the, a", outcome=["excl=!"], batch_size=4,
                             quiet=True)),
]  # fmt: skip
#: patch's prompts (4 of them, one edit set per unit of 4 rows)
PATCH_PROMPTS = "Dear Sir, I write to\nhey what's up with\nThe committee has\nlol that was so\n"
#: what a record measures rather than computes
MEASURED = {"seconds", "peak_rss", "worker", "encode_seconds"}


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, num_gpus=2, include_dashboard=False, logging_level="WARNING")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="module")
def executor(cluster):
    """One executor for the module's in-process runs: its two workers keep the model."""
    ex = RayExecutor()
    yield ex
    ex.close()


def run_pipeline(folder: Path, executor) -> Path:  # noqa: ANN001
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "p.txt").write_text(PATCH_PROMPTS)
    cwd = os.getcwd()
    os.chdir(folder)
    try:
        for cls, config in STAGES:
            run_stage(cls(config), executor)
    finally:
        os.chdir(cwd)
    return folder / RUN


@pytest.fixture(scope="module")
def local(tmp_path_factory, smol) -> Path:
    worker = Worker()
    worker.adopt(smol)
    return run_pipeline(tmp_path_factory.mktemp("local"), LocalExecutor(worker))


def outputs(run: Path) -> dict[str, str]:
    """sha256 of every file a stage wrote (not the bookkeeping, not scratch checkpoints)."""
    return {
        p.relative_to(run).as_posix(): file_digest(p)
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.name not in ("manifest.json", "run.toml")
        and "checkpoints" not in p.relative_to(run).parts
    }  # fmt: skip


def recorded(run: Path) -> dict[str, dict[str, str]]:
    """Per stage: every file its manifest records (units' and the stage's own), as hashed."""
    out = {}
    for name, st in RunFolder(run).read_manifest()["stages"].items():
        files = dict(st.get("files", {}))
        for rec in st.get("units", {}).values():
            files.update(rec["files"])
        out[name] = files
    return out


def computed(run: Path, stage: str) -> dict[str, dict]:
    """A stage's unit records less what they measured (times, memory, worker)."""
    units = RunFolder(run).read_manifest()["stages"][stage]["units"]
    return {k: _computed(r) for k, r in units.items()}


def _computed(value: object) -> object:
    if isinstance(value, dict):
        return {k: _computed(v) for k, v in value.items() if k not in MEASURED}
    if isinstance(value, list):
        return [_computed(v) for v in value]
    return value


def workers_of(run: Path, stage: str) -> list[str]:
    units = RunFolder(run).read_manifest()["stages"][stage]["units"]
    return [r["worker"] for r in units.values()]


@pytest.fixture(scope="module")
def ray_run(tmp_path_factory, executor) -> Path:
    return run_pipeline(tmp_path_factory.mktemp("ray"), executor)


def test_every_stage_is_byte_identical_to_local(local, ray_run, executor):
    assert outputs(ray_run) == outputs(local)
    traces = [outputs(r.parent / TRACES) for r in (ray_run, local)]
    assert traces[0] == traces[1] and any(k.startswith("traces/") for k in traces[0])
    assert recorded(ray_run.parent / TRACES) == recorded(local.parent / TRACES)
    rec_ray, rec_local = recorded(ray_run), recorded(local)
    assert rec_ray == rec_local
    assert set(rec_ray) == {"extract", "train", "encode", "contrast", "patch"}
    for files in rec_ray.values():  # the records say what is on disk
        assert all(file_digest(ray_run / rel) == h for rel, h in files.items())
    for stage in rec_ray:  # equal statistics, metrics, counts in the records
        assert computed(ray_run, stage) == computed(local, stage), stage
    texts = [pq.read_table(r / "patch" / "results.parquet").column("text").to_pylist()
             for r in (ray_run, local)]  # fmt: skip
    assert texts[0] == texts[1] and len(texts[0]) == 4 * 3
    # the work was spread: both workers ran extract shards, none of it in this process
    pids = {w["pid"] for w in executor.workers()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert len(set(workers_of(ray_run, "extract"))) == 2
    assert {int(w.split(":")[1]) for w in workers_of(ray_run, "patch")} <= pids


def test_inspect_is_byte_identical_to_local(local, executor, smol, tmp_path):
    """inspect's section runs on a Ray worker (the model from the worker's cache) and
    writes the bytes the local executor writes, the hook's cards included."""
    worker = Worker()
    worker.adopt(smol)
    runs = []
    for name, ex in (("local", LocalExecutor(worker)), ("ray", executor)):
        shutil.copytree(local.parent, tmp_path / name)
        cwd = os.getcwd()
        os.chdir(tmp_path / name)
        try:
            config = InspectConfig(run=RUN, hook="resid_post.7", features="0-3", top=4, quiet=True)
            run_stage(InspectStage(config), ex)
        finally:
            os.chdir(cwd)
        runs.append(tmp_path / name / RUN)
    cards = [{k: v for k, v in outputs(r).items() if k.startswith("inspect/")} for r in runs]
    assert cards[0] == cards[1] and len(cards[0]) == 4  # the section's pair and the hook's
    assert recorded(runs[0])["inspect"] == recorded(runs[1])["inspect"]
    assert computed(runs[0], "inspect") == computed(runs[1], "inspect")
    pids = {w["pid"] for w in executor.workers()}
    assert {int(w.split(":")[1]) for w in workers_of(runs[1], "inspect")} <= pids


def test_show_lists_each_units_worker_and_time(ray_run, capsys):
    main(["show", "--run", str(ray_run), "--units"])
    out = capsys.readouterr().out
    units = RunFolder(ray_run).read_manifest()["stages"]["extract"]["units"]
    for key, rec in units.items():
        row = next(ln for ln in out.splitlines() if key in ln)
        assert rec["worker"] in row
    assert "2 workers:" in out


def test_a_worker_killed_mid_unit_changes_nothing(local, executor, tmp_path):
    folder = tmp_path / "killed"
    folder.mkdir()
    cwd = os.getcwd()
    os.chdir(folder)
    errors: list[BaseException] = []

    def extract() -> None:
        try:
            run_stage(ExtractStage(ExtractConfig(**EXTRACT)), executor)
        except BaseException as e:  # noqa: BLE001  (re-raised in the test's thread)
            errors.append(e)

    before = len(executor.deaths)
    thread = threading.Thread(target=extract)
    try:
        thread.start()
        deadline = time.time() + 300
        while not executor.running and time.time() < deadline:
            time.sleep(0.01)
        time.sleep(0.2)  # the worker is inside the unit (its model is loaded already)
        name, (pid, unit) = next(iter(executor.running.items()))
        os.kill(pid, signal.SIGKILL)
        thread.join(600)
    finally:
        os.chdir(cwd)
    assert not errors, errors
    died = executor.deaths[before:]
    assert [(d["unit"], d["pid"]) for d in died] == [(unit, pid)]
    run = folder / RUN
    assert outputs(run)["prompts.parquet"] == outputs(local)["prompts.parquet"]
    local_store = {k: v for k, v in outputs(local).items() if k.startswith("activations/")}
    assert {k: v for k, v in outputs(run).items() if k.startswith("activations/")} == local_store
    assert recorded(run)["extract"] == recorded(local)["extract"]
    units = RunFolder(run).read_manifest()["stages"]["extract"]["units"]
    assert units[unit]["worker"] != name  # run again by another worker
    assert not [p for p in run.rglob(".tmp-*")], "no half-written file keeps its place"
    assert len(executor.pool.slots) == 2  # the dead worker was replaced


def test_a_units_user_error_stops_the_run_as_itself(local, executor, tmp_path):
    """An SAE trained on layer 7 used for layer 3 with --strict: the unit refuses, and the
    driver raises that SaelabError (type and one-line message), not Ray's wrapper."""
    msgs = []
    cwd = os.getcwd()
    for name, ex in (("local", LocalExecutor()), ("ray", executor)):
        shutil.copytree(local, tmp_path / name / RUN)
        os.chdir(tmp_path / name)
        sae = f"{RUN}/saes/blocks.7.hook_resid_post"
        cfg = EncodeConfig(run=RUN, saes=sae, hooks="resid_post.3", strict=True,
                           overwrite=True, quiet=True)  # fmt: skip
        try:
            with pytest.raises(SaelabError) as err:
                run_stage(EncodeStage(cfg), ex)
        finally:
            os.chdir(cwd)
        assert type(err.value) is SaelabError
        msgs.append(str(err.value))
    assert msgs[0] == msgs[1] and "drop --strict" in msgs[1] and "\n" not in msgs[1]


def _extract_cli(address: str) -> list[str]:
    return [sys.executable, "-m", "saelab", "extract", "--prompts", "builtin:styles",
            "--limit", "16", "--hooks", "resid_post.3,resid_post.7", "--shard-size", "4",
            "--run", RUN, "--executor", "ray", "--ray-address", address]  # fmt: skip


def _recorded_units(run: Path) -> int:
    try:
        st = json.loads((run / "manifest.json").read_text())["stages"].get("extract", {})
    except (OSError, ValueError, KeyError):
        return 0
    return len(st.get("units", {}))


def test_a_killed_driver_resumes_with_the_same_command(local, executor, cluster, tmp_path):
    executor.close()  # its workers hold the two logical GPUs the CLI's workers need
    folder = tmp_path / "driver"
    folder.mkdir()
    cmd = _extract_cli(cluster)
    src = str(Path(saelab.__file__).resolve().parents[1])
    env = {**os.environ, "PYTHONPATH": src}
    proc = subprocess.Popen(cmd, cwd=folder, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)  # fmt: skip
    deadline = time.time() + 400
    while _recorded_units(folder / RUN) == 0 and proc.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(60)
    done = _recorded_units(folder / RUN)
    assert 0 < done < 4, proc.stderr.read().decode() if proc.stderr else ""
    again = subprocess.run(cmd, cwd=folder, env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert f"resumed: {done} shard(s) were already done" in again.stdout
    run = folder / RUN
    local_store = {k: v for k, v in outputs(local).items() if k.startswith("activations/")}
    assert {k: v for k, v in outputs(run).items() if k.startswith("activations/")} == local_store
    assert recorded(run)["extract"] == recorded(local)["extract"]


def test_refusals_name_the_flag(cluster, capsys, tmp_path):
    code, err = cli(capsys, "extract", "--run", str(tmp_path / "x"), "--workers", "2")
    one_line(code, err, "--workers is for --executor ray")
    code, err = cli(capsys, "extract", "--run", str(tmp_path / "x"), "--limit", "2",
                    "--executor", "ray", "--workers", "5")  # fmt: skip
    one_line(code, err, "--workers 5", "2 GPUs", "lower --workers to 2")
    code, err = cli(capsys, "extract", "--run", str(tmp_path / "y"), "--executor", "ray",
                    "--ray-address", "127.0.0.1:1")  # fmt: skip
    one_line(code, err, "--ray-address 127.0.0.1:1: nothing answers there", "ray start --head")
    assert not (tmp_path / "y").exists()


def test_without_ray_the_executor_says_how_to_get_it(tmp_path):
    """Ray hidden from the import system: one line naming the extra to install."""
    code = (
        "import sys; sys.modules['ray'] = None\n"
        "from saelab.cli import main\n"
        f"main(['extract', '--run', {str(tmp_path / 'x')!r}, '--executor', 'ray'])\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1, r.stderr
    assert "pip install 'saelab[ray]'" in lines[0] and lines[0].startswith("saelab: error:")
    assert not (tmp_path / "x").exists()


def test_ray_is_imported_only_for_the_ray_executor():
    code = "import sys, saelab.cli; print('ray' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.stdout.strip() == "False", r.stderr
    sources = Path(saelab.__file__).resolve().parent
    pattern = re.compile(r"^\s*(import ray\b|from ray\b)", re.M)
    importers = sorted(p.name for p in sources.rglob("*.py") if pattern.search(p.read_text()))
    assert importers == ["ray_workers.py"]


def test_the_disk_budget_holds_per_node(local, executor, hub, tmp_path):
    """`--max-disk` is per node: the node's two workers split it. 1.5 layers' files fit one
    local worker (one layer held at a time) but not two workers on one node; 2.2 layers fit
    both, each layer's file is fetched once, and the codes are the local run's."""
    saes = {L: random_sae("jumprelu", f"blocks.{L}.hook_resid_post", d_sae=2048, seed=L)
            for L in (3, 7)}  # fmt: skip
    pattern = gemma_release(hub.root, saes)
    files = [f"layer_{L}/width_1k/average_l0_9/params.npz" for L in saes]
    size = max((hub.root / "org/gemma-like-res" / f).stat().st_size for f in files)

    def encode(name: str, ex, budget: float) -> Path:  # noqa: ANN001
        folder = tmp_path / name
        if not folder.exists():
            shutil.copytree(local, folder / RUN)
        cfg = EncodeConfig(run=str(folder / RUN), saes=pattern, hooks="resid_post.3,resid_post.7",
                           max_disk=f"{int(budget * size)}", overwrite=True,
                           quiet=True)  # fmt: skip
        run_stage(EncodeStage(cfg), ex)
        return folder / RUN

    ref = encode("local", LocalExecutor(), 1.5)
    gets = len(hub.requests)
    with pytest.raises(BudgetError) as err:
        encode("ray", executor, 1.5)
    assert "--max-disk is per node" in str(err.value) and "lower --workers" in str(err.value)
    assert not [p for m, p in hub.requests[gets:] if m == "GET"], "refused before a byte"
    run = encode("ray", executor, 2.2)
    codes = {k: v for k, v in outputs(run).items() if k.startswith("codes/")}
    assert codes and codes == {k: v for k, v in outputs(ref).items() if k.startswith("codes/")}
    for f in files:  # once for the local run, once for the cluster's one node
        assert hub.body_gets("org/gemma-like-res", f) == 2


def test_the_bar_shows_each_workers_rate():
    """Rates from (worker, size, seconds) records, against a plain sum per worker."""
    records = [("a", 4, 2.0), ("b", 4, 1.0), ("a", 2, 1.0), ("c", 3, 0.5)]
    rates = WorkerRates("prompts")
    assert rates.note() == ""
    rates.add(*records[0])
    assert rates.note() == ""  # one worker: the bar's own rate says it all
    for rec in records[1:]:
        rates.add(*rec)
    want = {w: sum(s for v, s, _ in records if v == w) / sum(t for v, _, t in records if v == w)
            for w in "abc"}  # fmt: skip
    assert rates.rates() == want
    assert rates.note() == "3 workers: 6, 4, 2 prompts/s"
