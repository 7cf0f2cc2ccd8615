"""Weight-only int8 linear layers for CPU: a quarter of the float32 weight memory.

torch's dynamic int8 quantisation also quantises each linear layer's *input* to 8 bits with
one scale per tensor. On models with massive activations (a few residual dimensions near
2.6e4 in SmolLM2) that scale is set by the outliers and every other value loses its
precision: cosine similarity to float32 fell to ~0.85 by layer 11. Here only the weights are
int8 (one scale per output row); each forward dequantises one layer's weight to the
activation dtype, so accuracy stays near float32's while the resident weights shrink 4x.
(`torch._weight_int8pack_mm` does the same fused but measured 30x slower than a float32
matmul on this CPU.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


class Int8Linear(torch.nn.Module):
    """A linear layer holding int8 weights with per-row float32 scales."""

    def __init__(self, linear: torch.nn.Linear | None = None, *, shape: tuple[int, int] = (0, 0)):
        """From a float linear layer, or (`linear=None`) an empty (out, in) shell for
        `load_weight` to fill, so a loader never holds the float weights of the whole model."""
        super().__init__()
        out_f, in_f = shape if linear is None else (linear.out_features, linear.in_features)
        self.in_features = in_f
        self.out_features = out_f
        self.register_buffer("qweight", torch.empty((out_f, in_f), dtype=torch.int8))
        self.register_buffer("scale", torch.empty(out_f, dtype=torch.float32))
        bias = None
        if linear is not None and linear.bias is not None:
            bias = linear.bias.detach().float().clone()
        self.register_buffer("bias", bias)
        if linear is not None:
            self.load_weight(linear.weight.detach())

    def load_weight(self, w: torch.Tensor, rows: int = 4096) -> None:
        """Quantise a float (out, in) weight into this layer, a block of rows at a time (the
        float32 temporaries stay a few MB whatever the layer's size)."""
        if tuple(w.shape) != (self.out_features, self.in_features):
            raise ValueError(
                f"weight of shape {tuple(w.shape)} for an Int8Linear of"
                f" {(self.out_features, self.in_features)}"
            )
        for a in range(0, self.out_features, rows):
            block = w[a : a + rows].float()
            scale = (block.abs().amax(dim=1) / 127.0).clamp_min(1e-12)
            self.qweight[a : a + rows] = torch.round(block / scale[:, None]).to(torch.int8)
            self.scale[a : a + rows] = scale

    def load_bias(self, b: torch.Tensor) -> None:
        self.bias = b.detach().float().clone()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.qweight.to(x.dtype) * self.scale.to(x.dtype)[:, None]
        b = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, w, b)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 weights"


def quantize_int8(model: torch.nn.Module) -> torch.nn.Module:
    """Replace every nn.Linear except the output head (tied to the embeddings) in place."""
    head = model.get_output_embeddings() if hasattr(model, "get_output_embeddings") else None
    for module in list(model.modules()):
        for child_name, child in list(module.named_children()):
            if isinstance(child, torch.nn.Linear) and child is not head:
                setattr(module, child_name, Int8Linear(child))
    return model
