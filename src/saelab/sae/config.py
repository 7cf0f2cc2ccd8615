"""The SAE's configuration: SAELens's `cfg.json` keys, checked when built (shapes, the
architecture and its settings), plus `metadata` (model, hook, data, quality figures)."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from saelab.errors import SaelabError

ARCHITECTURES = ("topk", "batchtopk", "jumprelu", "relu")
NORMALIZATIONS = ("none", "layer_norm", "expected_average_only_in", "constant_norm_rescale")
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
                f"`k` {self.k} must be between 1 and d_sae ({self.d_sae}) for a"
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
