"""The shape of a wrapped torch module, for plans: counted from the module itself.

A Hugging Face model's shape comes from its config (`shapes.ModelShape`); a custom module has
none, but it is in memory (its factory built it), so its parameters are simply counted: per
block of the layer stack, and outside it (embeddings, head, final norm). The planner needs
nothing else than what `ModelShape` offers, under the same names; where a custom module does
not say (heads, MLP width), the values are stated guesses that only size a forward pass's
temporaries.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from saelab.errors import SaelabError
from saelab.models.loaded import LoadedModel

_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


@dataclass(frozen=True)
class ModuleShape:
    """What plans need of a wrapped module, duck-typed as a `ModelShape` (family 'custom')."""

    name: str
    n_layers: int
    d_model: int
    layer_sizes: tuple[int, ...]  # parameters of each block
    layer_linear: tuple[int, ...]  # linear-map weights of each block
    layer_rows: tuple[int, ...]  # output rows of those linear maps
    outside: int  # parameters outside the blocks (embeddings, head, norms)
    outside_linear: int  # linear weights among them (int8 quantises every nn.Linear here)
    outside_rows: int
    vocab_size: int
    family: str = "custom"
    tied_embeddings: bool = False
    gated_mlp: bool = False
    max_position: int = 0

    @property
    def d_mlp(self) -> int:  # a guess: sizes a forward pass's temporaries only
        return 4 * self.d_model

    n_heads = 1
    n_kv_heads = 1

    @property
    def head_dim(self) -> int:
        return self.d_model

    @classmethod
    def of(cls, lm: LoadedModel) -> ModuleShape:
        module = lm.model.module  # type: ignore[union-attr]
        stack = module.get_submodule(lm.adapter.layers[0][len(lm.adapter.module_prefix) :])
        sizes, linear, rows = [], [], []
        for block in stack:  # type: ignore[union-attr]
            sizes.append(sum(p.numel() for p in block.parameters()))
            lins = [m for m in block.modules() if isinstance(m, torch.nn.Linear)]
            linear.append(sum(m.weight.numel() for m in lins))
            rows.append(sum(m.out_features for m in lins))
        total = sum(p.numel() for p in module.parameters())
        all_lins = [m for m in module.modules() if isinstance(m, torch.nn.Linear)]
        emb = next((m for m in module.modules() if isinstance(m, torch.nn.Embedding)), None)
        return cls(
            name=lm.name,
            n_layers=lm.n_layers,
            d_model=lm.d_model,
            layer_sizes=tuple(sizes),
            layer_linear=tuple(linear),
            layer_rows=tuple(rows),
            outside=total - sum(sizes),
            outside_linear=sum(m.weight.numel() for m in all_lins) - sum(linear),
            outside_rows=sum(m.out_features for m in all_lins) - sum(rows),
            vocab_size=emb.num_embeddings if emb is not None else 0,
        )

    def _n(self, n_layers: int | None) -> int:
        if n_layers is None:
            return self.n_layers
        if not 0 <= n_layers <= self.n_layers:
            raise SaelabError(f"n_layers={n_layers} is out of range for {self.name}")
        return n_layers

    @property
    def n_params(self) -> int:
        return self.outside + sum(self.layer_sizes)

    def embedding_params(self) -> int:
        return self.outside  # everything outside the blocks is loaded whatever the hooks

    def head_params(self) -> int:
        return 0

    def layer_params(self) -> int:
        return max(self.layer_sizes, default=0)

    def linear_params(self, n_layers: int | None = None) -> int:
        return sum(self.layer_linear[: self._n(n_layers)])

    def linear_rows(self, n_layers: int | None = None) -> int:
        return sum(self.layer_rows[: self._n(n_layers)])

    def weight_bytes(self, dtype: str, n_layers: int | None = None) -> int:
        n = self._n(n_layers)
        params = self.outside + sum(self.layer_sizes[:n])
        if dtype == "int8":  # `quantize_int8` on a module: every nn.Linear, head included
            lin = self.linear_params(n) + self.outside_linear
            rows = self.linear_rows(n) + self.outside_rows
            return 4 * (params - lin) + lin + 4 * rows
        if dtype not in _BYTES:
            raise SaelabError(f"dtype {dtype!r} is not supported for a custom module")
        return _BYTES[dtype] * params

    def flops_per_token(
        self, seq_len: int, n_layers: int | None = None, lm_head: bool = False
    ) -> float:
        """2 FLOPs per linear weight of the blocks reached (attention scores not counted:
        the module's attention is unknown); the head as one d_model x vocab map."""
        total = 2.0 * self.linear_params(n_layers)
        if lm_head:
            total += 2.0 * self.d_model * self.vocab_size
        return total

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "family": self.family,
            "n_layers": self.n_layers,
            "d_model": self.d_model,
            "n_params": self.n_params,
        }
