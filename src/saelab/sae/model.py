"""The SAE: one module for every architecture, in SAELens's conventions and file layout.

    pre = (x - b_dec if apply_b_dec_to_input else x) @ W_enc + b_enc
    topk:      f = the k largest of relu(pre) per token, others 0
    jumprelu:  f = relu(pre) * (pre > threshold)        (also how a trained BatchTopK is saved)
    relu:      f = relu(pre)
    x_hat = f @ W_dec + b_dec

Pretrained releases add three variations, all optional and all absent from the cfg.json of an
SAE saelab trains (so that layout is unchanged):
    normalize_activations="layer_norm"  encode sees (x - mean) / (std + 1e-5) per token (OpenAI's
                                        GPT-2 SAEs); forward un-normalises its reconstruction
    d_out (transcoders)                 W_dec [d_sae, d_out], b_dec [d_out]; an optional affine
                                        skip W_skip [d_in, d_out] adds x @ W_skip in forward
    has_decoder=False                   encoder only (a cross-layer transcoder's layer): its
                                        decoder is never needed for activations, so none is kept

Shapes follow SAELens: W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc [d_sae], b_dec [d_in],
threshold [d_sae]. A folder holds `cfg.json`, `sae_weights.safetensors` and optionally
`sparsity.safetensors` (`sparsity`: log10 feature density), so an SAE saved here loads in
SAELens and the other way round. Training keeps its own fast layout (sae/train.py) and
exports to this module.
"""

from __future__ import annotations

import json
import math
import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from saelab.damage import CRC_KEY, Origin, check_crc, one_line, origin_of, tensors_crc32c
from saelab.errors import SaelabError
from saelab.nospace import disk_space_for
from saelab.run import atomic_dir

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "relu")
CFG_FILE = "cfg.json"
WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
SAES_DIR = "saes"  # a run's trained SAEs: RUN/saes/HOOK
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
NORMALIZATIONS = ("none", "layer_norm", "expected_average_only_in", "constant_norm_rescale")
LN_EPS = 1e-5  # OpenAI's and SAELens's layer-norm epsilon, added to the std (not the variance)
#: SAELens architecture names that are one of ours plus a transcoder output (and maybe a skip)
_ARCH_ALIASES: dict[str, tuple[str, bool]] = {
    "standard": ("relu", False),  # SAELens's name for the ReLU-L1 SAE
    "transcoder": ("relu", False),
    "skip_transcoder": ("relu", True),
    "jumprelu_transcoder": ("jumprelu", False),
    "jumprelu_skip_transcoder": ("jumprelu", True),
    "topk_transcoder": ("topk", False),
}


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
    d_out: int | None = None  # transcoders: width of the output site (None: d_in, an autoencoder)
    skip_connection: bool = False  # transcoders: an affine skip W_skip [d_in, d_out] in forward
    has_decoder: bool = True  # False: encoder only (CLT layers); decode raises

    def __post_init__(self) -> None:
        for name in ("d_in", "d_sae", "d_out", "k"):
            v = getattr(self, name)
            if v is None and name in ("d_out", "k"):
                continue
            if isinstance(v, bool) or not isinstance(v, numbers.Integral):
                raise SaelabError(f"SAE config: {name} is {v!r}, not a whole number")
            setattr(self, name, int(v))
        for name in ("architecture", "dtype", "normalize_activations", "reshape_activations"):
            if not isinstance(getattr(self, name), str):
                raise SaelabError(f"SAE config: {name} is {getattr(self, name)!r}, not a name")
        if not isinstance(self.metadata, dict):
            raise SaelabError(f"SAE config: metadata is {type(self.metadata).__name__}, not a map")
        if self.architecture not in ARCHITECTURES:
            raise SaelabError(
                f"SAE architecture {self.architecture!r} is not one of {', '.join(ARCHITECTURES)}"
            )
        if self.d_in < 1 or self.d_sae < 1 or (self.d_out is not None and self.d_out < 1):
            raise SaelabError(
                f"SAE sizes must be positive (d_in {self.d_in}, d_sae {self.d_sae},"
                f" d_out {self.d_out})"
            )
        if self.apply_b_dec_to_input and self.d_out not in (None, self.d_in):
            raise SaelabError(
                f"apply_b_dec_to_input needs b_dec in the input space, but this transcoder maps"
                f" d_in={self.d_in} to d_out={self.d_out}: set apply_b_dec_to_input false"
            )
        if self.normalize_activations not in NORMALIZATIONS:
            raise SaelabError(
                f"normalize_activations {self.normalize_activations!r} is not one of"
                f" {', '.join(NORMALIZATIONS)}"
            )
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

    @property
    def out_width(self) -> int:
        """Width of the reconstruction: d_out for a transcoder, else d_in."""
        return self.d_out if self.d_out is not None else self.d_in

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["k"] is None:
            del d["k"]
        # the transcoder/encoder-only keys appear only when used: a plain SAE's cfg.json is
        # exactly what SAELens writes
        for key, default in (("d_out", None), ("skip_connection", False), ("has_decoder", True)):
            if d[key] == default:
                del d[key]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str = "cfg.json") -> SAEConfig:
        known = {f.name for f in fields(cls)}
        missing = [k for k in ("d_in", "d_sae") if k not in d]
        if missing:
            raise SaelabError(f"{source} has no {', '.join(missing)}: not an SAE config")
        kw = {k: v for k, v in d.items() if k in known}
        if not isinstance(kw.get("metadata") or {}, Mapping):
            raise SaelabError(f"{source}: metadata is not a map of settings")
        meta = dict(kw.get("metadata") or {})
        for k in ("hook_name", "model_name", "context_size", "prepend_bos"):  # SAELens < 6
            if k in d and k not in meta:
                meta[k] = d[k]
        kw["metadata"] = meta
        if kw.get("normalize_activations") is None:
            kw["normalize_activations"] = "none"
        if "hook_name_out" in d and "hook_name_out" not in meta:  # SAELens transcoders
            meta["hook_name_out"] = d["hook_name_out"]
        kw["architecture"] = str(kw.get("architecture", "jumprelu" if "threshold" in d else "relu"))
        if kw["architecture"] in _ARCH_ALIASES:
            kw["architecture"], skip = _ARCH_ALIASES[kw["architecture"]]
            kw["skip_connection"] = bool(kw.get("skip_connection", False) or skip)
        return cls(**kw)


class SAE(nn.Module):
    """A sparse autoencoder for inference, saving and loading (training: sae/train.py)."""

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        self.cfg = cfg
        dt = _DTYPES.get(cfg.dtype, torch.float32)
        d, s, o = cfg.d_in, cfg.d_sae, cfg.out_width
        self.W_enc = nn.Parameter(torch.zeros(d, s, dtype=dt))
        self.b_enc = nn.Parameter(torch.zeros(s, dtype=dt))
        self.W_dec: nn.Parameter | None
        if cfg.has_decoder:
            self.W_dec = nn.Parameter(torch.zeros(s, o, dtype=dt))
        else:
            self.register_parameter("W_dec", None)
        self.b_dec = nn.Parameter(torch.zeros(o, dtype=dt))
        self.threshold: nn.Parameter | None
        if cfg.architecture in ("jumprelu", "batchtopk"):
            self.threshold = nn.Parameter(torch.zeros(s, dtype=dt))
        else:
            self.register_parameter("threshold", None)
        self.W_skip: nn.Parameter | None
        if cfg.skip_connection:
            self.W_skip = nn.Parameter(torch.zeros(d, o, dtype=dt))
        else:
            self.register_parameter("W_skip", None)

    @property
    def d_in(self) -> int:
        return self.cfg.d_in

    @property
    def d_sae(self) -> int:
        return self.cfg.d_sae

    @property
    def is_transcoder(self) -> bool:
        return self.cfg.d_out is not None

    # -- the maths -----------------------------------------------------------------------
    def normalize_input(
        self, x: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
        """(x as the encoder sees it, mean, std); mean and std are None without layer_norm.

        The std is torch's default (unbiased), as in OpenAI's `LN` and SAELens's layer_norm."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.normalize_activations != "layer_norm":
            return x, None, None
        mu = x.mean(dim=-1, keepdim=True)
        x = x - mu
        std = x.std(dim=-1, keepdim=True)
        return x / (std + LN_EPS), mu, std

    def _pre(self, xn: torch.Tensor) -> torch.Tensor:
        if self.cfg.apply_b_dec_to_input:
            xn = xn - self.b_dec
        if xn.dim() == 2:  # the bias added inside the matmul: one pass less over (rows x d_sae)
            return torch.addmm(self.b_enc, xn, self.W_enc)
        return xn @ self.W_enc + self.b_enc

    def pre_acts(self, x: torch.Tensor) -> torch.Tensor:
        return self._pre(self.normalize_input(x)[0])

    def activate(self, pre: torch.Tensor) -> torch.Tensor:
        arch = self.cfg.architecture
        if arch == "topk":
            vals, idx = torch.relu(pre).topk(self.cfg.k, dim=-1)
            return torch.zeros_like(pre).scatter(-1, idx, vals)
        if arch in ("jumprelu", "batchtopk"):  # a trained BatchTopK is a JumpReLU
            return torch.relu(pre) * (pre > self.threshold)
        return torch.relu(pre)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The codes of x (of the normalised x, for a layer_norm SAE)."""
        return self.activate(self.pre_acts(x))

    def decode(self, f: torch.Tensor) -> torch.Tensor:
        """f @ W_dec + b_dec: in the normalised space for a layer_norm SAE (forward undoes it),
        without the skip term for a skip transcoder (it needs x; forward adds it)."""
        if self.W_dec is None:
            raise SaelabError(
                f"this SAE ({self.cfg.metadata.get('format', 'saelab')}"
                f" {self.cfg.hook_name or 'SAE'}) was loaded encoder-only: its decoder was not"
                " loaded, so it gives activations but cannot decode or patch"
            )
        return f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xn, mu, std = self.normalize_input(x)
        out = self.decode(self.activate(self._pre(xn)))
        if mu is not None and std is not None:
            out = out * std + mu
        if self.W_skip is not None:
            out = out + x.to(self.W_skip.dtype) @ self.W_skip
        return out

    def fold_input_scale(self, scale: float) -> None:
        """Make an SAE trained on `scale * x` work on raw x (SAELens's fold, same maths):
        the pre-activations are unchanged, so thresholds stay as they are."""
        with torch.no_grad():
            self.W_enc.mul_(scale)
            if self.W_dec is not None:
                self.W_dec.div_(scale)
            self.b_dec.div_(scale)

    # -- files ---------------------------------------------------------------------------
    def state_for_file(self) -> dict[str, torch.Tensor]:
        return {name: p.detach().contiguous() for name, p in self.named_parameters()}

    @classmethod
    def from_state(
        cls, cfg: SAEConfig, state: Mapping[str, torch.Tensor], source: str = "state dict"
    ) -> SAE:
        """Build an SAE that takes `state`'s tensors as they are (dtype included).

        Built on the meta device and filled with `assign=True`, as SAELens and circuit-tracer
        do: a zero-filled SAE first would hold a 1M-feature SAE in memory twice. A scalar
        threshold is expanded to [d_sae]; anything missing, extra or mis-shaped is a one-line
        error naming `source`."""
        with torch.device("meta"):
            sae = cls(cfg)
        want = {name: tuple(p.shape) for name, p in sae.named_parameters()}
        missing = sorted(set(want) - set(state))
        if missing:
            raise SaelabError(f"{source} has no tensor {missing[0]!r} (has {sorted(state)})")
        extra = sorted(set(state) - set(want))
        if extra:
            raise SaelabError(f"{source}: unexpected tensors {extra} for a {cfg.architecture} SAE")
        full: dict[str, torch.Tensor] = {}
        for name, shape in want.items():
            t = state[name]
            if name == "threshold" and t.numel() == 1 and shape != (1,):
                t = t.reshape(()).expand(shape).clone()
            if tuple(t.shape) != shape:
                raise SaelabError(
                    f"{source}: {name} has shape {list(t.shape)}, expected {list(shape)}"
                    f" (d_in={cfg.d_in}, d_sae={cfg.d_sae}, d_out={cfg.out_width})"
                )
            full[name] = t
        check_finite(full, source)
        sae.load_state_dict(full, assign=True)
        return sae

    def save(self, folder: Path | str, log_density: torch.Tensor | None = None) -> Path:
        """Write cfg.json + sae_weights.safetensors (+ sparsity.safetensors) atomically."""
        from safetensors.torch import save

        folder = Path(folder)
        cfg = self.cfg.to_dict()
        if self.cfg.architecture == "batchtopk":  # saved for inference as what it is
            cfg["architecture"] = "jumprelu"
            cfg.pop("k", None)
            cfg["metadata"] = {**cfg["metadata"], "trained_as": "batchtopk", "k": self.cfg.k}
        elif self.cfg.architecture == "relu":
            cfg["architecture"] = "standard"  # SAELens's name for the ReLU-L1 SAE
        state = {k: v.cpu() for k, v in self.state_for_file().items()}
        # the checksum lets a flipped byte be caught on load; SAELens ignores the key
        weights = save(state, metadata={"format": "pt", CRC_KEY: tensors_crc32c(state)})
        blobs = {WEIGHTS_FILE: weights}
        if log_density is not None:
            sparsity = {"sparsity": log_density.detach().float().cpu().contiguous()}
            blobs[SPARSITY_FILE] = save(sparsity)
        # bytes written by Python, so a full disk is an OSError that disk_space_for names
        needed = sum(len(b) for b in blobs.values())
        with disk_space_for(f"SAE {folder.name}", folder, needed), atomic_dir(folder) as tmp:
            (tmp / CFG_FILE).write_text(json.dumps(cfg, indent=2, sort_keys=True) + "\n")
            for name, blob in blobs.items():
                (tmp / name).write_bytes(blob)
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
        origin = _origin(folder)
        try:
            raw = json.loads(cfg_path.read_text())
        except (OSError, ValueError) as e:  # ValueError: bad JSON or UTF-8
            raise origin.error(cfg_path, one_line(e)) from e
        if not isinstance(raw, dict):
            raise origin.error(cfg_path, f"a JSON {type(raw).__name__}, not an SAE config")
        cfg = SAEConfig.from_dict(raw, str(cfg_path))
        if dtype:
            cfg.dtype = dtype
        with torch.device("meta"):  # shapes only: a damaged cfg.json must not allocate
            want = {name: tuple(t.shape) for name, t in cls(cfg).state_for_file().items()}
        try:
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
                state = {name: f.get_tensor(name) for name in want}
                metadata = f.metadata()
                if metadata and CRC_KEY in metadata:
                    every = {k: state[k] if k in state else f.get_tensor(k) for k in keys}
                    wrong = check_crc(every, metadata)
                    if wrong:
                        raise origin.error(w_path, wrong)
        except SaelabError:
            raise
        except Exception as e:  # SafetensorError, OSError: safetensors has no common base
            raise origin.error(w_path, one_line(e)) from e
        dt = _DTYPES.get(cfg.dtype, torch.float32)
        for name, t in state.items():
            if not (t.is_floating_point() or t.dtype == torch.bool):
                raise SaelabError(f"{w_path}: {name} holds {t.dtype}, not floating-point values")
            if name == "threshold" and t.numel() == 1:
                t = t.reshape(()).expand(cfg.d_sae)
            state[name] = t.to(dt).contiguous()
        sae = cls.from_state(cfg, state, str(w_path))
        return sae.to(device)


def check_finite(state: Mapping[str, torch.Tensor], source: str) -> None:
    """Refuse NaN or infinite weights: such an SAE encodes every token to NaN or to nothing
    (NaN never passes a gate), which reads as "no feature fired" rather than as damage.
    Scanned in blocks so a billion-weight SAE needs no second copy as booleans."""
    step = 1 << 24
    for name, t in state.items():
        if not t.is_floating_point():
            continue
        flat = t.detach().reshape(-1)
        # a float64 sum is finite exactly when every value is (no sum of float32 weights
        # overflows it), and costs a fraction of isfinite, which is slow on some CPU builds
        blocks = range(0, flat.numel(), step)
        if all(math.isfinite(_sum64(flat[i : i + step])) for i in blocks):
            continue
        bad = sum(int((~torch.isfinite(flat[i : i + step])).sum()) for i in blocks)
        if bad:
            raise SaelabError(
                f"{source}: {name} holds {bad:,} NaN or infinite values of {flat.numel():,}; the"
                " SAE file is damaged or came from a diverged training run: use another SAE"
            )


def _sum64(t: torch.Tensor) -> float:
    """A float64 sum through numpy where it can (torch's threaded reductions of small
    tensors cost milliseconds on a busy machine); bfloat16 goes through torch."""
    if t.device.type == "cpu" and t.dtype in (torch.float16, torch.float32, torch.float64):
        with np.errstate(invalid="ignore", over="ignore"):  # inf - inf is NaN: reported
            return float(t.numpy().sum(dtype=np.float64))
    return float(t.double().sum())


def _origin(folder: Path) -> Origin:
    """A run's trained SAE (RUN/saes/HOOK) comes from `saelab train`; any other folder was
    downloaded or copied, and is fetched again rather than rebuilt."""
    origin = origin_of(folder, SAES_DIR, "train", depth=2)
    return Origin("train", origin.run, "delete it and fetch (or train) it again")


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
