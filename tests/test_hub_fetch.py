"""Fetching hub files within a disk budget, against the loopback hub (real HTTP, real files).

What matters to a user with a small disk: each file is downloaded once, a file that cannot fit
is refused before any byte moves, a released file really leaves the disk, and a dropped
connection never leaves a half file that a later run would trust.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from huggingface_hub import hf_hub_download

from saelab.errors import BudgetError, SaelabError
from saelab.hub import Fetcher, HubPath, parse_hf_uri
from tests import hub_server
from tests.hub_server import HubServer

# The loopback hub fixture. Bound by assignment, not `from ... import hub`: ruff reports an
# imported fixture as redefined (F811) by every test parameter named after it.
hub = hub_server.hub

REPO = "org/suite"


def _payload(n: int, seed: int) -> bytes:
    """Distinct, incompressible bytes per file, so blobs never coincide by accident."""
    return (seed.to_bytes(4, "little") + os.urandom(n))[:n]


def _cache_entries(cache: Path) -> list[Path]:
    """Everything in the hub cache that holds or names file content (lock files aside)."""
    if not cache.exists():
        return []
    out = []
    for root, _dirs, files in os.walk(cache):
        if ".locks" in Path(root).relative_to(cache).parts:
            continue
        out += [Path(root) / f for f in files if f != "CACHEDIR.TAG"]
    return out


def _cache_bytes(cache: Path) -> int:
    """Bytes of file content (blobs, half-written downloads) in the cache; links and the
    40-byte refs/ files that name a branch's commit count 0."""
    total = 0
    for p in _cache_entries(cache):
        try:
            if not p.is_symlink() and "refs" not in p.relative_to(cache).parts:
                total += p.stat().st_size
        except FileNotFoundError:
            pass  # deleted or renamed while we looked
    return total


# -- hf:// URIs -----------------------------------------------------------------------------


def test_parse_hf_uri_forms() -> None:
    assert parse_hf_uri("hf://org/name/layer_3/params.npz") == HubPath(
        "org/name", "layer_3/params.npz", None
    )
    assert parse_hf_uri("hf://org/name/W_enc_0.safetensors@v1.0") == HubPath(
        "org/name", "W_enc_0.safetensors", "v1.0"
    )
    assert parse_hf_uri("hf://org/name/a.bin@refs/pr/3").revision == "refs/pr/3"
    assert parse_hf_uri("hf://org/name@dev/sub/a.bin") == HubPath("org/name", "sub/a.bin", "dev")
    assert parse_hf_uri("hf://org/name/sub?revision=abc") == HubPath("org/name", "sub", "abc")
    assert parse_hf_uri("hf://org/name") == HubPath("org/name", "", None)
    assert str(parse_hf_uri("hf://org/name/a.bin@v2")) == "hf://org/name/a.bin@v2"


@pytest.mark.parametrize(
    "bad", ["org/name/a.bin", "hf://org", "hf://org//a.bin", "hf://org/name/a/../b", "hf://o/n/a@"]
)
def test_parse_hf_uri_rejects_malformed(bad: str) -> None:
    with pytest.raises(SaelabError, match=r"hf://ORG/NAME/PATH\[@REVISION\]"):
        parse_hf_uri(bad)


# -- downloads and the cache ----------------------------------------------------------------


def test_each_file_downloaded_once(hub: HubServer) -> None:
    a = hub.add_file(REPO, "W_enc_0.safetensors", _payload(300_000, 0))
    b = hub.add_file(REPO, "sub/W_enc_1.safetensors", _payload(200_000, 1))
    f = Fetcher(quiet=True)
    paths = [f.fetch(REPO, "W_enc_0.safetensors") for _ in range(3)]
    paths += [f.fetch(REPO, "sub/W_enc_1.safetensors") for _ in range(2)]
    assert hub.body_gets(REPO, "W_enc_0.safetensors") == 1
    assert hub.body_gets(REPO, "sub/W_enc_1.safetensors") == 1
    assert paths[0].read_bytes() == a.read_bytes() and paths[3].read_bytes() == b.read_bytes()
    assert f.stats.downloads == 2 and f.stats.cache_hits == 3
    assert f.stats.bytes_downloaded == 500_000
    assert f.stats.gets[(REPO, "W_enc_0.safetensors", None)] == 1
    # the files sit where huggingface_hub looks, so it reuses them without a body download
    assert Path(hf_hub_download(REPO, "W_enc_0.safetensors")) == paths[0]
    assert hub.body_gets(REPO, "W_enc_0.safetensors") == 1
    assert paths[0].is_relative_to(hub.cache) and paths[0].is_symlink()


def test_file_from_huggingface_hub_is_a_cache_hit(hub: HubServer) -> None:
    hub.add_file(REPO, "cfg.json", b'{"d_in": 8}')
    first = Path(hf_hub_download(REPO, "cfg.json"))
    f = Fetcher(quiet=True)
    assert f.fetch(REPO, "cfg.json") == first
    assert hub.body_gets(REPO, "cfg.json") == 1 and f.stats.cache_hits == 1


def test_pinned_commit_needs_no_request_once_cached(hub: HubServer) -> None:
    hub.add_file(REPO, "a.bin", _payload(1000, 2))
    f = Fetcher(quiet=True)
    commit = hub.commit(REPO)
    p = f.fetch(REPO, "a.bin", revision=commit)
    n = len(hub.requests)
    assert f.fetch(REPO, "a.bin", revision=commit) == p
    assert len(hub.requests) == n  # a commit hash names content that cannot change


def test_size_of_existing_and_missing_files(hub: HubServer) -> None:
    hub.add_file(REPO, "W_enc_0.safetensors", _payload(12_345, 3))
    f = Fetcher(quiet=True)
    assert f.size(REPO, "W_enc_0.safetensors") == 12_345
    assert f.size(REPO, "W_dec_0.safetensors") is None
    assert all(method == "HEAD" for method, _ in hub.requests if "/resolve/" in _)
    with pytest.raises(SaelabError, match="org/missing.*not found.*check its name"):
        f.size("org/missing", "W_enc_0.safetensors")


def test_missing_repo_file_and_revision_are_clear_errors(hub: HubServer) -> None:
    hub.add_file(REPO, "a.bin", b"x")
    f = Fetcher(quiet=True)
    with pytest.raises(SaelabError, match="org/missing.*not found"):
        f.fetch("org/missing", "a.bin")
    with pytest.raises(SaelabError, match=r"hf://org/suite/b.bin does not exist"):
        f.fetch(REPO, "b.bin")
    with pytest.raises(SaelabError, match="no revision 'v9'"):
        f.fetch(REPO, "a.bin", revision="v9")
    assert hub.body_gets(REPO, "a.bin") == 0


# -- eviction -------------------------------------------------------------------------------


def test_release_with_eviction_deletes_link_and_blob(hub: HubServer) -> None:
    hub.add_file(REPO, "W_enc_0.safetensors", _payload(100_000, 4))
    f = Fetcher(evict=True, quiet=True)
    p = f.fetch(REPO, "W_enc_0.safetensors")
    blob = Path(os.path.realpath(p))
    assert blob.is_file() and blob.parent.name == "blobs"
    f.release(p)
    assert not p.exists() and not p.is_symlink() and not blob.exists()
    assert _cache_entries(hub.cache) == []
    assert f.stats.held_bytes == 0 and f.stats.evicted_bytes == 100_000


def test_release_without_eviction_keeps_the_file(hub: HubServer) -> None:
    hub.add_file(REPO, "a.bin", _payload(50_000, 5))
    f = Fetcher(evict=False, quiet=True)
    p = f.fetch(REPO, "a.bin")
    f.release(p)
    assert p.is_file() and f.stats.held_bytes == 0
    f.evict_all()  # explicit: deletes whatever this Fetcher handed out
    assert _cache_entries(hub.cache) == []


def _watch_disk(cache: Path) -> tuple[list[int], threading.Event, threading.Thread]:
    """Sample the cache's real size every millisecond, downloads in flight included."""
    samples: list[int] = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            samples.append(_cache_bytes(cache))
            stop.wait(0.001)

    thread = threading.Thread(target=watch, daemon=True)
    thread.start()
    return samples, stop, thread


def _add_layers(hub: HubServer, sizes: list[int]) -> None:
    for layer, n in enumerate(sizes):
        hub.add_file(REPO, f"W_enc_{layer}.safetensors", _payload(n, 10 + layer))


SIZES = [600_000, 900_000, 750_000, 1_200_000, 400_000]


def test_layer_sequence_with_eviction_holds_one_layer_at_a_time(hub: HubServer) -> None:
    _add_layers(hub, SIZES)
    f = Fetcher(evict=True, quiet=True)
    samples, stop, watcher = _watch_disk(hub.cache)
    try:
        for _prompt_set in range(2):  # eviction means a second pass downloads again
            for layer, n in enumerate(SIZES):
                p = f.fetch(REPO, f"W_enc_{layer}.safetensors")
                assert p.stat().st_size == n
                assert _cache_bytes(hub.cache) == n  # this layer and nothing else
                f.release(p)
                assert _cache_bytes(hub.cache) == 0
    finally:
        stop.set()
        watcher.join()
    assert samples and max(samples) <= max(SIZES)
    assert f.stats.peak_cache_bytes == max(SIZES)
    assert f.stats.downloads == 2 * len(SIZES)
    assert _cache_entries(hub.cache) == []


def test_automatic_eviction_stays_within_max_disk(hub: HubServer) -> None:
    _add_layers(hub, SIZES)
    budget = int(1.5 * max(SIZES))  # under two of the largest layer: eviction must happen
    f = Fetcher(max_disk=budget, quiet=True)
    samples, stop, watcher = _watch_disk(hub.cache)
    try:
        for _prompt_set in range(2):
            for layer in range(len(SIZES)):
                p = f.fetch(REPO, f"W_enc_{layer}.safetensors")
                assert _cache_bytes(hub.cache) <= budget
                f.release(p)
    finally:
        stop.set()
        watcher.join()
    assert samples and max(samples) <= budget
    assert f.stats.peak_cache_bytes <= budget
    f.evict_all()
    assert _cache_entries(hub.cache) == []


def test_automatic_mode_keeps_files_that_fit_for_the_next_pass(hub: HubServer) -> None:
    _add_layers(hub, SIZES)
    f = Fetcher(max_disk=10 * sum(SIZES), quiet=True)  # room for all: nothing to evict
    for _prompt_set in range(2):
        for layer in range(len(SIZES)):
            f.release(f.fetch(REPO, f"W_enc_{layer}.safetensors"))
    assert f.stats.downloads == len(SIZES) and f.stats.cache_hits == len(SIZES)
    assert f.stats.kept_bytes == sum(SIZES) == _cache_bytes(hub.cache)
    f.evict_all()
    assert _cache_entries(hub.cache) == [] and f.stats.kept_bytes == 0


# -- budget -------------------------------------------------------------------------------


def test_max_disk_below_file_size_is_refused_before_download(hub: HubServer) -> None:
    hub.add_file(REPO, "W_dec_0.safetensors", _payload(2_000_000, 6))
    f = Fetcher(max_disk=1_000_000, quiet=True)
    with pytest.raises(BudgetError) as err:
        f.fetch(REPO, "W_dec_0.safetensors")
    msg = str(err.value)
    for part in ("W_dec_0.safetensors", "1.91 MiB", "`max_disk` 977 KiB", "`evict`"):
        assert part in msg
    assert err.value.exit_code == 3
    assert hub.body_gets(REPO, "W_dec_0.safetensors") == 0  # the HEAD only
    assert _cache_bytes(hub.cache) == 0


def test_unreleased_files_count_against_the_budget(hub: HubServer) -> None:
    hub.add_file(REPO, "a.bin", _payload(600_000, 7))
    hub.add_file(REPO, "b.bin", _payload(600_000, 8))
    f = Fetcher(max_disk=1_000_000, quiet=True)
    pa = f.fetch(REPO, "a.bin")
    with pytest.raises(BudgetError, match="not yet released"):
        f.fetch(REPO, "b.bin")
    assert hub.body_gets(REPO, "b.bin") == 0
    f.release(pa)
    assert f.fetch(REPO, "b.bin").stat().st_size == 600_000
    assert not pa.exists()  # auto eviction: the budget is under two files


# -- broken connections and offline ---------------------------------------------------------


def test_cut_download_is_resumed_and_whole(hub: HubServer) -> None:
    src = hub.add_file(REPO, "W_enc_0.safetensors", _payload(3_000_000, 9))
    hub.cut(f"{REPO}/W_enc_0.safetensors", times=2)
    f = Fetcher(retries=3, backoff_s=0.01, quiet=True)
    p = f.fetch(REPO, "W_enc_0.safetensors")
    assert p.read_bytes() == src.read_bytes()
    assert hub.body_gets(REPO, "W_enc_0.safetensors") == 3
    assert f.stats.requests == 3 and f.stats.downloads == 1
    ranges = [r.range for r in hub.log if r.method == "GET"]
    assert ranges[0] is None and all(r and r.startswith("bytes=") for r in ranges[1:])
    assert not [e for e in _cache_entries(hub.cache) if e.name.endswith(".incomplete")]


def test_cut_more_often_than_retries_fails_and_leaves_nothing(hub: HubServer) -> None:
    src = hub.add_file(REPO, "W_enc_0.safetensors", _payload(3_000_000, 11))
    hub.cut(f"{REPO}/W_enc_0.safetensors", times=100)
    f = Fetcher(retries=2, backoff_s=0.01, quiet=True)
    with pytest.raises(SaelabError, match="failed after 3 attempts.*nothing was kept"):
        f.fetch(REPO, "W_enc_0.safetensors")
    assert hub.body_gets(REPO, "W_enc_0.safetensors") == 3
    assert _cache_bytes(hub.cache) == 0  # no blob, no .incomplete
    assert not [e for e in _cache_entries(hub.cache) if "snapshots" in e.parts]
    assert f.stats.held_bytes == 0
    # once the connection behaves, the same call downloads the whole file
    hub.cut(f"{REPO}/W_enc_0.safetensors", times=0)
    assert f.fetch(REPO, "W_enc_0.safetensors").read_bytes() == src.read_bytes()


def test_offline_without_cache_is_a_clear_error(hub: HubServer) -> None:
    hub.add_file(REPO, "a.bin", b"abc")
    hub.go_offline()
    f = Fetcher(quiet=True)
    with pytest.raises(SaelabError, match="not in the local cache.*HF_HUB_OFFLINE"):
        f.fetch(REPO, "a.bin")
    with pytest.raises(SaelabError, match="not in the local cache"):
        f.size(REPO, "a.bin")
    assert hub.requests == []


def test_offline_with_cache_uses_it_without_requests(hub: HubServer, monkeypatch) -> None:
    hub.add_file(REPO, "a.bin", b"abc")
    p = Fetcher(quiet=True).fetch(REPO, "a.bin")
    n = len(hub.requests)
    hub.go_offline()
    f = Fetcher(quiet=True)
    assert f.fetch(REPO, "a.bin") == p and f.size(REPO, "a.bin") == 3
    assert len(hub.requests) == n and f.stats.cache_hits == 1
