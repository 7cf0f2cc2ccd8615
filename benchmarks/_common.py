"""Shared helpers of the benchmark scripts: real text, thread pinning, alternation, tables.

Speed on the small shared machines saelab is developed on swings by ~2x within seconds, so
every benchmark here measures its baseline and its candidate in the same process, alternating
(A B A B ...) with the order rotated each round, and reports medians of paired ratios: two
measurements taken seconds apart see the same machine load, so their ratio is stable even
when their absolute speeds are not.

Text comes from the docstrings of Python's own standard library, read with `ast` (nothing is
imported, so nothing runs): real English and technical prose, identical on every machine
with the same Python version, and no download.
"""

from __future__ import annotations

import argparse
import ast
import inspect
import json
import os
import platform
import statistics
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SRC = REPO / "src"


def use_repo_source() -> None:
    """Make `import saelab` work without installing the package (the scripts' habit)."""
    if str(SRC) not in sys.path:
        sys.path.insert(0, str(SRC))


def subprocess_env(threads: int) -> dict[str, str]:
    """Environment for a child `python -m saelab`: repo source first, same thread count."""
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["OMP_NUM_THREADS"] = str(threads)
    env["MKL_NUM_THREADS"] = str(threads)
    return env


def base_parser(doc: str | None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=(doc or "").strip().splitlines()[0] if doc else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--quick", action="store_true", help="smaller run (~20 s) for run_all.sh")
    p.add_argument("--json", metavar="OUT", help="also write the numbers to this JSON file")
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch intra-op threads, pinned for baseline and candidate alike (default 1: on a"
        " 2-core machine shared with other work, 2 threads swing 10x, 1 thread stays steady)",
    )
    return p


def pin_threads(n: int) -> None:
    import torch

    torch.set_num_threads(n)
    os.environ["OMP_NUM_THREADS"] = str(n)


# -- real text ----------------------------------------------------------------------------

_SKIP_PARTS = {"test", "tests", "idlelib", "lib2to3", "turtledemo", "site-packages", "ensurepip"}


def stdlib_docstrings(min_chars: int = 200, limit: int | None = None) -> list[str]:
    """Docstrings of stdlib modules, classes and functions (>= min_chars), in a fixed order."""
    out: list[str] = []
    for doc in iter_stdlib_docstrings(min_chars):
        out.append(doc)
        if limit is not None and len(out) >= limit:
            break
    return out


def iter_stdlib_docstrings(min_chars: int = 200) -> Iterator[str]:
    """The same docstrings lazily (parsing the whole stdlib takes ~4 s; most uses need less)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    seen: set[str] = set()
    for path in sorted(root.rglob("*.py")):
        if _SKIP_PARTS & set(path.relative_to(root).parts):
            continue
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError, OSError):
            continue
        nodes = [tree] + [
            n
            for n in ast.walk(tree)
            if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
        ]
        for node in nodes:
            doc = ast.get_docstring(node, clean=False)
            if not doc:
                continue
            doc = inspect.cleandoc(doc).strip()
            if len(doc) < min_chars or doc in seen:
                continue
            seen.add(doc)
            yield doc


def token_windows(tokenizer: Any, n: int, length: int, bos: int | None) -> list[list[int]]:
    """n windows of exactly `length` tokens (BOS + a slice of a running stream of docstrings).

    Full-length windows mean no padding, so every method compared processes the same tokens.
    """
    body = length - (1 if bos is not None else 0)
    windows: list[list[int]] = []
    stream: list[int] = []
    for doc in iter_stdlib_docstrings():
        stream += tokenizer(doc + "\n\n", add_special_tokens=False)["input_ids"]
        while len(stream) >= body:
            windows.append(([bos] if bos is not None else []) + stream[:body])
            stream = stream[body:]
            if len(windows) == n:
                return windows
    raise RuntimeError(f"the stdlib docstrings gave only {len(windows)} windows of {length}")


# -- timing --------------------------------------------------------------------------------


def timed(fn: Callable[..., Any], *args: Any) -> float:
    """Seconds one call of fn(*args) takes."""
    t0 = time.perf_counter()
    fn(*args)
    return time.perf_counter() - t0


def rotated(names: Sequence[str], round_index: int) -> list[str]:
    """The order of one round: rotated so no method always runs first (or after another)."""
    k = round_index % len(names)
    return list(names[k:]) + list(names[:k])


def another_round(
    done: int, min_rounds: int, max_rounds: int, t_start: float, budget: float
) -> bool:
    """Whether to start round `done + 1`: always up to min_rounds, never past max_rounds, and
    in between only if it should end within the time budget (judged by the mean round)."""
    if done < min_rounds:
        return True
    if done >= max_rounds:
        return False
    elapsed = time.perf_counter() - t_start
    return elapsed + elapsed / done <= budget


def median(xs: Sequence[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


def spread(xs: Sequence[float]) -> str:
    """min-max of a sample, for the table."""
    if not xs:
        return "-"
    return f"{min(xs):.3g}-{max(xs):.3g}"


# -- output --------------------------------------------------------------------------------


def machine() -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cpu_count": os.cpu_count(),
        "threads": torch.get_num_threads(),
        "platform": platform.platform(),
    }
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return info


def print_table(rows: list[dict[str, Any]], title: str | None = None) -> None:
    if not rows:
        return
    cols = list(rows[0])
    cells = [[_fmt(r.get(c)) for c in cols] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(cols)]
    if title:
        print(f"\n{title}")
    print(
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(cols, widths, strict=True))
        )
    )
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print(
            "  ".join(
                v.ljust(w) if i == 0 else v.rjust(w)
                for i, (v, w) in enumerate(zip(row, widths, strict=True))
            )
        )


def _fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        if abs(v) >= 10:
            return f"{v:.1f}"
        return f"{v:.3f}"
    return str(v)


def summary_line(name: str, ratio: float, target: str, ok: bool, detail: str = "") -> str:
    verdict = "PASS" if ok else "FAIL"
    line = f"SUMMARY {name}: {ratio:.3f}x (target {target}) {verdict}"
    return line + (f"; {detail}" if detail else "")


def exit_on(ok: bool) -> None:
    """A benchmark whose checks or target failed exits non-zero, so scripts notice."""
    if not ok:
        raise SystemExit(1)


def dump_json(path: str | None, payload: dict[str, Any]) -> None:
    if not path:
        return
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")
    print(f"numbers written to {out}")


def mb(n: float) -> float:
    return n / 1e6
