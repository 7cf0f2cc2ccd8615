"""Run the three peer benchmarks one after another, each in its own process (the second
command after scripts/bench-peers-setup.sh). Extra arguments (--quick, --threads N) are passed
to each; a missed target is a FAIL line, a crash a non-zero exit.

    .venv-peers/bin/python benchmarks/peers/run.py [--quick] [--threads N]
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
SCRIPTS = ("bench_capture_peers.py", "bench_train_peers.py", "bench_patch_peers.py")


def main() -> int:
    failed = []
    for name in SCRIPTS:
        print(f"\n=== {name} {' '.join(sys.argv[1:])}", flush=True)
        code = subprocess.call([sys.executable, str(HERE / name), *sys.argv[1:]])
        if code:
            failed.append(f"{name} (exit {code})")
    if failed:
        print(f"\ncrashed: {', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
