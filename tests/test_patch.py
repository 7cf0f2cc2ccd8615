"""saelab.patch on the real default model with small random SAEs saved and loaded as files.

What is pinned down: the edit grammar and its errors; rows without edits are bit-identical
to the plain model; edits that change no feature change nothing; the KV-cached generation
edits every generated step exactly as a cache-free re-run of the whole sequence does; a batch
of rows with different edits (left padded) gives each row's single-prompt result; steering
moves the output.
"""

from __future__ import annotations

import pytest
import torch

from saelab.errors import SaelabError
from saelab.models.capture import HookCapture, make_batch
from saelab.models.hooks import HookPoint
from saelab.patch import (
    Edit,
    check_edits,
    generate_patched,
    parse_edit,
    parse_edits,
    patched,
)
from saelab.patch.apply import HookEdits, RowEdits
from saelab.sae import SAE, SAEConfig

MID = "blocks.15.hook_resid_post"
TOPK = "blocks.10.hook_resid_post"
DEAD = 7  # a feature whose bias keeps it at 0 on every token
PROMPTS = ["The capital of France is", "Hi", "Water boils at a temperature of"]
N_NEW = 5


def random_sae(d_in: int, d_sae: int, arch: str, seed: int, **cfg) -> SAE:
    k = 16 if arch == "topk" else None
    sae = SAE(SAEConfig(d_in=d_in, d_sae=d_sae, architecture=arch, k=k, **cfg))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(d_in, d_sae, generator=g) / d_in**0.5)
        sae.W_dec.copy_(torch.randn(d_sae, d_in, generator=g) / d_in**0.5)
        sae.b_enc.copy_(torch.randn(d_sae, generator=g) * 0.1)
        sae.b_enc[DEAD] = -1e4
        sae.b_dec.copy_(torch.randn(d_in, generator=g) * 0.1)
        if sae.threshold is not None:
            sae.threshold.copy_(torch.rand(d_sae, generator=g) * 0.5)
    return sae


@pytest.fixture(scope="module")
def saes(smol, tmp_path_factory):
    """A JumpReLU SAE (d_sae 256) at resid_post.15 and a TopK one (d_sae 512) at .10."""
    root = tmp_path_factory.mktemp("patch_saes")
    d = smol.d_model
    out = {}
    for name, sae in (
        (MID, random_sae(d, 256, "jumprelu", 1)),
        (TOPK, random_sae(d, 512, "topk", 2)),
    ):
        out[name] = SAE.load(sae.save(root / name))
    return out


def plain_generate(lm, prompts: list[str]):
    """HF generation without saelab.patch: the baseline (same batch, same options)."""
    from saelab.models.tokens import tokenize_prompts

    b = make_batch(tokenize_prompts(lm.tokenizer, prompts).ids, lm.pad_id, "left", lm.device)
    with torch.no_grad():
        out = lm.model.generate(
            input_ids=b.input_ids,
            attention_mask=b.attention_mask,
            max_new_tokens=N_NEW,
            pad_token_id=lm.pad_id,
            do_sample=False,
            temperature=None,
            top_p=None,
            top_k=None,
            return_dict_in_generate=True,
            output_logits=True,
        )
    return out.sequences[:, b.input_ids.shape[1] :], torch.log_softmax(out.logits[0].float(), -1)


def codes_at_last(lm, sae: SAE, hook: str, prompt: str) -> torch.Tensor:
    from saelab.models.tokens import tokenize_prompts

    hp = HookPoint(int(hook.split(".")[1]), "resid_post")
    b = make_batch(tokenize_prompts(lm.tokenizer, [prompt]).ids, lm.pad_id, "left", lm.device)
    with HookCapture(lm.model, lm.adapter, [hp]) as cap:
        x = cap.run(b)[hp][0, -1]
    with torch.no_grad():
        return sae.encode(x[None])[0]


# -- grammar ---------------------------------------------------------------------------------
def test_parse_edit_grammar():
    assert parse_edit("resid_post.7:12=0") == Edit("blocks.7.hook_resid_post", 12, "set", 0.0)
    assert parse_edit("blocks.3.hook_mlp_out:5*2.5") == Edit(
        "blocks.3.hook_mlp_out", 5, "scale", 2.5
    )
    assert parse_edit("resid_post.7:1+=-3e-1") == Edit("blocks.7.hook_resid_post", 1, "shift", -0.3)
    assert parse_edit(" resid_post.-1:4@-8 ", n_layers=30) == Edit(
        "blocks.29.hook_resid_post", 4, "steer", -8.0
    )
    e = parse_edit("resid_post.7:12*0.5")
    assert parse_edit(e.spec) == e


@pytest.mark.parametrize(
    "spec",
    [
        "resid_post.7",
        "resid_post.7:x=1",
        "resid_post.7:3=",
        "resid_post.7:3~1",
        ":3=1",
        "resid_post.7:-3=1",
        "resid_post.7:3=nan",
        "resid_post.7:3=1=2",
        "resid_post.0-3:1=0",
        "nonsense.7:1=0",
        "resid_post.-1:1=0",
    ],
)
def test_bad_specs_are_one_line_errors(spec):
    with pytest.raises(SaelabError) as err:
        parse_edit(spec)
    msg = str(err.value)
    assert "\n" not in msg and spec.strip() in msg


def test_bad_spec_shows_grammar():
    with pytest.raises(SaelabError, match=r"HOOK:FEATURE=VALUE.*HOOK:FEATURE@A"):
        parse_edit("resid_post.7:3~1")
    with pytest.raises(SaelabError, match="past the model's depth"):
        parse_edit("resid_post.30:1=0", n_layers=30)


def test_conflicts_and_checks(saes):
    assert len(parse_edits(["resid_post.15:3=0", "blocks.15.hook_resid_post:3=0"])) == 1
    with pytest.raises(SaelabError, match="conflict") as err:
        parse_edits(["resid_post.15:3=0", "resid_post.15:3*2"])
    assert "\n" not in str(err.value)
    check_edits(parse_edits(["resid_post.15:255=0", "resid_post.10:511@1"]), saes)
    with pytest.raises(SaelabError, match="past the SAE's width"):
        check_edits([parse_edit("resid_post.15:256=0")], saes)
    with pytest.raises(SaelabError, match="no SAE at blocks.3.hook_resid_post"):
        check_edits([parse_edit("resid_post.3:1=0")], saes)


# -- the single-feature rule -----------------------------------------------------------------
@pytest.mark.parametrize("arch", ["jumprelu", "topk", "relu", "relu_layer_norm"])
def test_delta_is_the_error_preserving_rule(arch):
    """x' - x = (f' - f)[E] @ W_dec[E] with f the SAE's full encode (and std-scaled for
    layer_norm SAEs), steer adds A * W_dec[i]; only the edited features move."""
    ln = arch.endswith("layer_norm")
    sae = random_sae(
        64, 128, arch.split("_")[0], 3, **({"normalize_activations": "layer_norm"} if ln else {})
    )
    x = torch.randn(6, 64, generator=torch.Generator().manual_seed(4)) * 3
    f = sae.encode(x)
    live = int(f[0].argmax())
    edits = (
        Edit(MID, live, "set", 5.0),
        Edit(MID, DEAD, "shift", 2.0),
        Edit(MID, 11, "scale", 3.0),
        Edit(MID, 20, "steer", -4.0),
    )
    he = HookEdits(HookPoint(15, "resid_post"), sae, 2, [RowEdits(1, edits)])
    got = he.delta(x, torch.ones(6, dtype=torch.long))
    fp = f.clone()
    fp[:, live] = 5.0
    fp[:, DEAD] += 2.0
    fp[:, 11] *= 3.0
    want = (fp - f) @ sae.W_dec
    if ln:
        want = want * x.std(dim=-1, keepdim=True)
    want = want - 4.0 * sae.W_dec[20]
    torch.testing.assert_close(got, want.detach(), atol=1e-5, rtol=1e-5)


# -- generation --------------------------------------------------------------------------------
def test_rows_without_edits_are_bit_identical(smol, saes):
    seqs, first = plain_generate(smol, PROMPTS[:2])
    res = generate_patched(smol, PROMPTS[:2], [[], []], saes, max_new_tokens=N_NEW)
    assert res.first_logprobs.dtype == torch.float32
    assert torch.equal(res.first_logprobs, first)
    assert [r[:N_NEW] for r in res.token_ids] == [
        row[: len(r)] for r, row in zip(res.token_ids, seqs.tolist(), strict=True)
    ]
    # a baseline row beside an edited row is not touched at all
    steer = [parse_edit("resid_post.15:3@300")]
    mixed = generate_patched(smol, PROMPTS[:2], [steer, []], saes, max_new_tokens=N_NEW)
    assert torch.equal(mixed.first_logprobs[1], first[1])
    assert mixed.token_ids[1] == res.token_ids[1]
    assert not torch.equal(mixed.first_logprobs[0], first[0])


def test_edits_that_change_nothing(smol, saes):
    base = generate_patched(smol, PROMPTS[:1], [[]], saes, max_new_tokens=N_NEW)
    # f = 0 -> f' - f = 0 exactly, so x + 0 == x bit for bit; a scale of 1 gives f * 0 = 0
    for spec in (f"resid_post.15:{DEAD}=0", f"resid_post.10:{DEAD}=0", "resid_post.15:5*1"):
        res = generate_patched(
            smol, PROMPTS[:1], [[parse_edit(spec)]], saes, max_new_tokens=N_NEW, at="all"
        )
        assert torch.equal(res.first_logprobs, base.first_logprobs), spec
        assert res.token_ids == base.token_ids, spec
    # set to its current value: the value comes from another pass (a capture), and patching
    # recomputes f from only the edited column (x @ W_enc[:, i] vs the full matmul), so v - f
    # is float32 rounding (~1e-7 of f), not exactly 0: equal within rounding
    f = codes_at_last(smol, saes[MID], MID, PROMPTS[0])
    live = int(f.argmax())
    assert f[live] > 0
    edit = Edit(MID, live, "set", float(f[live]))
    res = generate_patched(smol, PROMPTS[:1], [[edit]], saes, max_new_tokens=N_NEW, at="last")
    torch.testing.assert_close(res.first_logprobs, base.first_logprobs, atol=1e-4, rtol=0)
    assert res.token_ids == base.token_ids


def reference_loop(lm, saes, prompt_ids, edits, at, n_new):
    """No KV cache: re-run the whole sequence for every new token, edits on the same positions."""
    seq = list(prompt_ids)
    toks, lps = [], []
    for _ in range(n_new):
        with torch.no_grad(), patched(lm, saes, [edits], [len(prompt_ids)], at=at):
            logits = lm.model(input_ids=torch.tensor([seq]), use_cache=False).logits[0, -1]
        lp = torch.log_softmax(logits.float(), -1)
        tok = int(lp.argmax())
        toks.append(tok)
        lps.append(float(lp[tok]))
        seq.append(tok)
    return toks, lps


@pytest.mark.parametrize("at", ["last+generated", "generated"])
def test_cached_generation_matches_a_cache_free_reference(smol, saes, at):
    from saelab.models.tokens import tokenize_prompts

    ids = tokenize_prompts(smol.tokenizer, PROMPTS[:1]).ids
    edits = [parse_edit("resid_post.15:3@60"), parse_edit("resid_post.10:9=8")]
    res = generate_patched(smol, ids, [edits], saes, max_new_tokens=N_NEW, at=at)
    toks, lps = reference_loop(smol, saes, ids[0], edits, at, N_NEW)
    assert res.token_ids[0] == toks[: len(res.token_ids[0])]
    torch.testing.assert_close(
        torch.tensor(res.token_logprobs[0]),
        torch.tensor(lps[: len(res.token_ids[0])]),
        atol=2e-3,
        rtol=0,
    )
    # the edits at generated positions matter: editing only the last prompt token differs
    last = generate_patched(smol, ids, [edits], saes, max_new_tokens=N_NEW, at="last")
    n = min(len(last.token_ids[0]), len(res.token_ids[0]))
    moved = torch.tensor(last.token_logprobs[0][1:n]) - torch.tensor(res.token_logprobs[0][1:n])
    assert last.token_ids[0] != res.token_ids[0] or moved.abs().max() > 1e-2


def test_batched_rows_match_single_rows(smol, saes):
    rows = [
        [parse_edit("resid_post.15:3@60")],
        [],
        [parse_edit("resid_post.10:9=8"), parse_edit(f"resid_post.15:{DEAD}+=20")],
        [parse_edit("resid_post.10:9*0")],
    ]
    prompts = [PROMPTS[0], PROMPTS[1], PROMPTS[2], PROMPTS[1]]
    batch = generate_patched(smol, prompts, rows, saes, max_new_tokens=N_NEW)
    for i, (p, r) in enumerate(zip(prompts, rows, strict=True)):
        one = generate_patched(smol, [p], [r], saes, max_new_tokens=N_NEW)
        assert batch.token_ids[i] == one.token_ids[0], i
        assert batch.texts[i] == one.texts[0]
        torch.testing.assert_close(
            batch.first_logprobs[i], one.first_logprobs[0], atol=1e-4, rtol=0
        )


def test_a_sweep_sharing_each_prompts_cache_equals_running_rows_apart(smol, saes):
    """Rows repeat prompts (a sweep): each prompt's tokens before the last run once and their
    KV cache is shared; results must equal the unshared batch and each row alone."""
    edits = [[parse_edit("resid_post.15:3@60")], [], [parse_edit("resid_post.10:9*0")]]
    prompts = [PROMPTS[0], PROMPTS[2]]
    rows = [e for e in edits for _ in prompts]
    texts = [p for _ in edits for p in prompts]
    shared = generate_patched(smol, texts, rows, saes, max_new_tokens=N_NEW)
    apart = generate_patched(smol, texts, rows, saes, max_new_tokens=N_NEW, share_prefix=False)
    assert shared.token_ids == apart.token_ids
    torch.testing.assert_close(shared.first_logprobs, apart.first_logprobs, atol=1e-4, rtol=0)
    for i in (0, 3):
        one = generate_patched(smol, [texts[i]], [rows[i]], saes, max_new_tokens=N_NEW)
        assert shared.token_ids[i] == one.token_ids[0]
        torch.testing.assert_close(
            shared.first_logprobs[i], one.first_logprobs[0], atol=1e-4, rtol=0
        )


def test_steering_moves_the_output(smol, saes):
    base = generate_patched(smol, PROMPTS[:1], [[]], saes, max_new_tokens=N_NEW)
    res = generate_patched(
        smol, PROMPTS[:1], [[parse_edit("resid_post.15:3@400")]], saes, max_new_tokens=N_NEW
    )
    assert res.texts[0] != base.texts[0]
    assert (res.first_logprobs - base.first_logprobs).abs().max() > 1.0


def test_sampling_is_seeded(smol, saes):
    rows = [[parse_edit("resid_post.15:3@60")]]
    kw = {"max_new_tokens": 4, "temperature": 1.0, "seed": 3}
    state = torch.get_rng_state()
    a = generate_patched(smol, PROMPTS[:1], rows, saes, **kw)
    assert torch.equal(torch.get_rng_state(), state)  # the caller's random state is kept
    b = generate_patched(smol, PROMPTS[:1], rows, saes, **kw)
    assert a.token_ids == b.token_ids


def test_generation_errors(smol, saes):
    with pytest.raises(SaelabError, match="2 prompts but 1 edit rows"):
        generate_patched(smol, PROMPTS[:2], [[]], saes)
    with pytest.raises(SaelabError, match="`at`"):
        generate_patched(smol, PROMPTS[:1], [[parse_edit("resid_post.15:1=0")]], saes, at="middle")
    with pytest.raises(SaelabError, match="no SAE at"):
        generate_patched(smol, PROMPTS[:1], [[parse_edit("resid_post.2:1=0")]], saes)
    with pytest.raises(SaelabError, match="conflict"):
        generate_patched(
            smol, PROMPTS[:1], [[Edit(MID, 1, "set", 0.0), Edit(MID, 1, "steer", 2.0)]], saes
        )
