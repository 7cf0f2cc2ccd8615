"""Which format a local SAE (or a path inside a Hub repository) is in, and loading it: the
generic part, over the registered formats (`registry`)."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import saelab.sae.formats.common as c
from saelab.errors import SaelabError
from saelab.sae.formats.registry import FormatSpec, Probe, formats
from saelab.sae.model import SAE


# -- detection ------------------------------------------------------------------------------------
def _known() -> str:
    return "; ".join(
        f"{f.name} ({' + '.join(f.required) if not f.is_file else 'a single file'})"
        for f in formats()
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
    for spec in formats():
        if not spec.is_file and all((folder / r).is_file() for r in spec.required):
            return spec
    return None


def _file_spec(file: Path) -> FormatSpec | None:
    """The format of a single file: by its name, else by the tensors it holds."""
    probe = Probe(file)
    for spec in sorted((f for f in formats() if f.sniff), key=lambda f: f.sniff_rank):
        if spec.sniff and spec.sniff(file, probe):
            return spec
    return None


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
    for spec in formats():
        for name in spec.local_names:
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
def candidates(remote_path: str) -> list[FormatSpec]:
    """The formats a path inside a Hub repo (a file or a folder, not listed) may be in, most
    likely first: probe each one's required files (relative to `folder_of(remote_path, spec)`;
    "" is the path itself) and load the first that is all there. A file ending .pt, .npz or
    .safetensors narrows the list; `W_enc_{L}.safetensors` is a CLT layer."""
    path = remote_path.strip().strip("/")
    name = path.rsplit("/", 1)[-1]
    all_ = formats()
    named = [f for f in all_ if f.name_re is not None and f.name_re.match(name)]
    if named:
        return named
    owners = [f for f in all_ if name in f.hub_files]
    if owners:
        return owners
    suffix = "." + name.rsplit(".", 1)[-1] if "." in name else ""
    by_suffix = sorted((f for f in all_ if suffix in f.suffixes), key=lambda f: f.suffix_rank)
    if by_suffix:
        hinted = [f for f in by_suffix if f.path_hint is not None and f.path_hint.search(path)]
        return hinted + [f for f in by_suffix if f not in hinted]
    hinted = sorted(
        (f for f in all_ if f.folder_hint is not None and f.folder_hint.search(path)),
        key=lambda f: f.hint_rank,
    )
    return hinted + [f for f in all_ if not f.is_file and f not in hinted]


def folder_of(remote_path: str, spec: FormatSpec) -> str:
    """The SAE folder that `spec`'s files are relative to, for a path `candidates` took: a
    folder is itself, one of the format's files stands for the folder holding it
    (`X/checkpoints/final.safetensors` -> `X`), any other file for its own folder."""
    path = remote_path.strip().strip("/")
    for name in spec.local_names:
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
    assert spec.load is not None
    sae = spec.load(root, dtype)
    sae.cfg.device = str(device)
    return sae.to(device)
