"""Hook-point names: canonical, short, ranges, module paths, and the errors users see."""

from __future__ import annotations

import pytest

from saelab.errors import SaelabError
from saelab.models.adapters import ADAPTERS
from saelab.models.hooks import HookPoint, parse_hook, parse_hooks


def names(spec, n=30, mp=None):
    return [h.name for h in parse_hooks(spec, n, mp)]


def test_canonical_and_short_forms_agree():
    assert names("blocks.12.hook_resid_post") == ["blocks.12.hook_resid_post"]
    assert names("resid_post.12") == ["blocks.12.hook_resid_post"]
    assert names("hook_resid_post.12") == ["blocks.12.hook_resid_post"]
    assert names("blocks.3.attn.hook_pattern") == ["blocks.3.attn.hook_pattern"]
    assert names("pattern.3") == ["blocks.3.attn.hook_pattern"]
    for site in ("resid_pre", "resid_mid", "resid_post", "mlp_out", "attn_out"):
        assert names(f"{site}.4") == [f"blocks.4.hook_{site}"]


def test_ranges_negative_all_and_lists():
    assert names("resid_post.0-29") == [f"blocks.{i}.hook_resid_post" for i in range(30)]
    assert names("resid_post.*", n=3) == [f"blocks.{i}.hook_resid_post" for i in range(3)]
    assert names("resid_post.-1") == ["blocks.29.hook_resid_post"]
    # several specs, duplicates removed, sorted in forward-pass order
    got = names(["resid_post.5,mlp_out.5", "resid_pre.5 resid_post.5", "resid_mid.5"])
    assert got == [
        "blocks.5.hook_resid_pre",
        "blocks.5.hook_resid_mid",
        "blocks.5.hook_mlp_out",
        "blocks.5.hook_resid_post",
    ]


def test_module_paths_through_adapters():
    llama = ADAPTERS["llama"]
    assert names("model.layers.12", mp=llama.hook_for_module_path) == ["blocks.12.hook_resid_post"]
    assert names("model.layers.3.mlp", mp=llama.hook_for_module_path) == ["blocks.3.hook_mlp_out"]
    assert names("model.layers.3.self_attn", mp=llama.hook_for_module_path) == [
        "blocks.3.hook_attn_out"
    ]
    gpt2 = ADAPTERS["gpt2"]
    assert names("transformer.h.2", n=4, mp=gpt2.hook_for_module_path) == [
        "blocks.2.hook_resid_post"
    ]
    gemma = ADAPTERS["gemma2"]
    assert names(
        "model.layers.1.post_feedforward_layernorm", n=4, mp=gemma.hook_for_module_path
    ) == ["blocks.1.hook_mlp_out"]


@pytest.mark.parametrize(
    "spec, fragment",
    [
        ("resid_post.30", "past the model's depth (30 layers"),
        ("blocks.31.hook_resid_post", "past the model's depth"),
        ("resid_post.-31", "past the model's depth"),
        ("resid_post.0-30", "past the model's depth"),
        ("resid_post.5-2", "runs backwards"),
        ("blocks.3.hook_resid_sideways", "unknown hook site"),
        ("banana", "cannot read hook"),
        ("model.layers.3", "cannot read hook"),  # module paths need an adapter
    ],
)
def test_bad_hooks_name_the_input(spec, fragment):
    with pytest.raises(SaelabError) as e:
        parse_hooks(spec, 30)
    msg = str(e.value)
    assert fragment in msg and spec in msg and "\n" not in msg


def test_empty_hooks_refused():
    with pytest.raises(SaelabError, match="no hook points"):
        parse_hooks(" , ", 30)


def test_hookpoint_order_and_names():
    h = parse_hook("attn_out.2", 4)[0]
    assert h == HookPoint(2, "attn_out") and h.short == "attn_out.2" and str(h) == h.name
