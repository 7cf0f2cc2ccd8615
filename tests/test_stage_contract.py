"""The stage contract: uniform unit records whose hashes hold, units that run in another process
from `stage.parts()` alone with the same bytes, and every stage's command built from its config
with the common options."""

from __future__ import annotations

import json
import multiprocessing
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pytest
import typer

from saelab.atomic import file_digest, tree_digests
from saelab.cli import COMMANDS, app, main
from saelab.pipeline.driver import run_stage
from saelab.pipeline.executors import LocalExecutor, execute_unit
from saelab.pipeline.extract import extract_stage
from saelab.pipeline.extract_job import ExtractConfig
from saelab.pipeline.options import StageOptions
from saelab.pipeline.stage import RECORD_KEYS, Worker
from saelab.run import RunFolder

STAGES = ("extract", "train", "encode", "contrast", "patch", "inspect", "report")
COMMON = ("--run", "--overwrite", "--max-memory", "--max-gpu-memory", "--max-disk", "--executor")


def _config(run: Path, prompts: Path) -> ExtractConfig:
    return ExtractConfig(prompts=str(prompts), hooks="resid_post.1,mlp_out.2", run=str(run),
                         shard_size=3, batch_size="2", quiet=True)  # fmt: skip


@pytest.fixture()
def prompts(tmp_path) -> Path:
    p = tmp_path / "p.txt"
    p.write_text("".join(f"Sentence {i} has {'a few words ' * (i % 4)}in it.\n" for i in range(8)))
    return p


def _remote(parts: tuple, unit: object) -> dict:
    """What a Ray actor does: rebuild the stage from its parts, run one unit, return its
    record (paths and hashes, never tensors)."""
    cls, config, run = parts
    return execute_unit(cls(config, run), unit, Worker())


class ProcessExecutor:
    """Units in fresh worker processes (spawned: nothing inherited but the arguments)."""

    name = "process"

    def run(self, stage, units):  # noqa: ANN001, ANN201
        ctx = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(2, mp_context=ctx) as pool:
            futures = [(u, pool.submit(_remote, stage.parts(), u)) for u in units]
            for unit, future in futures:
                yield unit, future.result()


def test_unit_records_are_uniform_and_their_hashes_hold(smol, tmp_path, prompts):
    run = tmp_path / "run"
    stage = extract_stage(_config(run, prompts), smol)
    run_stage(stage, LocalExecutor(Worker()))
    st = RunFolder(run).stage("extract")
    assert set(st["units"]) == {"shard-00000", "shard-00001", "shard-00002"}
    for rec in st["units"].values():
        assert set(RECORD_KEYS) <= set(rec) and rec["seconds"] >= 0 and rec["peak_rss"] > 0
        assert rec["bytes"] == sum((run / f).stat().st_size for f in rec["files"])
        assert all(file_digest(run / f) == h for f, h in rec["files"].items())
        assert rec["prompts"][1] - rec["prompts"][0] == 3 or rec["prompts"] == [6, 8]
    assert st["files"] == {"prompts.parquet": file_digest(run / "prompts.parquet")}
    recorded = {f for rec in st["units"].values() for f in rec["files"]}
    on_disk = {f"activations/{k}" for k in tree_digests(run / "activations")}
    # every file of the store is some unit's, but the store's two root groups (setup's)
    assert on_disk - recorded == {"activations/zarr.json", "activations/shards/zarr.json"}


def test_units_run_in_other_processes_from_their_parts_alone(smol, tmp_path, prompts):
    local, spawned = tmp_path / "local", tmp_path / "spawned"
    run_stage(extract_stage(_config(local, prompts), smol), LocalExecutor(Worker()))
    stage = extract_stage(_config(spawned, prompts))
    run_stage(stage, ProcessExecutor())  # type: ignore[arg-type]
    assert tree_digests(spawned / "activations") == tree_digests(local / "activations")
    workers = {r["worker"] for r in RunFolder(spawned).stage("extract")["units"].values()}
    assert workers and all(w != Worker().name for w in workers)  # not this process


@pytest.mark.parametrize("name", STAGES)
def test_every_stage_shows_the_common_options(capsys, name):
    try:
        main([name, "--help"])
    except SystemExit as e:
        assert not e.code
    out = capsys.readouterr().out
    for flag in COMMON:
        assert flag in out, (name, flag)


@pytest.mark.parametrize(("name", "config"), [(n, c) for n, c, _ in COMMANDS])
def test_each_option_is_one_documented_field(name, config):
    """The command's options are exactly its config's fields (less --quiet, the app's)."""
    params = typer.main.get_command(app).commands[name].params  # type: ignore[attr-defined]
    names = {p.name for p in params}
    assert names == set(config.model_fields) - {"quiet"}, name
    assert all(config.model_fields[n].description for n in names), name
    if issubclass(config, StageOptions):
        assert set(StageOptions.model_fields) - {"quiet"} <= names


def test_quiet_and_debug_belong_to_the_app_but_work_after_the_command(capsys, tmp_path):
    for args in (["--quiet", "show", "--run", str(tmp_path)], ["show", "--run", str(tmp_path),
                                                               "--quiet"]):  # fmt: skip
        with pytest.raises(SystemExit) as e:
            main(args)
        assert e.value.code == 2 and "not a saelab run folder" in capsys.readouterr().err


def test_lower_layers_name_a_field_and_the_cli_names_the_flag(capsys, tmp_path):
    with pytest.raises(SystemExit):
        main(["extract", "--keep-bits", "40", "--run", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert "--keep-bits 40 is out of range" in err and "`" not in err


def test_manifest_is_the_drivers_alone(smol, tmp_path, prompts):
    """A unit writes its files and returns a record; only the driver touches the manifest."""
    run = tmp_path / "run"
    stage = extract_stage(_config(run, prompts), smol)
    stage._binding = stage.prepare()
    RunFolder(run).write_binding("extract", stage._binding, sections=False)
    stage.setup()
    unit = stage.units()[0]
    rec = execute_unit(stage, unit, Worker())
    assert not (run / "manifest.json").exists()
    assert json.loads(json.dumps(rec)) == rec  # small and plain: it travels between processes


class DeadWriterExecutor(LocalExecutor):
    """Runs each unit the way a Ray retry does after a worker died while writing it: the
    dead writer's temporary folder stays in the store, then the unit runs again elsewhere."""

    def run(self, stage, units):  # noqa: ANN001, ANN201
        for unit in units:
            debris = stage.run.path / "activations" / "shards" / f".tmp-{unit.key}-dead"
            debris.mkdir(parents=True)
            (debris / "zarr.json").write_text("{half written")
            yield unit, execute_unit(stage, unit, self.worker)


def test_a_dead_writers_debris_is_gone_when_the_stage_ends(smol, tmp_path, prompts):
    local, retried = tmp_path / "local", tmp_path / "retried"
    run_stage(extract_stage(_config(local, prompts), smol), LocalExecutor(Worker()))
    run_stage(extract_stage(_config(retried, prompts), smol), DeadWriterExecutor(Worker()))
    assert tree_digests(retried / "activations") == tree_digests(local / "activations")
