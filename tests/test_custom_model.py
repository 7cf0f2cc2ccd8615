"""A custom PyTorch transformer through the whole library: wrap -> capture -> activation store
-> SAE training -> encode -> contrast -> patching (by canonical name and by module path).

The model (tests/tiny_custom.py) is not a `transformers` model: its own embedding, attention
and char-level vocabulary, trained for a few seconds on runs of letters going up or down, so
its residual stream carries the direction the contrast must find. Every library result is
checked against a second computation made with plain forward hooks on the raw module.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats as sps

import tests.tiny_custom as tc
from saelab.errors import SaelabError
from saelab.models import HookPoint, capture_prompts, hook_widths, load_model, parse_hooks, wrap
from saelab.models.describe import describe_model
from saelab.models.int8 import quantize_int8
from saelab.models.interventions import replace_activations
from saelab.models.module_shape import ModuleShape
from saelab.models.tokens import tokenize_prompts
from saelab.patch.apply import patched
from saelab.patch.edits import Edit
from saelab.patch.generate import generate_patched
from saelab.sae.encode import encode_prompts
from saelab.sae.train import SAETrainer, TrainConfig
from saelab.stats import contrast_table
from saelab.store import ActivationWriter, open_activations

SITES = {"attn_out": "attn", "mlp_out": "ff", "resid_mid": "ln2.hook_input"}


@pytest.fixture(scope="module")
def trained() -> torch.nn.Module:
    model = tc.train()
    assert tc.accuracy(model) > 0.9  # it learned the task: there is structure to find
    return model


@pytest.fixture(scope="module")
def lm(trained):
    return wrap(trained, tc.VOCAB, layers="encoder.layers", sites=SITES, name="tiny")


def prompts(n: int, seed: int, length: int = 6) -> tuple[list[str], np.ndarray]:
    g = torch.Generator().manual_seed(seed)
    starts = torch.randint(0, 26, (n,), generator=g).tolist()
    up = np.arange(n) % 2 == 0
    return [tc.run_text(s, length, bool(u)) for s, u in zip(starts, up, strict=True)], up


def reference(model, modules: dict[str, torch.nn.Module], ids: list[int], inputs: bool = False):
    """Plain forward hooks on the raw module, one unpadded prompt: the independent answer."""
    got: dict[str, torch.Tensor] = {}
    handles = []
    for name, mod in modules.items():

        def hook(m, args, out, name=name):
            got[name] = (args[0] if inputs else out)[0].detach().clone()

        handles.append(mod.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(torch.tensor([ids]))
    finally:
        for h in handles:
            h.remove()
    return got


def test_wrap_resolves_paths_canonical_names_and_sites(lm):
    assert lm.n_layers == 3 and lm.d_model == 48 and lm.adapter.family == "custom"
    hooks = parse_hooks(
        "encoder.layers.1, resid_pre.2, encoder.layers.1.ff.0, encoder.layers.0.ff,"
        " encoder.layers.2.attn.qkv.hook_input, blocks.2.hook_resid_mid",
        lm.n_layers,
        lm.hook_for_module_path,
    )
    assert [h.name for h in hooks] == [
        "blocks.0.hook_mlp_out",
        "encoder.layers.1.ff.0.hook_output",
        "blocks.1.hook_resid_post",
        "blocks.2.hook_resid_pre",
        "encoder.layers.2.attn.qkv.hook_input",  # mid-block, like resid_mid: given order
        "blocks.2.hook_resid_mid",
    ]
    # stored names parse back without the model, to the same values
    assert parse_hooks([h.name for h in hooks], 3) == hooks
    with pytest.raises(SaelabError, match="no module encoder.layers.1.nope"):
        lm.check_hooks([HookPoint.at_module("encoder.layers.1.nope")])
    bare = wrap(tc.TinyLM(), tc.VOCAB)  # no sites: only resid_pre/post and module paths
    with pytest.raises(SaelabError, match="sites="):
        capture_once(bare, [HookPoint(1, "mlp_out")])


def capture_once(lm, hooks, texts=("abcdef",)):
    ids = tokenize_prompts(lm.tokenizer, list(texts)).ids
    return next(capture_prompts(lm.model, lm.adapter, hooks, ids, pad_id=lm.pad_id))


def test_capture_matches_plain_hooks_and_residual_identities(lm, trained):
    texts, _ = prompts(7, seed=3)
    texts[2] = texts[2][:3]  # lengths differ: batches are padded
    hooks = parse_hooks(
        "resid_post.1, resid_pre.2, resid_mid.1, attn_out.1, mlp_out.1, encoder.layers.1.ff.0",
        lm.n_layers,
        lm.hook_for_module_path,
    )
    ids = tokenize_prompts(lm.tokenizer, texts).ids
    assert ids[0][0] == tc.VOCAB["<bos>"] and len(ids[2]) == 4  # <bos> sign two letters
    out = {}
    for idx, vals in capture_prompts(lm.model, lm.adapter, hooks, ids, pad_id=0, batch_size=4):
        for r, i in enumerate(idx):
            out[i] = {h.name: vals[h][r] for h in hooks}
    layer = trained.encoder.layers[1]
    for i, toks in enumerate(ids):
        ref = reference(trained, {"post": layer, "ff0": layer.ff[0], "attn": layer.attn}, toks)
        got = out[i]
        torch.testing.assert_close(got["blocks.1.hook_resid_post"], ref["post"], atol=1e-5, rtol=0)
        torch.testing.assert_close(
            got["encoder.layers.1.ff.0.hook_output"], ref["ff0"], atol=1e-5, rtol=0
        )
        torch.testing.assert_close(got["blocks.1.hook_attn_out"], ref["attn"], atol=1e-5, rtol=0)
        assert torch.equal(got["blocks.1.hook_resid_post"], got["blocks.2.hook_resid_pre"])
        mid = got["blocks.1.hook_resid_mid"]
        torch.testing.assert_close(
            mid + got["blocks.1.hook_mlp_out"], got["blocks.1.hook_resid_post"], atol=1e-5, rtol=0
        )
    widths = hook_widths(lm, hooks)
    assert widths["encoder.layers.1.ff.0.hook_output"] == 4 * 48
    assert widths["blocks.1.hook_resid_post"] == 48


def collect(lm, hooks, texts):
    """Capture every token of every prompt: per hook, rows and per-prompt offsets."""
    ids = tokenize_prompts(lm.tokenizer, texts).ids
    per = {h.name: [None] * len(ids) for h in hooks}
    for idx, vals in capture_prompts(lm.model, lm.adapter, hooks, ids, pad_id=lm.pad_id):
        for r, i in enumerate(idx):
            for h in hooks:
                per[h.name][i] = vals[h][r]
    return ids, per


def train_sae(x: torch.Tensor, d_sae: int, k: int, steps: int = 200) -> torch.nn.Module:
    cfg = TrainConfig("topk", d_sae=d_sae, k=k, lr=3e-3, batch_size=256, total_steps=steps)
    trainer = SAETrainer(cfg, x.shape[1], x[:512])
    g = torch.Generator().manual_seed(0)
    for _ in range(steps):
        trainer.step(x[torch.randint(0, len(x), (256,), generator=g)])
    return trainer.to_sae({"hook_name": "x"})


def explained_variance(sae, x: torch.Tensor) -> float:
    with torch.no_grad():
        rec = sae.decode(sae.encode(x))
    return 1 - float(((x - rec) ** 2).sum() / ((x - x.mean(0)) ** 2).sum())


@pytest.fixture(scope="module")
def pipeline(lm, tmp_path_factory):
    """capture -> store -> SAE training -> encode -> contrast, through the library."""
    root = tmp_path_factory.mktemp("custom") / "activations"
    hooks = parse_hooks("encoder.layers.1, encoder.layers.1.ff.0", 3, lm.hook_for_module_path)
    names = [h.name for h in hooks]
    train_texts, _ = prompts(240, seed=11, length=8)
    test_texts, up = prompts(60, seed=12)
    ids, per = collect(lm, hooks, train_texts + test_texts)
    writer = ActivationWriter(
        root, hooks=names, d_model=hook_widths(lm, hooks), dtype="float32", positions="all"
    )
    n = len(ids)
    writer.write_shard(
        0,
        prompt_index=np.arange(n),
        token_ids=[np.asarray(t) for t in ids],
        acts={h: torch.cat(per[h]) for h in names},
    )
    store = open_activations(root)
    for h in names:  # the store gives back exactly what was captured
        assert np.array_equal(store[h].to_numpy(), torch.cat(per[h]).numpy())
    lengths = np.array([len(t) for t in ids])
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    n_train = int(offsets[len(train_texts)])
    saes = {}
    for h, d_sae, k in ((names[1], 96, 6), (names[0], 192, 8)):
        x = torch.from_numpy(store[h].to_numpy())
        sae = train_sae(x[:n_train], d_sae, k)
        assert explained_variance(sae, x[n_train:]) > 0.6, h
        saes[h] = sae
    return {
        "store": store,
        "saes": saes,
        "offsets": offsets,
        "n_train": len(train_texts),
        "up": up,
        "test_texts": test_texts,
        "names": names,
    }


def test_encode_and_contrast_find_the_direction(pipeline):
    p = pipeline
    h = "blocks.1.hook_resid_post"
    sae = p["saes"][h]
    rows = p["store"][h].to_numpy()
    offs = p["offsets"][p["n_train"] :]
    # mean codes over each prompt's tokens: the sign and the positions that carry it forward
    codes = encode_prompts(sae, rows[offs[0] :], offs - offs[0], "mean")
    dense = codes.to_scipy(sae.d_sae).toarray()
    assert dense.shape == (len(p["test_texts"]), sae.d_sae)
    with torch.no_grad():  # encode agrees with the SAE's own forward, averaged by hand
        direct = np.stack(
            [
                sae.encode(torch.from_numpy(rows[a:b])).mean(0).numpy()
                for a, b in zip(offs[:-1], offs[1:], strict=True)
            ]
        )
    np.testing.assert_allclose(dense, direct, rtol=1e-5, atol=1e-6)
    table = contrast_table([(codes.to_scipy(sae.d_sae), p["up"])], sae.d_sae)
    tested = np.flatnonzero(table["tested"])
    best = tested[np.nanargmin(table["p_t"][tested])]
    assert table["p_t"][best] < 1e-6  # up and down runs are told apart
    ref = sps.ttest_ind(dense[p["up"], best], dense[~p["up"], best], equal_var=False)
    assert table["t"][best] == pytest.approx(ref.statistic, rel=1e-6)


def last_logits(model, ids_rows: list[list[int]]) -> torch.Tensor:
    with torch.no_grad():
        return torch.stack([model(torch.tensor([r]))[0, -1] for r in ids_rows])


def test_patching_by_canonical_name_matches_a_manual_edit(lm, trained, pipeline):
    h = "blocks.1.hook_resid_post"
    sae = pipeline["saes"][h]
    texts = ["+abcdef", "-qpo"]
    ids = tokenize_prompts(lm.tokenizer, texts).ids
    width = max(len(t) for t in ids)
    pad = [[0] * (width - len(t)) + t for t in ids]
    mask = torch.tensor([[0] * (width - len(t)) + [1] * len(t) for t in ids])
    with torch.no_grad():
        f = sae.encode(reference(trained, {"x": trained.encoder.layers[1]}, ids[1])["x"])[-1]
    feat = int(f.argmax())
    rows = [[], [Edit(h, feat, "set", 0.0)]]
    with patched(lm, {h: sae}, rows, [len(t) for t in ids], at="last"), torch.no_grad():
        out = lm.model(input_ids=torch.tensor(pad), attention_mask=mask).logits[:, -1]
    base = last_logits(trained, ids)
    torch.testing.assert_close(out[0], base[0], atol=1e-5, rtol=0)  # baseline row untouched

    def manual(mod, args, x):  # x + (f' - f) W_dec at the last position only
        x = x.clone()
        code = sae.encode(x[0, -1:])
        x[0, -1] += (0.0 - code[0, feat]) * sae.W_dec[feat]
        return x

    handle = trained.encoder.layers[1].register_forward_hook(manual)
    try:
        want = last_logits(trained, [ids[1]])[0]
    finally:
        handle.remove()
    torch.testing.assert_close(out[1], want, atol=1e-4, rtol=0)
    assert not torch.allclose(out[1], base[1], atol=1e-3)


def test_patching_by_module_path(lm, trained, pipeline):
    ids = tokenize_prompts(lm.tokenizer, ["+cdefgh"]).ids
    hp = HookPoint.at_module("encoder.layers.1.ff.0")

    def halve(x):
        return x * 0.5

    with replace_activations(lm.model, lm.adapter, {hp: halve}), torch.no_grad():
        got = lm.model(input_ids=torch.tensor(ids)).logits[0, -1]
    handle = trained.encoder.layers[1].ff[0].register_forward_hook(lambda m, a, o: o * 0.5)
    try:
        want = last_logits(trained, ids)[0]
    finally:
        handle.remove()
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    # and a feature edit with an SAE trained at that module path, on every position
    name = hp.name
    sae = pipeline["saes"][name]
    with torch.no_grad():
        codes = sae.encode(reference(trained, {"x": trained.encoder.layers[1].ff[0]}, ids[0])["x"])
    feat = int(codes.sum(0).argmax())  # a feature active on this prompt
    rows = [[], [Edit(name, feat, "scale", 3.0)]]
    with patched(lm, {name: sae}, rows, [len(ids[0])] * 2, at="all"), torch.no_grad():
        out = lm.model(input_ids=torch.tensor(ids * 2)).logits[:, -1]

    def manual(mod, args, x):  # x + f * (3 - 1) * W_dec[feat] at every position
        f = sae.encode(x[0])[:, feat]
        return x + (2 * f)[None, :, None] * sae.W_dec[feat]

    handle = trained.encoder.layers[1].ff[0].register_forward_hook(manual)
    try:
        want = last_logits(trained, ids)[0]
    finally:
        handle.remove()
    torch.testing.assert_close(out[0], last_logits(trained, ids)[0], atol=1e-5, rtol=0)
    torch.testing.assert_close(out[1], want, atol=1e-4, rtol=0)
    assert not torch.allclose(out[1], out[0], atol=1e-3)


def greedy(model, ids: list[int], n: int) -> list[int]:
    seq = list(ids)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(model(torch.tensor([seq]))[0, -1].argmax()))
    return seq[len(ids) :]


def test_generate_patched_on_a_custom_model(lm, trained, pipeline):
    h = "blocks.1.hook_resid_post"
    sae = pipeline["saes"][h]
    prompts_ = ["+abcd", "-lkjihg", "+abcd"]
    out = generate_patched(
        lm, prompts_, [[], [], [Edit(h, 0, "scale", 1.0)]], {h: sae}, max_new_tokens=4
    )
    ids = tokenize_prompts(lm.tokenizer, prompts_).ids
    assert out.token_ids[0] == greedy(trained, ids[0], 4)
    assert out.token_ids[1] == greedy(trained, ids[1], 4)
    assert out.texts[0] == "efgh" and out.texts[1] == "fedc"  # the task, learned
    assert out.token_ids[2] == out.token_ids[0]  # scaling a feature by 1 changes nothing


def test_module_spec_factories(tmp_path):
    lm = load_model("module:tests.tiny_custom:build")
    # the name is the spec itself, so a run that records it loads the same model again
    assert lm.source.kind == "module" and lm.name == "module:tests.tiny_custom:build"
    assert lm.n_layers == 3 and lm.tokenizer.name == "char-level"
    vals = capture_once(lm, [HookPoint(2, "resid_post")])[1]
    assert vals[HookPoint(2, "resid_post")][0].shape == (7, 48)  # <bos> + "abcdef"
    wrapped = load_model("module:tests.tiny_custom:build_wrapped", dtype="bfloat16")
    assert wrapped.name == "tiny" and wrapped.dtype == "bfloat16"
    assert next(wrapped.model.parameters()).dtype == torch.bfloat16
    for spec, msg in [
        ("module:tests.tiny_custom", "module:package.module:factory"),
        ("module:tests.tiny_custom:nothing", "has no nothing"),
        ("module:tests.no_such_module:build", "importing tests.no_such_module failed"),
        ("module:tests.tiny_custom:accuracy", "needs arguments"),
        ("module:tests.tiny_custom:LETTERS", "not callable"),
    ]:
        with pytest.raises(SaelabError, match=msg):
            load_model(spec)
    with pytest.raises(SaelabError, match="layers='blocks' is not a ModuleList"):
        wrap(tc.TinyLM(), layers="blocks")


def test_tokenizers_without_hugging_face():
    ids_lm = wrap(tc.TinyLM())  # no tokenizer: prompts are ids as text
    assert tokenize_prompts(ids_lm.tokenizer, ["3 4 5"], prepend_bos=False).ids == [[3, 4, 5]]
    with pytest.raises(SaelabError, match="is not token ids"):
        tokenize_prompts(ids_lm.tokenizer, ["abc"])
    char = wrap(tc.TinyLM(), tc.VOCAB).tokenizer
    assert char("+ab")["input_ids"] == [1, 3, 5, 6]
    assert char.decode([1, 3, 5, 6, 2], skip_special_tokens=True) == "+ab"
    with pytest.raises(SaelabError, match="not in the model's vocabulary"):
        char("a!")


def test_custom_module_shape_for_plans():
    model = tc.TinyLM()
    shape = ModuleShape.of(wrap(model, tc.VOCAB))
    n = sum(p.numel() for p in model.parameters())
    assert shape.n_params == n and shape.weight_bytes("float32") == 4 * n
    assert shape.weight_bytes("bfloat16", n_layers=0) == 2 * (n - sum(shape.layer_sizes))
    q = quantize_int8(tc.TinyLM())  # an independent count: the bytes of a real int8 copy
    real = sum(t.numel() * t.element_size() for t in [*q.parameters(), *q.buffers()])
    assert shape.weight_bytes("int8") == real
    info = describe_model("module:tests.tiny_custom:build")
    assert info.shape.n_params == n and info.adapter().family == "custom"
    assert info.hook_for_module_path("encoder.layers.2").name == "blocks.2.hook_resid_post"
