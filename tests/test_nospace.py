"""A full disk is one line naming what was written and the space it needs; nothing half
written stays behind, and once space is freed the same write ends byte-identical.

On a real small file system: a 2 MiB tmpfs when this process may mount one (root, as on CI),
else a file size limit (RLIMIT_FSIZE) in a child process, where writes fail with EFBIG
instead of ENOSPC; skipped only when neither is possible.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

from saelab.errors import SaelabError
from saelab.run import TMP_PREFIX, atomic_write_bytes, tree_digests
from saelab.sae import SAE, SAEConfig
from saelab.store import ActivationWriter, Trace, TraceWriter, open_activations
from saelab.store.codes import CodesWriter

HOOK = "blocks.0.hook_resid_post"
SRC = Path(__file__).resolve().parent.parent / "src"


def _mount(size: str) -> Path | None:
    if os.geteuid() != 0:
        return None
    d = Path(tempfile.mkdtemp(prefix="saelab-full-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(d)],
                       capture_output=True)  # fmt: skip
    if r.returncode != 0:
        d.rmdir()
        return None
    return d


@pytest.fixture
def small_fs():
    """A 2 MiB file system, unmounted afterwards."""
    d = _mount("2m")
    if d is None:
        pytest.skip("cannot mount a tmpfs here; test_file_size_limit covers this case")
    yield d
    subprocess.run(["umount", str(d)], check=False)
    d.rmdir()


def _acts(rows: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 256)).astype(np.float32)


def _write(root: Path, shard: int, rows: int) -> dict[str, str]:
    w = ActivationWriter(root, hooks=[HOOK], d_model={HOOK: 256}, dtype="float32")
    return w.write_shard(
        shard,
        prompt_index=np.arange(2),
        token_ids=[np.arange(rows // 2, dtype=np.int32)] * 2,
        acts={HOOK: _acts(rows, shard)},
    )


def _leftovers(root: Path) -> list[Path]:
    return [p for p in root.rglob("*") if p.name.startswith(TMP_PREFIX)]


def test_a_full_disk_is_one_line_leaves_no_half_shard_and_resumes_identically(small_fs, tmp_path):
    root = small_fs / "activations"
    _write(root, 0, 400)  # ~0.4 MB: fits
    filler = small_fs / "filler"
    free = os.statvfs(small_fs).f_bavail * os.statvfs(small_fs).f_frsize
    filler.write_bytes(b"\0" * max(0, free - 300_000))
    with pytest.raises(SaelabError) as e:
        _write(root, 1, 1200)  # ~1.2 MB: does not
    msg = str(e.value)
    assert "\n" not in msg and "no space left on device" in msg
    assert "activation shard 00001" in msg and "needs about 1.19 MiB" in msg and "free" in msg
    assert not _leftovers(small_fs) and not (root / "shards" / "00001").exists()
    assert open_activations(root).n_rows == 400  # the finished shard is intact
    filler.unlink()
    _write(root, 1, 1200)  # the same write, once space is freed
    ref = tmp_path / "activations"
    _write(ref, 0, 400)
    _write(ref, 1, 1200)
    assert tree_digests(root) == tree_digests(ref)


def test_other_writers_name_what_they_wrote(small_fs):
    (small_fs / "filler").write_bytes(b"\0" * (1900 * 1024))
    w = CodesWriter(small_fs / "run", HOOK, {"d_sae": 64, "positions": "all"})
    n = 40_000
    with pytest.raises(SaelabError, match=r"no space left on device writing codes shard 00003"):
        w.write_shard(3, indptr=np.arange(n + 1), indices=np.zeros(n, np.int64) + 5,
                      values=np.ones(n, np.float32), prompt_index=np.arange(1),
                      row_offsets=np.array([0, n]))  # fmt: skip
    sae = SAE(SAEConfig(d_in=256, d_sae=1024, architecture="relu"))
    with pytest.raises(SaelabError, match=r"writing SAE blocks\.0.* needs about 2.01 MiB"):
        sae.save(small_fs / "saes" / "blocks.0")
    with pytest.raises(SaelabError, match=r"writing big\.bin .*needs about 500 KiB"):
        atomic_write_bytes(small_fs / "big.bin", b"x" * 512_000)
    traces = [Trace(0, np.arange(3), np.arange(300), "a", "a", "length",
                    hidden={HOOK: _acts(303)})]  # fmt: skip
    with pytest.raises(SaelabError, match=r"writing trace shard 00000"):
        TraceWriter(small_fs / "traces", hooks=[HOOK], d_model={HOOK: 256},
                    dtype="float32").write_shard(0, traces)  # fmt: skip
    assert not _leftovers(small_fs)
    assert not (small_fs / "saes" / "blocks.0").exists() and not (small_fs / "big.bin").exists()


_CHILD = """
import resource, signal, sys
import numpy as np
sys.path.insert(0, sys.argv[2])
from saelab.errors import SaelabError
from saelab.store import ActivationWriter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
w = ActivationWriter(sys.argv[1], hooks=["h.0"], d_model={"h.0": 256}, dtype="float32")
resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))
x = np.random.default_rng(0).standard_normal((1200, 256)).astype(np.float32)
try:
    w.write_shard(0, prompt_index=np.arange(1), token_ids=[np.arange(1200)], acts={"h.0": x})
except SaelabError as e:
    print(e)
    sys.exit(2)
"""


def test_file_size_limit(tmp_path):
    """RLIMIT_FSIZE works without mounting: a chunk past the limit fails with EFBIG."""
    r = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "a"), str(SRC)],
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 2, r.stderr[-2000:]
    out = r.stdout.strip()
    assert "\n" not in out and "activation shard 00000" in out and "file size limit" in out
    assert not _leftovers(tmp_path) and not (tmp_path / "a" / "shards" / "00000").exists()
