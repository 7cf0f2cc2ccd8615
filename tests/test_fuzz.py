"""Fuzzing the readers: more than 1,000 generated bad inputs per run end in a one-line
SaelabError or a correct result, never in another exception.

Three families, each calling the library-level reader or loader (the CLI is a thin layer on
top of them):

  prompts  prompt files of every suffix with bad encodings, huge lines, empty groups, odd or
           missing columns, wrong JSON/Parquet types, and odd reader options
  saes     an SAE of every supported format, its files truncated, flipped, replaced, deleted,
           or rewritten with NaN/inf, wrong shapes, dropped tensors and other dtypes
  run      every file of a real small run (extract on the default model, encode, a trained-
           SAE folder, a trace store) truncated, flipped, replaced, emptied or deleted, then
           every reader run over the whole run

"Correct" is checked against the undamaged result where the file carries a checksum (store
chunks, codes, SAE weights): there a damaged file must never give other values. Files without
one (JSON metadata, Parquet tables) may still read as other values; those cases are counted
and printed, and `saelab verify` (the manifest's sha256) is what finds them.
"""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from saelab.data import read_prompts
from saelab.errors import SaelabError
from saelab.sae import SAE
from saelab.sae.formats import load_local
from saelab.store import Trace, TraceWriter, open_activations, open_traces
from saelab.store.codes import open_codes, read_run_prompts
from tests.test_sae_formats import ROUND_TRIPS, inputs, native, rewrite

COUNTS: Counter[str] = Counter()
#: SAELAB_FUZZ_SCALE=5 tries five times as many inputs (a longer local hunt); 1 in CI
_SCALE = float(os.environ.get("SAELAB_FUZZ_SCALE", "1"))
#: CI replays the same inputs every run (a red CI means the code changed, not the dice);
#: SAELAB_FUZZ_RANDOM=1, or any other scale, draws new ones (report a failure as a new test)
_RANDOM = os.environ.get("SAELAB_FUZZ_RANDOM") == "1" or _SCALE != 1


def scaled(n: int) -> int:
    return max(1, round(n * _SCALE))


FUZZ = settings(
    deadline=None,
    database=None,  # nothing written into the repository
    suppress_health_check=list(HealthCheck),
    derandomize=not _RANDOM,
)


def outcome(family: str, fn):  # noqa: ANN001, ANN201
    """Run fn; a SaelabError must be one line. Counts inputs and clean errors per family."""
    COUNTS[f"{family}: inputs"] += 1
    try:
        result = fn()
    except SaelabError as e:
        assert "\n" not in str(e) and str(e).strip(), f"not one line: {e!r}"
        COUNTS[f"{family}: clean errors"] += 1
        return e
    COUNTS[f"{family}: results"] += 1
    return result


# -- prompt files -----------------------------------------------------------------------------
_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=30),
    st.text(alphabet=st.characters(codec="utf-8"), max_size=8),
)
_JSON = st.recursive(
    _SCALARS,
    lambda kids: (
        st.lists(kids, max_size=3) | st.dictionaries(st.text(max_size=5), kids, max_size=3)
    ),
    max_leaves=6,
)
_COLUMNS = st.sampled_from(
    ["text", "id", "group", "label", "", "Text", "text ", "\ufefftext", "id"]
)
_LINE = st.one_of(
    st.text(max_size=60),
    st.just(""),
    st.just("   "),
    st.builds(
        lambda n, c: c * n, st.integers(10_000, 200_000), st.sampled_from(["a", "é", "\x00", "🙂"])
    ),
)


_PROMPT = st.text(
    alphabet=st.characters(blacklist_characters="\n\r", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
).filter(str.strip)


@st.composite
def good_prompt_file(draw) -> tuple[str, bytes, dict, list[str]]:
    """A well-formed file and the texts any correct reader must return from it."""
    fmt = draw(st.sampled_from(["txt", "jsonl", "csv", "parquet"]))
    texts = draw(st.lists(_PROMPT, min_size=1, max_size=6))
    limit = draw(st.sampled_from([None, None, 1, 2]))
    if fmt == "txt":
        data = "\n".join(texts).encode()
    elif fmt == "jsonl":
        data = "\n".join(json.dumps({"text": t, "n": i}) for i, t in enumerate(texts)).encode()
    elif fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf)
        writer.writerow(["text", "other"])
        writer.writerows([t, "x"] for t in texts)
        data = buf.getvalue().encode()
    else:
        out = io.BytesIO()
        pq.write_table(pa.table({"text": texts}), out)
        data = out.getvalue()
    options = {"text_column": "text", "id_column": "id", "group_column": "group", "limit": limit}
    return fmt, data, options, texts[:limit] if limit else texts


@st.composite
def bad_prompt_file(draw) -> tuple[str, bytes, dict, None]:
    fmt = draw(st.sampled_from(["txt", "jsonl", "csv", "tsv", "parquet", "ndjson"]))
    if draw(st.integers(0, 9)) == 0:  # bytes that are no text at all
        data = draw(st.binary(max_size=300))
    elif fmt == "txt":
        data = "\n".join(draw(st.lists(_LINE, max_size=6))).encode()
    elif fmt in ("jsonl", "ndjson"):
        rows = draw(
            st.lists(
                st.one_of(
                    st.dictionaries(_COLUMNS, _JSON, max_size=4),
                    _JSON,
                    st.text(max_size=20).map(lambda s: "{" + s),
                ),
                max_size=6,
            )
        )
        data = "\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows).encode()
    elif fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        header = draw(st.lists(_COLUMNS, min_size=0, max_size=4))
        rows = draw(st.lists(st.lists(st.text(max_size=12), max_size=5), max_size=6))
        data = "\n".join(sep.join(r) for r in [header, *rows]).encode()
    else:
        n = draw(st.integers(0, 4))
        cols = {}
        for name in draw(st.lists(_COLUMNS, max_size=4, unique=True)):
            kind = draw(st.sampled_from(["str", "int", "float", "bool", "null", "list", "bin"]))
            values = {
                "str": st.one_of(st.none(), st.text(max_size=10)),
                "int": st.integers(-(2**63), 2**63 - 1),
                "float": st.floats(),
                "bool": st.booleans(),
                "null": st.none(),
                "list": st.lists(st.integers(0, 9), max_size=2),
                "bin": st.binary(max_size=5),
            }[kind]
            cols[name] = pa.array(draw(st.lists(values, min_size=n, max_size=n)))
        buf = io.BytesIO()
        pq.write_table(pa.table(cols) if cols else pa.table({"x": pa.array([], pa.int8())}), buf)
        data = buf.getvalue()
        if draw(st.booleans()):  # a damaged Parquet file
            cut = draw(st.integers(0, len(data)))
            data = data[:cut] + draw(st.binary(max_size=8))
    if draw(st.integers(0, 5)) == 0:
        data = draw(st.sampled_from([b"\xef\xbb\xbf", b"\xff\xfe", b"\x80"])) + data
    options = {
        "text_column": draw(st.sampled_from(["text", "label", "nope"])),
        "id_column": draw(st.sampled_from(["id", None, "label"])),
        "group_column": draw(st.sampled_from(["group", None, "label", "missing"])),
        "limit": draw(st.sampled_from([None, None, None, None, 1, 3, 0, -1, True, "2"])),
    }
    if draw(st.booleans()):  # the default columns half of the time
        options.update(text_column="text", id_column="id", group_column="group")
    return fmt, data, options, None


@settings(FUZZ, max_examples=scaled(450))
@given(st.one_of(bad_prompt_file(), good_prompt_file()))
def test_fuzz_prompt_files(case):
    fmt, data, options, expected = case
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"prompts.{fmt}"
        path.write_bytes(data)
        got = outcome("prompts", lambda: read_prompts(path, **options))
    if expected is not None:  # a well-formed file: exactly its prompts, never an error
        assert not isinstance(got, SaelabError), got
        assert got.texts == expected
        return
    if isinstance(got, SaelabError):
        return
    n = len(got)  # a correct table: aligned columns of strings, unique ids, the limit kept
    assert n >= 1 and len(got.texts) == n and len(set(got.ids)) == n
    assert all(isinstance(t, str) for t in got.texts) and all(isinstance(i, str) for i in got.ids)
    assert got.groups is None or all(g is None or isinstance(g, str) for g in got.groups)
    if isinstance(options["limit"], int) and not isinstance(options["limit"], bool):
        assert n <= options["limit"]


# -- SAE files of every format ------------------------------------------------------------------
@pytest.fixture(scope="session")
def sae_files(tmp_path_factory) -> dict[tuple[str, str], tuple[Path, torch.Tensor]]:
    """Every (format, architecture) written once: its path and the codes it must give."""
    root = tmp_path_factory.mktemp("fuzz-saes")
    out = {}
    for k, (fmt, arch) in enumerate(ROUND_TRIPS):
        path = rewrite(fmt, native(root / f"n{k}", arch), root / f"{k}")
        with torch.no_grad():
            out[(fmt, arch)] = (path, load_local(path).encode(inputs()))
    return out


def _tensors_of(path: Path) -> tuple[dict, callable]:
    """A file's tensors and a function writing a changed dict back in the same format."""
    if path.suffix == ".npz":
        with np.load(path) as z:
            arrays = {k: torch.from_numpy(z[k]) for k in z.files}
        return arrays, lambda t: np.savez(path, **{k: v.numpy() for k, v in t.items()})
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file, save_file

        return load_file(str(path)), lambda t: save_file(
            {k: v.contiguous() for k, v in t.items()}, str(path)
        )
    obj = torch.load(path, weights_only=True)
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    return tensors, lambda t: torch.save({**obj, **t}, path)


def _edit_tensor(t: torch.Tensor, how: str, pos: int) -> torch.Tensor | None:
    if how in ("nan", "inf") and t.numel() and t.is_floating_point():
        flat = t.contiguous().clone().reshape(-1)
        flat[pos % t.numel()] = float("nan") if how == "nan" else float("-inf")
        return flat.reshape(t.shape)
    if how == "drop":
        return None
    if how == "transpose" and t.ndim == 2:
        return t.T.contiguous()
    if how == "shrink" and t.ndim >= 1 and t.shape[0] > 1:
        return t[:-1].clone()
    if how == "scalar":
        return torch.tensor(1.0)
    dtypes = {"f64": torch.float64, "f16": torch.float16, "i32": torch.int32, "bool": torch.bool}
    if how in dtypes:
        return t.to(dtypes[how])
    return t


def want_d_in(codes: torch.Tensor) -> int:
    return inputs().shape[1]


_BYTE_DAMAGE = ["truncate", "flip", "garbage", "empty", "delete", "append"]
_TENSOR_DAMAGE = [
    "nan",
    "inf",
    "drop",
    "transpose",
    "shrink",
    "scalar",
    "f64",
    "f16",
    "i32",
    "bool",
]


def damage(path: Path, how: str, pos: int, junk: bytes) -> None:
    raw = path.read_bytes()
    if how == "truncate":
        path.write_bytes(raw[: pos % max(1, len(raw))])
    elif how == "flip" and raw:
        i = pos % len(raw)
        path.write_bytes(raw[:i] + bytes([raw[i] ^ (1 << (pos % 8))]) + raw[i + 1 :])
    elif how == "garbage":
        path.write_bytes(junk)
    elif how == "empty":
        path.write_bytes(b"")
    elif how == "delete":
        path.unlink()
    elif how == "append":
        path.write_bytes(raw + junk)


@settings(FUZZ, max_examples=scaled(350))
@given(
    st.integers(0, len(ROUND_TRIPS) - 1),
    st.sampled_from(_BYTE_DAMAGE + _TENSOR_DAMAGE),
    st.integers(0, 2**31),
    st.binary(max_size=64),
    st.integers(0, 99),
)
def test_fuzz_sae_files(sae_files, which, how, pos, junk, pick):
    src, want = sae_files[ROUND_TRIPS[which]]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "sae"
        if src.is_dir():
            shutil.copytree(src, root)
            path = root
        else:
            root.mkdir()
            for sib in src.parent.iterdir():  # a file format may read a config beside it
                if sib.is_file():
                    shutil.copy(sib, root / sib.name)
            path = root / src.name
        files = sorted(p for p in root.rglob("*") if p.is_file())
        target = files[pick % len(files)]
        if how in _TENSOR_DAMAGE:
            if target.suffix not in (".npz", ".safetensors", ".pt"):
                target = next(p for p in files if p.suffix in (".npz", ".safetensors", ".pt"))
            try:
                tensors, write = _tensors_of(target)
            except Exception:  # a placeholder the format never reads (a CLT's W_dec file)
                tensors = {}
            if not tensors:
                return
            name = sorted(tensors)[pick % len(tensors)]
            edited = _edit_tensor(tensors[name], how, pos)
            if edited is None:
                del tensors[name]
            else:
                tensors[name] = edited
            write(tensors)
        else:
            damage(target, how, pos, junk)
        got = outcome("saes", lambda: load_local(path))
    if isinstance(got, SaelabError):
        return
    if got.cfg.d_in != want_d_in(want) or got.cfg.d_sae != want.shape[1]:
        # a tensor cut by one row reads as another (valid) layout, e.g. a transcoder; the
        # encode stage refuses it against the store's width
        COUNTS["saes: loaded as another shape"] += 1
        return
    with torch.no_grad():
        codes = got.encode(inputs())  # a usable SAE: finite codes of the right shape
    assert codes.shape == want.shape and torch.isfinite(codes).all()
    if how in ("f64", "f16") or (how == "append" and target.suffix == ".json"):
        COUNTS["saes: loaded after a harmless change"] += 1
    elif not torch.allclose(codes.float(), want.float(), atol=1e-4, rtol=1e-4):
        COUNTS["saes: other values, no checksum in the format"] += 1
        assert not (target.name == "sae_weights.safetensors" and how == "flip"), (
            "a flipped byte in a checksummed SAE file loaded as other values"
        )


# -- every file of a real small run -------------------------------------------------------------
HOOKS = ["blocks.1.hook_resid_post", "blocks.3.hook_resid_post"]


def _random_sae(hook: str, seed: int) -> SAE:
    from saelab.sae import SAEConfig

    g = torch.Generator().manual_seed(seed)
    sae = SAE(SAEConfig(d_in=576, d_sae=256, architecture="relu", metadata={"hook_name": hook}))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(576, 256, generator=g) / 24)
        sae.W_dec.copy_(torch.randn(256, 576, generator=g) / 24)
        sae.b_enc.copy_(torch.randn(256, generator=g) * 0.5 - 1.0)
    return sae


@pytest.fixture(scope="session")
def small_run(smol, tmp_path_factory) -> Path:
    """extract (3 shards, 2 hooks) + encode + RUN/saes + a trace store, made once."""
    import saelab.store.activations as act
    from saelab.pipeline.encode import EncodeOptions, run_encode
    from saelab.pipeline.extract import run_extract
    from saelab.pipeline.extract_job import ExtractOptions

    root = tmp_path_factory.mktemp("fuzz-run")
    prompts = root / "prompts.jsonl"
    prompts.write_text(
        "".join(
            json.dumps(
                {"id": f"p{i}", "text": f"Prompt {i} says {'ab ' * (i % 4)}.", "group": "xy"[i % 2]}
            )
            + "\n"
            for i in range(9)
        )
    )
    run = root / "run"
    chunk_bytes = act._CHUNK_BYTES
    act._CHUNK_BYTES = 8192  # several chunks per hook and shard, as in a large run
    try:
        run_extract(
            ExtractOptions(prompts=str(prompts), hooks="resid_post.1,resid_post.3", run=str(run),
                           quiet=True, store_dtype="float16", shard_size=4),
            lm=smol,
        )  # fmt: skip
    finally:
        act._CHUNK_BYTES = chunk_bytes
    for k, hook in enumerate(HOOKS):
        _random_sae(hook, k).save(run / "saes" / hook)
    run_encode(EncodeOptions(saes=str(run / "saes"), run=str(run), positions="all", quiet=True))
    rng = np.random.default_rng(0)
    w = TraceWriter(run / "traces", hooks=HOOKS[:1], d_model={HOOKS[0]: 8}, dtype="float16",
                    attention_layers=[0], n_heads=2)  # fmt: skip
    for s in range(2):
        traces = []
        for i in range(3):
            t = 3 + i
            attn = np.tril(rng.random((2, t, t))).astype(np.float32)
            attn /= attn.sum(-1, keepdims=True)
            traces.append(Trace(3 * s + i, np.arange(2), np.arange(1 + i), "a", "a", "eos",
                                hidden={HOOKS[0]: rng.standard_normal((t, 8))},
                                attentions={0: attn}))  # fmt: skip
        w.write_shard(s, traces)
    return run


def read_everything(run: Path) -> dict[str, object]:
    """What every reader gives for the run; a reader's SaelabError is its result."""
    out: dict[str, object] = {}

    def part(name: str, fn) -> None:  # noqa: ANN001
        try:
            out[name] = fn()
        except SaelabError as e:
            assert "\n" not in str(e), f"not one line: {e!r}"
            out[name] = e

    def acts():
        store = open_activations(run)
        return (
            [store[h].to_numpy() for h in store.hooks]
            + [store.tokens(i) for i in range(store.n_prompts)]
            + [store[h][np.array([0, store.n_rows - 1])] for h in store.hooks]
        )

    def codes():
        c = open_codes(run)
        return [c[h].matrix().toarray() for h in c.hooks] + [c.groups(h) for h in c.hooks]

    def traces():
        t = open_traces(run)
        return [
            (t.hidden(i, HOOKS[0]), t.attention(i, 0), t.prompt_ids(i), t.texts(i))
            for i in range(len(t))
        ]

    part("activations", acts)
    part("codes", codes)
    part("traces", traces)
    part("prompts", lambda: read_run_prompts(run))
    for h in HOOKS:
        part(f"sae {h}", lambda h=h: SAE.load(run / "saes" / h).state_dict())
    return out


def same(a, b) -> bool:  # noqa: ANN001
    if isinstance(a, SaelabError) or isinstance(b, SaelabError):
        return False
    if isinstance(a, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (np.ndarray, torch.Tensor)):
        return np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True)
    return a == b


_CHECKSUMMED = ("c.", ".safetensors")  # store chunks, codes shards, SAE weights


@pytest.fixture(scope="session")
def run_files(small_run) -> tuple[list[Path], dict[str, object]]:
    files = sorted(p for p in small_run.rglob("*") if p.is_file())
    return files, read_everything(small_run)


@settings(FUZZ, max_examples=scaled(420))
@given(
    st.integers(0, 10**6),
    st.sampled_from(_BYTE_DAMAGE),
    st.integers(0, 2**31),
    st.binary(max_size=48),
)
def test_fuzz_run_files(small_run, run_files, pick, how, pos, junk):
    files, reference = run_files
    target = files[pick % len(files)]
    original = target.read_bytes()
    try:
        damage(target, how, pos, junk)
        COUNTS["run: inputs"] += 1
        got = read_everything(small_run)
    finally:
        target.write_bytes(original)
    changed = False
    for name, result in got.items():
        if isinstance(result, SaelabError):
            COUNTS["run: clean errors (per reader)"] += 1
        elif not same(result, reference[name]):
            changed = True
            protected = target.name.startswith(_CHECKSUMMED[0]) or target.suffix == ".safetensors"
            assert not protected, (
                f"{how} of {target.relative_to(small_run)} read as other values by {name}"
            )
    if changed:
        COUNTS[f"run: other values from an unchecksummed {target.suffix or target.name}"] += 1


def test_fuzz_counts(capsys):
    """Runs last in this file: the totals, printed, and at least 1,000 inputs when all ran."""
    inputs_tried = sum(v for k, v in COUNTS.items() if k.endswith(": inputs"))
    with capsys.disabled():
        print(f"\nfuzz: {inputs_tried} bad inputs tried, 0 other exceptions")
        for k in sorted(COUNTS):
            print(f"  {k}: {COUNTS[k]}")
    if all(COUNTS[f"{f}: inputs"] for f in ("prompts", "saes", "run")):
        assert inputs_tried >= 1000
