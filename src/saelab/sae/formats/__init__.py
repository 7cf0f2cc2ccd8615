"""One loader for every pretrained SAE format, from local files.

    from saelab.sae.formats import load_local
    sae = load_local("gemma-scope-2b-pt-res/layer_5/width_16k/average_l0_68")

`detect` says which format a local folder or file is in, `candidates` which formats a path
inside a Hub repository may be in (so a downloader fetches only the files that format needs:
`required` first, `optional` when present), and `load_local` detects and loads. Every loader
returns a `saelab.sae.SAE` that takes raw activations at its hook (dataset-norm scalings and
decoder-norm factors folded in exactly), with `cfg.metadata` holding `format`, the canonical
`hook_name` where it can be known (`blocks.7.hook_resid_post`; TL names such as `attn.hook_z`
for sites saelab does not capture), `hook_name_out` for transcoders, `hf_hook_name` where the
release names an HF module, and `model_name` where known. Formulas and layouts per family are
in each module's docstring (facts from reference/formats.md).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from saelab.errors import SaelabError
from saelab.sae.formats import common as c
from saelab.sae.formats.dictionary_learning import infer_class, load_dictionary_learning
from saelab.sae.formats.gemma import load_gemma_scope, load_gemma_scope_2
from saelab.sae.formats.llama_scope import load_llama_scope
from saelab.sae.formats.openai import KEYS as OPENAI_KEYS
from saelab.sae.formats.openai import load_openai_v5
from saelab.sae.formats.plain import CLT_RE, load_clt_layer, load_torch_dict
from saelab.sae.formats.sparsify import load_sparsify
from saelab.sae.model import SAE

__all__ = ["FORMATS", "FormatSpec", "candidates", "detect", "folder_of", "load_local"]


@dataclass(frozen=True)
class FormatSpec:
    """A pretrained-SAE file layout: what to fetch and what tells it apart."""

    name: str  # e.g. "saelens", "gemma_scope", "llama_scope", "clt_layer"
    required: tuple[str, ...]  # relative to the SAE's folder; "" = the source itself is the file
    optional: tuple[str, ...] = ()  # used when present (sparsity, a parent folder's config)

    @property
    def is_file(self) -> bool:
        """True when the SAE is one file (the path itself), not a folder of files."""
        return self.required == ("",)


SAELENS = FormatSpec("saelens", ("cfg.json", "sae_weights.safetensors"), ("sparsity.safetensors",))
SPARSIFY = FormatSpec("sparsify", ("cfg.json", "sae.safetensors"), ("../config.json",))
GEMMA_SCOPE_2 = FormatSpec("gemma_scope_2", ("params.safetensors", "config.json"))
GEMMA_SCOPE = FormatSpec("gemma_scope", ("params.npz",))
LLAMA_SCOPE = FormatSpec("llama_scope", ("hyperparams.json", "checkpoints/final.safetensors"))
DICTIONARY_LEARNING = FormatSpec("dictionary_learning", ("ae.pt",), ("config.json",))
CLT_LAYER = FormatSpec("clt_layer", ("",), ("config.yaml", "../config.yaml"))
OPENAI_V5 = FormatSpec("openai_v5", ("",))
TORCH_DICT = FormatSpec("torch_dict", ("",), ("config.yaml", "../config.yaml"))

#: In detection priority order: folder layouts first (most specific file pairs first).
FORMATS: tuple[FormatSpec, ...] = (
    SAELENS,
    SPARSIFY,
    GEMMA_SCOPE_2,
    GEMMA_SCOPE,
    LLAMA_SCOPE,
    DICTIONARY_LEARNING,
    CLT_LAYER,
    OPENAI_V5,
    TORCH_DICT,
)
_BY_NAME = {f.name: f for f in FORMATS}


def _load_saelens(path: Path, dtype: str | None) -> SAE:
    sae = SAE.load(path, dtype=dtype)
    sae.cfg.metadata["format"] = "saelens"
    return sae


_LOADERS = {
    "saelens": _load_saelens,
    "sparsify": load_sparsify,
    "gemma_scope_2": load_gemma_scope_2,
    "gemma_scope": load_gemma_scope,
    "llama_scope": load_llama_scope,
    "dictionary_learning": load_dictionary_learning,
    "clt_layer": load_clt_layer,
    "openai_v5": load_openai_v5,
    "torch_dict": load_torch_dict,
}


# -- detection ------------------------------------------------------------------------------------
def _known() -> str:
    return "; ".join(
        f"{f.name} ({' + '.join(f.required) if not f.is_file else 'a single file'})"
        for f in FORMATS
    )


def _listing(folder: Path, limit: int = 12) -> str:
    """What a folder holds, one level of subfolders included, for an error message."""
    names: list[str] = []
    for p in sorted(folder.iterdir()):
        if not p.is_dir():
            names.append(p.name)
            continue
        inner = sorted(q.name for q in p.iterdir())
        names.extend(f"{p.name}/{q}" for q in inner[:3])
        if not inner or len(inner) > 3:
            names.append(f"{p.name}/...")
    more = f", ... ({len(names)} in all)" if len(names) > limit else ""
    return (", ".join(names[:limit]) + more) or "nothing"


def _folder_spec(folder: Path) -> FormatSpec | None:
    for spec in FORMATS:
        if not spec.is_file and all((folder / r).is_file() for r in spec.required):
            return spec
    return None


def _file_spec(file: Path) -> FormatSpec | None:
    """The format of a single file: by its name, else by the tensors it holds."""
    if CLT_RE.match(file.name):
        return CLT_LAYER
    if file.suffix == ".npz":
        return GEMMA_SCOPE
    if file.suffix == ".pt":
        sd = c.read_pt(file)
        if all(k in sd for k in OPENAI_KEYS):
            return OPENAI_V5
        if "W_enc" in sd and "b_enc" in sd:
            return TORCH_DICT
        if infer_class(sd) != "unknown":
            return DICTIONARY_LEARNING
        return None
    if file.suffix == ".safetensors":
        keys = c.safetensors_keys(file)
        if any(re.fullmatch(r"W_enc_\d+", k) for k in keys):
            return CLT_LAYER
        if "W_enc" in keys:
            return TORCH_DICT
    return None


def _local_names(spec: FormatSpec) -> tuple[str, ...]:
    """The spec's files that live inside its folder (not "" and not a parent's file)."""
    return tuple(r for r in spec.required + spec.optional if r and not r.startswith(".."))


def _detect(path: Path) -> tuple[FormatSpec, Path]:
    """(format, the path its loader takes): a folder, or the file for single-file formats.
    A file that is one of a folder format's files stands for its folder."""
    path = Path(path).expanduser()
    if not path.exists():
        raise SaelabError(f"{path} does not exist: pass a local SAE folder or file")
    if path.is_dir():
        spec = _folder_spec(path)
        if spec is None:
            raise SaelabError(
                f"{path} is in no known SAE format (found: {_listing(path)}); known formats:"
                f" {_known()}"
            )
        return spec, path
    posix = path.as_posix()
    for spec in FORMATS:
        for name in _local_names(spec):
            if posix.endswith("/" + name) or posix == name:
                folder = path.parents[name.count("/")]
                if _folder_spec(folder) is spec:
                    return spec, folder
    spec = _file_spec(path)
    if spec is None:
        raise SaelabError(
            f"{path} is in no known SAE format (a {path.suffix or 'suffix-less'} file without"
            f" the tensors of any); known formats: {_known()}"
        )
    return spec, path


def detect(path: Path) -> FormatSpec:
    """The format of a local SAE folder or file; an unknown one is a one-line error listing
    what was found and the formats known."""
    return _detect(path)[0]


# -- Hub paths ------------------------------------------------------------------------------------
_BY_FILE: dict[str, tuple[FormatSpec, ...]] = {
    "sae_weights.safetensors": (SAELENS,),
    "sparsity.safetensors": (SAELENS,),
    "cfg.json": (SAELENS, SPARSIFY),
    "sae.safetensors": (SPARSIFY,),
    "params.safetensors": (GEMMA_SCOPE_2,),
    "config.json": (GEMMA_SCOPE_2, DICTIONARY_LEARNING),
    "params.npz": (GEMMA_SCOPE,),
    "hyperparams.json": (LLAMA_SCOPE,),
    "final.safetensors": (LLAMA_SCOPE,),
    "ae.pt": (DICTIONARY_LEARNING,),
}
_FOLDER_HINTS: tuple[tuple[str, FormatSpec], ...] = (
    (r"layer_\d+_width_\w+?_l0_", GEMMA_SCOPE_2),
    (r"(?:^|/)layer_\d+/width_\w+/|average_l0_\d+|/canonical$", GEMMA_SCOPE),
    (r"L\d+(?:R|A|M|TC)-\d+x", LLAMA_SCOPE),
    (r"(?:^|/)trainer_\d+$|_layer_?\d+/", DICTIONARY_LEARNING),
    (r"(?:^|/)(?:[\w.]*\.)?(?:layers|h)\.\d+(?:\.\w+)?$", SPARSIFY),
    (r"blocks\.\d+\.hook_", SAELENS),
)
_OPENAI_RE = re.compile(r"resid_(?:post|delta)_(?:mlp|attn)|mlp_post_act")


def candidates(remote_path: str) -> list[FormatSpec]:
    """The formats a path inside a Hub repo (a file or a folder, not listed) may be in, most
    likely first: probe each one's required files (relative to `folder_of(remote_path, spec)`;
    "" is the path itself) and load the first that is all there. A file ending .pt, .npz or
    .safetensors narrows the list; `W_enc_{L}.safetensors` is a CLT layer."""
    path = remote_path.strip().strip("/")
    name = path.rsplit("/", 1)[-1]
    if CLT_RE.match(name):
        return [CLT_LAYER]
    if name in _BY_FILE:
        return list(_BY_FILE[name])
    if name.endswith(".pt"):
        order = [OPENAI_V5, TORCH_DICT, DICTIONARY_LEARNING]
        return order if _OPENAI_RE.search(path) else [TORCH_DICT, DICTIONARY_LEARNING, OPENAI_V5]
    if name.endswith(".npz"):
        return [GEMMA_SCOPE]
    if name.endswith(".safetensors"):
        return [TORCH_DICT]
    folders = [f for f in FORMATS if not f.is_file]
    hinted = [spec for pattern, spec in _FOLDER_HINTS if re.search(pattern, path)]
    first = list(dict.fromkeys(hinted))
    return first + [f for f in folders if f not in first]


def folder_of(remote_path: str, spec: FormatSpec) -> str:
    """The SAE folder that `spec`'s files are relative to, for a path `candidates` took: a
    folder is itself, one of the format's files stands for the folder holding it
    (`X/checkpoints/final.safetensors` -> `X`), any other file for its own folder."""
    path = remote_path.strip().strip("/")
    for name in _local_names(spec):
        if path == name or path.endswith("/" + name):
            return path[: len(path) - len(name)].rstrip("/")
    last = path.rsplit("/", 1)[-1]
    if spec.is_file or re.search(r"\.(pt|npz|safetensors|json|yaml)$", last):
        return path.rsplit("/", 1)[0] if "/" in path else ""
    return path


# -- loading --------------------------------------------------------------------------------------
def load_local(path: Path | str, *, dtype: str | None = None, device: str = "cpu") -> SAE:
    """Detect the format of a local SAE folder or file and load it.

    dtype None keeps the stored dtype (float16/bfloat16 stay as they are); a name casts. Any
    damaged file, missing tensor or shape that disagrees with its config is a one-line
    SaelabError naming the file."""
    p = Path(path).expanduser()
    if dtype is not None:
        c.pick_dtype(torch.float32, dtype, p)  # an unknown dtype name fails before any reading
    spec, root = _detect(p)
    sae = _LOADERS[spec.name](root, dtype)
    sae.cfg.device = str(device)
    return sae.to(device)
