"""What the per-chunk crc32c checksum costs the activation store, on write and on read.

Every chunk file ends with zarr v3's `crc32c` codec (4 bytes: the CRC-32C of the zstd
frame), so a damaged chunk is an error on read instead of a wrong value. Measured here, on
activation-like float16 rows (normal values plus a few "massive" dimensions, as in real
residual streams) chunked as the store chunks them (~1-2 MiB):

  write  `write_chunks` (encode, write the files, sha256 each) with and without the checksum
  read   `ChunkReader.rows` over the whole array (read, check the CRC, zstd, unshuffle),
         warm page cache, against the same array written without the checksum (the layout
         of stores written before it)

Rounds alternate A/B with the order rotated; the figures are medians of paired ratios
(checksum time / plain time). Before printing PASS it checks both arrays read back exactly
and that a flipped byte is caught with the checksum (and goes unseen without it).

    .venv/bin/python benchmarks/bench_checksum.py [--quick] [--json OUT]
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

import _common as C

C.use_repo_source()


def activations(rows: int, d: int = 576):  # noqa: ANN201
    import numpy as np

    rng = np.random.default_rng(0)
    x = rng.standard_normal((rows, d)).astype(np.float32)
    x[:, :8] *= 2e3  # the few huge dims real residual streams have
    return x.astype(np.float16)


def strip_checksums(array_dir: Path) -> None:
    """The array as stores written before the checksum hold it: no crc32c, 4 bytes fewer."""
    meta_file = array_dir / "zarr.json"
    meta = json.loads(meta_file.read_text())
    meta["codecs"] = [c for c in meta["codecs"] if c["name"] != "crc32c"]
    meta_file.write_text(json.dumps(meta))
    for chunk in array_dir.glob("c.*"):
        chunk.write_bytes(chunk.read_bytes()[:-4])


def main() -> None:
    p = C.base_parser(__doc__)
    p.add_argument("--rows", type=int, default=None, help="rows of 576 float16 (default 32768)")
    a = p.parse_args()
    rows = a.rows or (8192 if a.quick else 32768)
    budget = 5.0 if a.quick else 25.0
    min_rounds, max_rounds = (3, 8) if a.quick else (5, 30)

    import numpy as np

    from saelab.errors import SaelabError
    from saelab.store.chunks import ChunkEncoder, ChunkReader, write_chunks
    from saelab.store.codecs import ZSTD_LEVEL
    from saelab.store.shards import ArraySpec, rows_per_chunk, write_shard_group

    data = activations(rows)
    chunk = rows_per_chunk(data.shape[1] * 2, rows, 2**21)
    tmp = Path(tempfile.mkdtemp(prefix="saelab-bench-crc-"))
    try:
        write_shard_group(tmp / "crc", {"a": ArraySpec(data, chunk)}, attrs={}, base=tmp)
        shutil.copytree(tmp / "crc", tmp / "plain")
        strip_checksums(tmp / "plain" / "a")
        readers = {k: ChunkReader(tmp / k / "a") for k in ("crc", "plain")}
        encoders = {
            "crc": ChunkEncoder(2, ZSTD_LEVEL, checksum=True),
            "plain": ChunkEncoder(2, ZSTD_LEVEL, checksum=False),
        }

        # -- correctness first ----------------------------------------------------------
        ok = all(np.array_equal(r.rows(0, rows), data) for r in readers.values())
        caught = {}
        for k in ("crc", "plain"):
            flipped = tmp / f"flip-{k}"
            shutil.copytree(tmp / k, flipped)
            f = flipped / "a" / "c.1.0"
            raw = bytearray(f.read_bytes())
            raw[len(raw) // 3] ^= 0x10
            f.write_bytes(bytes(raw))
            try:
                back = ChunkReader(flipped / "a").rows(0, rows)
                caught[k] = not np.array_equal(back, data) and False
            except SaelabError:
                caught[k] = True
        ok = ok and caught["crc"]

        # -- timing ---------------------------------------------------------------------
        times: dict[str, list[float]] = {
            f"{op}_{k}": [] for op in ("write", "read") for k in readers
        }
        t_start, done = time.perf_counter(), 0
        while C.another_round(done, min_rounds, max_rounds, t_start, budget):
            for k in C.rotated(["crc", "plain"], done):
                out = tmp / f"w-{k}-{done}"
                t0 = time.perf_counter()
                write_chunks(out, data, chunk, encoders[k], out)
                times[f"write_{k}"].append(time.perf_counter() - t0)
                shutil.rmtree(out)
                t0 = time.perf_counter()
                readers[k].rows(0, rows)
                times[f"read_{k}"].append(time.perf_counter() - t0)
            done += 1
    finally:
        shutil.rmtree(tmp, ignore_errors=True)

    ratio = {
        op: C.median([c / p for c, p in zip(times[f"{op}_crc"], times[f"{op}_plain"], strict=True)])
        for op in ("write", "read")
    }
    mb = data.nbytes / 1e6
    table = [
        {
            "op": op,
            "plain MB/s": f"{mb / C.median(times[f'{op}_plain']):.0f}",
            "crc32c MB/s": f"{mb / C.median(times[f'{op}_crc']):.0f}",
            "time ratio crc/plain (median)": f"{ratio[op]:.3f}",
            "spread": C.spread(
                [c / p for c, p in zip(times[f"{op}_crc"], times[f"{op}_plain"], strict=True)]
            ),
        }
        for op in ("write", "read")
    ]
    C.print_table(
        table,
        f"crc32c per chunk: {rows} x 576 float16 ({mb:.1f} MB), {chunk}-row chunks, {done} rounds",
    )
    print(f"flipped byte caught: with crc32c {caught['crc']}, without {caught['plain']}")
    verdict = "PASS" if ok else "FAIL"
    print(
        f"SUMMARY checksum: write x{ratio['write']:.3f}, read x{ratio['read']:.3f} the time of "
        f"the plain chain; flip caught {caught['crc']}; {verdict}"
    )
    if a.json:
        Path(a.json).write_text(
            json.dumps({"machine": C.machine(), "ratio": ratio, "times": times, "ok": ok}, indent=2)
        )


if __name__ == "__main__":
    main()
