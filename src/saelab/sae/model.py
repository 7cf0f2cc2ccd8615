"""The SAE: one module for every architecture, in SAELens's conventions and file layout.

    pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    topk:      f = the k largest of relu(pre) per token, others 0
    jumprelu:  f = relu(pre) * (pre > threshold)        (also how a trained BatchTopK is saved)
    relu:      f = relu(pre)
    x_hat = f @ W_dec + b_dec

Shapes follow SAELens: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in],
threshold [d_sae]. A folder holds `cfg.json`, `sae_weights.safetensors` and optionally
`sparsity.safetensors` (`sparsity`: log10 feature density), so an SAE saved here loads in
SAELens and the other way round. Training keeps its own fast layout (sae/train.py) and
exports to this module.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import torch
from torch import nn

from saelab.errors import SaelabError
from saelab.run import atomic_dir

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "relu")
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


@dataclass
class SAEConfig:
    """The SAELens `cfg.json` keys, plus `metadata` (model, hook, data, quality figures)."""

    d_in: int
    d_sae: int
    architecture: str = "topk"
    k: int | None = None  # topk: per token; batchtopk: per token on average over a batch
    dtype: str = "float32"
    device: str = "cpu"
    apply_b_dec_to_input: bool = True
    normalize_activations: str = "none"
    reshape_activations: str = "none"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise SaelabError(
                f"SAE architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}"
            )
        if self.d_in < 1 or self.d_sae < 1:
            raise SaelabError(f"SAE sizes must be positive (d_in {self.d_in}, d_sae {self.d_sae})")
        if self.architecture not in ("topk", "batchtopk"):
            self.k = None  # k means nothing to a JumpReLU or ReLU SAE
        elif self.k is None or not 1 <= self.k <= self.d_sae:
            raise SaelabError(
                f"--k {self.k} must be between 1 and d_sae ({self.d_sae}) for a"
                f" {self.architecture} SAE"
            )

    @property
    def hook_name(self) -> str:
        return str(self.metadata.get("hook_name", ""))

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["k"] is None:
            del d["k"]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "cfg.json") -> SAEConfig:
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("d_in", "d_sae") if k not in d]
        if missing:
            raise SaelabError(f"{source} has no {', '.join(missing)}: not an SAE config")
        kw = {k: v for k, v in d.items() if k in known}
        meta = dict(kw.get("metadata") or {})
        for k in ("hook_name", "model_name", "context_size", "prepend_bos"):  # SAELens < 6
            if k in d and k not in meta:
                meta[k] = d[k]
        kw["metadata"] = meta
        if kw.get("normalize_activations") is None:
            kw["normalize_activations"] = "none"
        kw["architecture"] = str(kw.get("architecture", "jumprelu" if "threshold" in d else "relu"))
        aliases = {"standard": "relu"}  # SAELens's name for the ReLU-L1 SAE
        kw["architecture"] = aliases.get(kw["architecture"], kw["architecture"])
        return cls(**kw)


class SAE(nn.Module):
    """A sparse autoencoder for inference, saving and loading (training: sae/train.py)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dt = _DTYPES.get(cfg.dtype, torch.float32)
        d, s = cfg.d_in, cfg.d_sae
        self.W_enc = nn.Parameter(torch.zeros(d, s, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(s, dtype=dt))
        self.W_dec = nn.Parameter(torch.zeros(s, d, dtype=dt))
        self.b_dec = nn.Parameter(torch.zeros(d, dtype=dt))
        if cfg.architecture in ("jumprelu", "batchtopk"):
            self.threshold = nn.Parameter(torch.zeros(s, dtype=dt))
        else:
            self.register_parameter("threshold", None)

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    # -- the maths -----------------------------------------------------------------------
    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        pre = self.pre_acts(x)
        arch = self.cfg.architecture
        if arch == "topk":
            vals, idx = torch.relu(pre).topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals)
        if arch in ("jumprelu", "batchtopk"):  # a trained BatchTopK is a JumpReLU
            return torch.relu(pre) * (pre > self.threshold)
        return torch.relu(pre)

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.decode(self.encode(x))

    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on `scale * x` work on raw x (SAELens's fold, same maths):
        the pre-activations are unchanged, so thresholds stay as they are."""
        with torch.no_grad():
            self.W_enc.mul_(scale)
            self.W_dec.div_(scale)
            self.b_dec.div_(scale)

    # -- files ---------------------------------------------------------------------------
    def state_for_file(self) -> dict[str, torch.Tensor]:
        out = {
            "W_enc": self.W_enc.detach().contiguous(),
            "W_dec": self.W_dec.detach().contiguous(),
            "b_enc": self.b_enc.detach().contiguous(),
            "b_dec": self.b_dec.detach().contiguous(),
        }
        if self.threshold is not None:
            out["threshold"] = self.threshold.detach().contiguous()
        return out

    def save(self, folder: Path | str, log_density: torch.Tensor | None = None) -> Path:
        """Write cfg.json + sae_weights.safetensors (+ sparsity.safetensors) atomically."""
        from safetensors.torch import save_file

        folder = Path(folder)
        cfg = self.cfg.to_dict()
        if self.cfg.architecture == "batchtopk":  # saved for inference as what it is
            cfg["architecture"] = "jumprelu"
            cfg.pop("k", None)
            cfg["metadata"] = {**cfg["metadata"], "trained_as": "batchtopk", "k": self.cfg.k}
        elif self.cfg.architecture == "relu":
            cfg["architecture"] = "standard"  # SAELens's name for the ReLU-L1 SAE
        with atomic_dir(folder) as tmp:
            (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            save_file(
                {k: v.cpu() for k, v in self.state_for_file().items()},
                str(tmp / WEIGHTS_FILE),
                metadata={"format": "pt"},
            )
            if log_density is not None:
                save_file(
                    {"sparsity": log_density.detach().float().cpu().contiguous()},
                    str(tmp / SPARSITY_FILE),
                )
        return folder

    @classmethod
    def load(
        cls, folder: Path | str, device: str | torch.device = "cpu", dtype: str | None = None
    ) -> SAE:
        """Load a folder saved by saelab or SAELens; every mismatch is a one-line error."""
        from safetensors import safe_open

        folder = Path(folder)
        cfg_path, w_path = folder / CFG_FILE, folder / WEIGHTS_FILE
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise SaelabError(
                    f"SAE folder {folder} has no {p.name}: expected {CFG_FILE} and {WEIGHTS_FILE}"
                    " (SAELens layout)"
                )
        try:
            raw = json.loads(cfg_path.read_text())
        except json.JSONDecodeError as e:
            raise SaelabError(
                f"{cfg_path} is not valid JSON ({e}); the SAE folder is damaged"
            ) from e
        cfg = SAEConfig.from_dict(raw, str(cfg_path))
        if dtype:
            cfg.dtype = dtype
        sae = cls(cfg)
        want = {name: tuple(t.shape) for name, t in sae.state_for_file().items()}
        with safe_open(str(w_path), framework="pt") as f:
            keys = set(f.keys())
            for name, shape in want.items():
                if name not in keys:
                    raise SaelabError(f"{w_path} has no tensor {name!r} (has {sorted(keys)})")
                got = tuple(f.get_slice(name).get_shape())
                if got != shape and not (name == "threshold" and got in ((), (1,))):
                    raise SaelabError(
                        f"{w_path}: {name} has shape {list(got)}, but cfg.json says"
                        f" d_in={cfg.d_in}, d_sae={cfg.d_sae} (expected {list(shape)})"
                    )
            with torch.no_grad():
                for name in want:
                    t = f.get_tensor(name)
                    if name == "threshold" and t.numel() == 1:
                        t = t.reshape(()).expand(cfg.d_sae)
                    getattr(sae, name).copy_(t)
        return sae.to(device)


def load_log_density(folder: Path | str) -> torch.Tensor | None:
    p = Path(folder) / SPARSITY_FILE
    if not p.is_file():
        return None
    from safetensors.torch import load_file

    return load_file(str(p)).get("sparsity")


def init_weights(sae: SAE, seed: int, b_dec: torch.Tensor | None = None) -> SAE:
    """Kaiming-uniform decoder rows at unit norm, encoder = decoder transposed, b_dec at the
    data's (geometric) median when given: both decide how far a short run gets."""
    g = torch.Generator().manual_seed(seed)
    w = torch.empty(sae.d_sae, sae.d_in).uniform_(-1, 1, generator=g)
    w = w / w.norm(dim=1, keepdim=True).clamp_min(1e-12)
    with torch.no_grad():
        sae.W_dec.copy_(w)
        sae.W_enc.copy_(w.t())
        sae.b_enc.zero_()
        sae.b_dec.copy_(b_dec if b_dec is not None else torch.zeros(sae.d_in))
        if sae.threshold is not None:
            sae.threshold.zero_()
    return sae
