"""`TraceDataset`: generation traces as torch tensors, padded batches and attention graphs.

Built on `TraceStore` (numpy); every item is read on demand, so a DataLoader with workers
streams a store larger than memory. The store pickles without its open arrays, so workers
started by spawn reopen what they need.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from saelab.errors import SaelabError
from saelab.store.trace_reader import open_traces
from saelab.store.traces import tril_mask


class TraceDataset(torch.utils.data.Dataset):
    """Traces of a run as torch tensors; use `collate_fn=TraceDataset.collate` for batches.

    `hooks`: None for every stored hook, [] for none. `attentions`: None for none, "all" for
    every stored layer, or a list of layers. Everything asked for is checked here, once, so a
    training loop never fails halfway through an epoch.
    """

    def __init__(
        self,
        run: Path | str,
        hooks: Sequence[str] | None = None,
        attentions: Sequence[int] | str | None = None,
    ) -> None:
        self.store = open_traces(run)
        st = self.store
        self.hooks = list(st.hooks) if hooks is None else [st.check_hook(h) for h in hooks]
        if attentions is None:
            self.attentions: list[int] = []
        elif isinstance(attentions, str):
            if attentions != "all":
                raise SaelabError(f"attentions={attentions!r}: use 'all' or a list of layers")
            st.require_attentions()
            self.attentions = list(st.attention_layers)
        else:
            layers = [attentions] if isinstance(attentions, int) else attentions
            self.attentions = [st.check_layer(x) for x in layers]

    def __len__(self) -> int:
        return self.store.n_traces

    def __getitem__(self, i: int) -> dict[str, Any]:
        st = self.store
        prompt, answer = st.prompt_ids(i), st.answer_ids(i)
        return {
            "index": int(st.indices[st._locate(i)[1]]),
            "prompt_ids": torch.from_numpy(prompt.copy()),
            "answer_ids": torch.from_numpy(answer.copy()),
            "input_ids": torch.from_numpy(np.concatenate([prompt, answer])),
            **st.texts(i),
            "hidden": {h: torch.from_numpy(st.hidden(i, h)) for h in self.hooks},
            "attentions": {x: torch.from_numpy(st.attention(i, x)) for x in self.attentions},
        }

    @staticmethod
    def collate(batch: list[dict[str, Any]]) -> dict[str, Any]:
        """Right-pad a list of items into batch tensors with masks (pads are 0 / False).

        input_ids (B, Tmax) + attention_mask; hidden {hook: (B, Lmax, d)} + hidden_mask
        (B, Lmax), rows left-aligned (for positions "generated" row 0 is the first answer
        token); attentions {layer: (B, heads, Tmax, Tmax)}; ids and texts stay lists.
        """
        b = len(batch)
        t_len = [len(x["input_ids"]) for x in batch]
        input_ids = torch.zeros((b, max(t_len, default=0)), dtype=torch.long)
        attention_mask = torch.zeros(input_ids.shape, dtype=torch.bool)
        for k, x in enumerate(batch):
            input_ids[k, : t_len[k]] = x["input_ids"]
            attention_mask[k, : t_len[k]] = True
        hooks = list(batch[0]["hidden"]) if batch else []
        l_len = [len(x["hidden"][hooks[0]]) if hooks else 0 for x in batch]
        hidden_mask = torch.zeros((b, max(l_len, default=0)), dtype=torch.bool)
        hidden = {}
        for h in hooks:
            d = batch[0]["hidden"][h].shape[-1]
            hidden[h] = torch.zeros((b, hidden_mask.shape[1], d), dtype=torch.float32)
            for k, x in enumerate(batch):
                hidden[h][k, : l_len[k]] = x["hidden"][h]
        for k in range(b):
            hidden_mask[k, : l_len[k]] = True
        attentions = {}
        for layer in batch[0]["attentions"] if batch else []:
            heads = batch[0]["attentions"][layer].shape[0]
            t = input_ids.shape[1]
            attentions[layer] = torch.zeros((b, heads, t, t), dtype=torch.float32)
            for k, x in enumerate(batch):
                attentions[layer][k, :, : t_len[k], : t_len[k]] = x["attentions"][layer]
        out: dict[str, Any] = {
            "index": torch.tensor([x["index"] for x in batch], dtype=torch.long),
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "hidden": hidden,
            "hidden_mask": hidden_mask,
            "attentions": attentions,
        }
        for key in ("prompt_ids", "answer_ids", "answer_text", "clean_answer", "finish"):
            out[key] = [x[key] for x in batch]
        return out

    def as_graph(self, i: int, threshold: float, reduce: str = "mean") -> dict[int, dict]:
        """Attention of trace i as edge lists (PyG style), one per requested layer.

        An edge src -> dst (src <= dst: key to query, causal) is kept where the head-reduced
        weight ("mean" or "max" over the kept heads) exceeds `threshold`; edges come in
        row-major order (by dst, then src). Computed on the packed triangle: no T x T map.
        """
        if reduce not in ("mean", "max"):
            raise SaelabError(f"reduce={reduce!r} is not known; use 'mean' or 'max'")
        if not self.attentions:
            raise SaelabError(
                "as_graph needs attention layers: open TraceDataset(run, attentions='all') "
                "or attentions=[layers]"
            )
        st = self.store
        t = int(st.lengths[st._locate(i)[1]])
        mask = tril_mask(t)
        graphs = {}
        for layer in self.attentions:
            packed = st.attention_packed(i, layer)
            w = packed.mean(axis=0) if reduce == "mean" else packed.max(axis=0)
            keep = w > threshold
            sel = np.zeros(t * t, dtype=bool)
            sel[mask] = keep  # back to (query, key) positions, still row-major
            dst, src = np.divmod(np.flatnonzero(sel), t)
            graphs[layer] = {
                "src": torch.from_numpy(src),
                "dst": torch.from_numpy(dst),
                "weight": torch.from_numpy(w[keep].astype(np.float32)),
            }
        return graphs
