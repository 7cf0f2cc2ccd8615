"""A small custom transformer (no `transformers` code) and its synthetic task, for the tests of
`saelab.models.wrap` and `module:` model specs.

The task: a mode sign, then a run of letters going up ("+cdefg", wrapping after z) or down
("-gfedc"). From the first letter on, the next letter is determined by the sign, so a briefly
trained model reaches high accuracy, and every position has to carry the sign forward: the
two groups the contrast test separates. Attention masks padding keys (a query always sees
itself), and positions come from the mask, so left- and right-padded batches give each prompt
the numbers it gets alone.
"""

from __future__ import annotations

import math

import torch
from torch import nn

LETTERS = "abcdefghijklmnopqrstuvwxyz"
VOCAB = {
    "<pad>": 0,
    "<bos>": 1,
    "<eos>": 2,
    "+": 3,
    "-": 4,
    **{c: i + 5 for i, c in enumerate(LETTERS)},
}


class Attention(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(d, 3 * d)
        self.out = nn.Linear(d, d)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (z.transpose(1, 2) for z in (q, k, v))
        scores = q @ k.transpose(-1, -2) / math.sqrt(d // self.heads)
        causal = torch.ones(t, t, dtype=torch.bool, device=x.device).tril()
        allowed = causal & mask[:, None, None, :].bool()
        allowed = allowed | torch.eye(t, dtype=torch.bool, device=x.device)
        scores = scores.masked_fill(~allowed, float("-inf"))
        y = torch.softmax(scores, dim=-1) @ v
        return self.out(y.transpose(1, 2).reshape(b, t, d))


class Block(nn.Module):
    def __init__(self, d: int, heads: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = Attention(d, heads)
        self.ln2 = nn.LayerNorm(d)
        self.ff = nn.Sequential(nn.Linear(d, 4 * d), nn.GELU(), nn.Linear(4 * d, d))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x), mask)
        return x + self.ff(self.ln2(x))


class Encoder(nn.Module):
    def __init__(self, d: int, heads: int, n_layers: int):
        super().__init__()
        self.layers = nn.ModuleList(Block(d, heads) for _ in range(n_layers))

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x, mask)
        return x


class TinyLM(nn.Module):
    """Token + position embeddings, `encoder.layers` of pre-norm blocks, a final norm, a head."""

    def __init__(self, vocab: int = len(VOCAB), d: int = 48, heads: int = 4, n_layers: int = 3):
        super().__init__()
        self.embed = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(64, d)
        self.encoder = Encoder(d, heads, n_layers)
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab)

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        pos = (attention_mask.long().cumsum(-1) - 1).clamp(min=0)
        x = self.embed(input_ids) + self.pos(pos)
        return self.head(self.norm(self.encoder(x, attention_mask)))


def run_text(start: int, length: int, up: bool) -> str:
    step = 1 if up else -1
    return ("+" if up else "-") + "".join(LETTERS[(start + step * i) % 26] for i in range(length))


def encode(text: str) -> list[int]:
    return [VOCAB["<bos>"], *(VOCAB[c] for c in text)]


def batch(n: int, length: int, gen: torch.Generator) -> torch.Tensor:
    starts = torch.randint(0, 26, (n,), generator=gen).tolist()
    ups = (torch.rand(n, generator=gen) < 0.5).tolist()
    return torch.tensor([encode(run_text(s, length, u)) for s, u in zip(starts, ups, strict=True)])


def train(steps: int = 150, seed: int = 0) -> TinyLM:
    """Next-letter training on random runs; a few seconds on a CPU."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    model = TinyLM()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(steps):
        ids = batch(64, 10, gen)
        logits = model(ids)[:, 2:-1]  # from the first letter on
        loss = nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), ids[:, 3:].reshape(-1)
        )
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def accuracy(model: nn.Module, seed: int = 1) -> float:
    """Next-letter accuracy from the first letter on."""
    ids = batch(256, 10, torch.Generator().manual_seed(seed))
    with torch.no_grad():
        pred = model(ids)[:, 2:-1].argmax(-1)
    return float((pred == ids[:, 3:]).float().mean())


def build() -> tuple[TinyLM, dict[str, int]]:
    """A `module:tests.tiny_custom:build` factory: an untrained model and its vocabulary."""
    torch.manual_seed(0)
    return TinyLM(), VOCAB


def build_wrapped():  # noqa: ANN201 - a factory that calls wrap itself
    from saelab.models import wrap

    torch.manual_seed(0)
    return wrap(TinyLM(), VOCAB, sites={"mlp_out": "ff", "attn_out": "attn"}, name="tiny")


def build_trained():  # noqa: ANN201 - a factory for `module:tests.tiny_custom:build_trained`
    """The trained model as a user's factory gives it: weights loaded from the checkpoint named
    by $TINY_CUSTOM_WEIGHTS (trained here when unset), wrapped with its vocabulary."""
    import os

    from saelab.models import wrap

    path = os.environ.get("TINY_CUSTOM_WEIGHTS")
    if path:
        model = TinyLM()
        model.load_state_dict(torch.load(path, weights_only=True))
        model.eval()
    else:
        model = train()
    return wrap(model, VOCAB, sites={"mlp_out": "ff", "attn_out": "attn"}, name="tiny-trained")
