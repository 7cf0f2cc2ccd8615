"""Disk first: the hub cache listed and cleared (blob and link), a disk report before any
work, and SAE download sizes from HEAD requests alone; on the loopback hub server."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from huggingface_hub import hf_hub_download

from saelab.cli import main
from saelab.errors import BudgetError, SaelabError
from saelab.hub import Fetcher, cache
from saelab.hub.cache_admin import clear_cache, list_cache
from saelab.hub.disk import disk_report
from saelab.models.hooks import parse_hooks
from saelab.sae import SAE, SAEConfig
from saelab.sae.pretrained import (
    SAESource,
    expand_saes,
    load_sae,
    sae_disk_report,
    sae_downloads,
)
from tests import hub_server

hub = hub_server.hub
MB = 1 << 20


def blob(n: int, seed: int) -> bytes:
    return (
        torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed))
        .to(torch.uint8)
        .numpy()
        .tobytes()
    )


def on_disk(root) -> int:
    """Bytes of the regular files in the repos' blobs/ folders (links not followed): what the
    cached content takes (refs and lock files are a few bytes of bookkeeping)."""
    total = 0
    for d, _, names in os.walk(root):
        if os.path.basename(d) != "blobs":
            continue
        for n in names:
            p = os.path.join(d, n)
            if not os.path.islink(p):
                total += os.path.getsize(p)
    return total


@pytest.fixture
def filled(hub):  # noqa: F811
    files = {
        ("org/sae-a", "layer_0/cfg.json"): b'{"d_in": 4}',
        ("org/sae-a", "layer_0/sae_weights.safetensors"): blob(300_000, 1),
        ("org/sae-a", "layer_1/cfg.json"): b'{"d_in": 5}',
        ("org/sae-a", "layer_1/sae_weights.safetensors"): blob(200_000, 2),
        ("org/sae-a", "layer_1/copy.bin"): blob(200_000, 2),  # same bytes: one blob, two links
        ("org/other", "model.bin"): blob(50_000, 3),
    }
    for (repo, path), data in files.items():
        hub.add_file(repo, path, data)
        hf_hub_download(repo, path)
    return files


def test_list_shows_repos_revisions_sizes_and_total(hub, filled):  # noqa: F811
    listing = list_cache()
    assert [r.repo_id for r in listing.repos] == ["org/other", "org/sae-a"]
    a = listing.repos[1]
    distinct = {data for (repo, _), data in filled.items() if repo == "org/sae-a"}
    assert a.size == sum(len(d) for d in distinct)  # the shared blob counts once
    ((rev),) = a.revisions
    assert rev.commit == hub.commit("org/sae-a") and rev.refs == ("main",) and rev.n_files == 5
    assert listing.total == on_disk(hub.cache)  # every byte the cache folder holds
    only = list_cache("ORG/SAE-*")
    assert [r.repo_id for r in only.repos] == ["org/sae-a"] and not only.files
    files = list_cache("org/sae-a/layer_1/*").files
    assert sorted(f.path for f in files) == [
        "layer_1/cfg.json",
        "layer_1/copy.bin",
        "layer_1/sae_weights.safetensors",
    ]
    assert list_cache("nobody/*").repos == []


def test_clear_files_removes_link_and_blob(hub, filled):  # noqa: F811
    before = on_disk(hub.cache)
    dry = clear_cache("org/sae-a/layer_0/*", dry_run=True)
    assert dry.freed == 300_000 + len(b'{"d_in": 4}') and on_disk(hub.cache) == before
    done = clear_cache("org/sae-a/layer_0/*")
    assert done.freed == dry.freed and len(done.removed_files) == 2
    assert on_disk(hub.cache) == before - done.freed  # blobs gone, not just links
    commit = hub.commit("org/sae-a")
    assert cache.lookup(hub.cache, "org/sae-a", "layer_0/cfg.json", "main") is None
    assert cache.lookup(hub.cache, "org/sae-a", "layer_1/cfg.json", commit) is not None
    # one of two links to a shared blob: the blob stays for the other
    shared = clear_cache("org/sae-a/layer_1/copy.bin")
    assert shared.freed == 0
    kept = cache.lookup(hub.cache, "org/sae-a", "layer_1/sae_weights.safetensors", "main")
    assert kept is not None and kept.read_bytes() == filled[("org/sae-a", "layer_1/copy.bin")]
    gets = hub.body_gets("org/sae-a", "layer_1/sae_weights.safetensors")
    hf_hub_download("org/sae-a", "layer_1/sae_weights.safetensors")
    assert hub.body_gets("org/sae-a", "layer_1/sae_weights.safetensors") == gets  # still cached
    # clearing the rest of a repo's files removes the repo, refs and all
    clear_cache("org/sae-a/*")
    assert not cache.repo_dir(hub.cache, "org/sae-a").exists()


def test_clear_repos_and_leftovers(hub, filled):  # noqa: F811
    # a link removed by hand leaves its blob behind: listed, and cleared with the repo
    cache.lookup(hub.cache, "org/sae-a", "layer_0/sae_weights.safetensors", "main").unlink()
    (hub.cache / "models--org--sae-a" / "blobs" / "abc.incomplete").write_bytes(b"x" * 1000)
    a = list_cache("org/sae-a").repos[0]
    assert a.unreferenced == 300_000 and a.incomplete == 1000
    assert list_cache().total == on_disk(hub.cache)
    before = on_disk(hub.cache)
    done = clear_cache("org/sae-*")
    assert done.removed_repos == ["org/sae-a"]
    assert on_disk(hub.cache) == before - done.freed
    assert not cache.repo_dir(hub.cache, "org/sae-a").exists()
    assert cache.repo_dir(hub.cache, "org/other").exists()
    with pytest.raises(SaelabError, match="matches"):
        clear_cache("org/sae-*")
    with pytest.raises(SaelabError, match="no cache pattern"):
        clear_cache(" ")


def test_cache_cli(hub, filled, capsys):  # noqa: F811
    def run(*args: str) -> tuple[int, str]:
        try:
            main(list(args))
            code = 0
        except SystemExit as e:
            code = int(e.code or 0)
        got = capsys.readouterr()
        return code, " ".join((got.out + got.err).split())

    code, out = run("cache", "list")
    assert code == 0 and "org/sae-a" in out and "main" in out and "total:" in out
    code, out = run("cache", "clear", "org/other", "--dry-run")
    assert code == 0 and "would remove 1 item(s)" in out
    assert cache.repo_dir(hub.cache, "org/other").exists()
    code, out = run("cache", "clear", "org/other", "--yes")
    assert code == 0 and "freed 48.8 KiB" in out
    assert not cache.repo_dir(hub.cache, "org/other").exists()
    code, out = run("cache", "clear", "org/other", "--yes")
    assert code != 0 and out.startswith("saelab: error:") and "matches 'org/other'" in out


def test_disk_report_before_any_work(hub, filled, tmp_path):  # noqa: F811
    hub.add_file("org/sae-b", "layer_0/w.bin", blob(400_000, 4))
    hub.add_file("org/sae-b", "layer_1/w.bin", blob(300_000, 5))
    n_requests = len(hub.requests)
    report = disk_report(
        [
            ["hf://org/sae-a/layer_0/cfg.json", "hf://org/sae-a/layer_0/sae_weights.safetensors"],
            "hf://org/sae-b/layer_0/w.bin",
            "hf://org/sae-b/layer_1/w.bin",
        ],
        tmp_path / "run",
        writes=10_000,
        evict=True,
    )
    new = hub.requests[n_requests:]
    new = [(m, p) for m, p in new if "/resolve/" in p]  # (huggingface_hub may ask its /api)
    assert [m for m, _ in new] == ["HEAD", "HEAD"]  # cached files need none; no body fetched
    assert report.reused == 300_000 + len(b'{"d_in": 4}')
    assert report.to_download == 700_000
    assert report.download_peak == 400_000 and report.peak == 410_000  # one group at a time
    assert report.cache_total == list_cache().total == on_disk(hub.cache)
    assert abs(report.target_free - shutil.disk_usage(tmp_path).free) < 64 * MB
    text = "\n".join(report.lines())
    assert "are cached (reused)" in text and "planned peak" in text
    report.check(max_disk=1 * MB)
    with pytest.raises(BudgetError, match="hf://org/sae-b/layer_0/w.bin take 391 KiB"):
        report.check(max_disk=350_000)
    assert disk_report(["hf://org/sae-b/layer_0/w.bin"], tmp_path, evict=False).peak == 400_000


def saelens_release(root, layers=(2, 4), d_in=64, d_sae=256) -> str:
    for layer in layers:
        torch.manual_seed(layer)
        sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture="relu"))
        with torch.no_grad():
            for p in sae.parameters():
                p.normal_()
        sae.save(root / "org/rel" / f"layer_{layer}")
    return "hf://org/rel/layer_{L}"


def test_sae_sizes_from_headers_refuse_before_any_download(hub, tmp_path):  # noqa: F811
    pattern = saelens_release(hub.root)
    sources = expand_saes(pattern, parse_hooks("resid_post.2,resid_post.4", 30))
    groups = sae_downloads(sources, Fetcher(quiet=True))
    report = disk_report(groups, tmp_path, evict=True)
    with pytest.raises(BudgetError, match="max_disk"):
        report.check(max_disk=50_000)  # one layer is ~131 KB
    bodies = [p for m, p in hub.requests if m == "GET" and "/resolve/" in p]
    assert not bodies  # HEAD requests only: no file body was fetched
    assert [[h.path for h in g] for g in groups] == [
        ["layer_2/cfg.json", "layer_2/sae_weights.safetensors"],
        ["layer_4/cfg.json", "layer_4/sae_weights.safetensors"],
    ]
    on_server = [sum((hub.root / "org/rel" / h.path).stat().st_size for h in g) for g in groups]
    assert [sum(f.size for f in g) for g in report.groups] == on_server
    # the same files are what loading fetches
    loaded = load_sae(sources[0].location, Fetcher(quiet=True))
    assert sorted(p.name for p in loaded.files) == ["cfg.json", "sae_weights.safetensors"]
    assert sae_downloads([SAESource(str(tmp_path))]) == []  # local SAEs download nothing
    # the one call a stage makes first: refused here, the same sizes reported otherwise
    with pytest.raises(BudgetError, match="max_disk"):
        sae_disk_report(sources, tmp_path, max_disk=50_000)
    ok = sae_disk_report(sources, tmp_path, max_disk=1 * MB)
    assert ok.reused == on_server[0]  # layer 2 was loaded above: in the cache now
    assert ok.download_peak == on_server[1] and ok.to_download == on_server[1]
