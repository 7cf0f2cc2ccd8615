"""Where SAEs come from: a local folder or file, a folder of per-hook SAEs, or the hub.

    saelab.sae.load("runs/x/saes/blocks.7.hook_resid_post")
    saelab.sae.load("hf://google/gemma-scope-2b-pt-res/layer_5/width_16k/average_l0_68")
    expand_saes("hf://fnlp/Llama3_1-8B-Base-LXR-8x/Llama3_1-8B-Base-L{L}R-8x", hooks)

A hub path is not listed (listing needs an API the mirrors and the loopback hub need not
have): for each known format, in order, its required files are probed with one HEAD each and
the first format whose files all exist is fetched, only those files plus the optional ones
present (never the rest of the repository: a CLT layer's encoder, not its 10 GB decoder).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saelab.errors import SaelabError
from saelab.models.hooks import HookPoint


@dataclass
class SAESource:
    """One SAE to apply: where it is and the hook it is meant for (None: its own metadata)."""

    location: str
    hook: str | None = None
    layer: int | None = None


@dataclass
class LoadedSAE:
    sae: Any
    files: list[Path] = field(default_factory=list)  # fetched files, to release when done
    format: str = ""


def is_remote(location: str) -> bool:
    return location.startswith("hf://")


def expand_saes(spec: str, hooks: list[HookPoint] | None) -> list[SAESource]:
    """Sources for `--saes`: a pattern with {L} (one per --hooks layer), a folder of per-hook
    SAE folders (a trained run's `saes/`), or one SAE (local or hf://)."""
    spec = spec.strip()
    if not spec:
        raise SaelabError("--saes is empty; give a folder, a file or hf://ORG/NAME/PATH")
    if "{L}" in spec or "{layer}" in spec:
        if not hooks:
            raise SaelabError(
                f"--saes {spec} has a {{L}} pattern: say which layers with --hooks"
                " (e.g. resid_post.0-31)"
            )
        return [
            SAESource(
                spec.replace("{L}", str(h.layer)).replace("{layer}", str(h.layer)), h.name, h.layer
            )  # fmt: skip
            for h in hooks
        ]
    if is_remote(spec):
        return _single(spec, hooks)
    p = Path(spec)
    if not p.exists():
        raise SaelabError(f"--saes {spec} does not exist; give a folder, a file or hf://...")
    if p.is_dir() and not _looks_like_sae(p):
        subs = sorted(d for d in p.iterdir() if d.is_dir() and _looks_like_sae(d))
        if not subs:
            raise SaelabError(
                f"--saes {spec} holds no SAE (found {_listing(p)}); point it at an SAE folder"
                " or a folder of per-hook SAE folders"
            )
        found = {d.name: d for d in subs}
        if hooks:
            missing = [h.name for h in hooks if h.name not in found]
            if missing:
                raise SaelabError(
                    f"--saes {spec} has no SAE for {missing[0]} (it has"
                    f" {', '.join(sorted(found))}); train it or drop it from --hooks"
                )
            return [SAESource(str(found[h.name]), h.name, h.layer) for h in hooks]
        return [SAESource(str(d), d.name) for d in subs]
    return _single(spec, hooks)


def _single(spec: str, hooks: list[HookPoint] | None) -> list[SAESource]:
    if hooks and len(hooks) > 1:
        raise SaelabError(
            f"--saes {spec} is one SAE but --hooks names {len(hooks)}; use a {{L}} pattern or a"
            " folder of per-hook SAEs"
        )
    h = hooks[0] if hooks else None
    return [SAESource(spec, h.name if h else None, h.layer if h else None)]


def _looks_like_sae(folder: Path) -> bool:
    from saelab.sae.formats import detect

    try:
        detect(folder)
        return True
    except SaelabError:
        return False


def _listing(folder: Path, limit: int = 6) -> str:
    names = sorted(p.name for p in folder.iterdir())
    if not names:
        return "nothing"
    return ", ".join(names[:limit]) + (", ..." if len(names) > limit else "")


def load_sae(
    location: str, fetcher: Any | None = None, *, dtype: str | None = None, device: str = "cpu"
) -> LoadedSAE:
    """Load one SAE; from the hub only the files its format needs are fetched."""
    from saelab.sae.formats import detect, load_local

    if not is_remote(location):
        p = Path(location)
        if not p.exists():
            raise SaelabError(f"SAE {location} does not exist; check the path")
        fmt = detect(p).name
        return LoadedSAE(load_local(p, dtype=dtype, device=device), [], fmt)
    from saelab.hub import Fetcher, parse_hf_uri

    hp = parse_hf_uri(location)
    fetcher = fetcher or Fetcher()
    found = probe_remote(hp, fetcher)
    files: list[Path] = []
    try:
        for r in found.required:
            files.append(fetcher.fetch(hp.repo_id, r, hp.revision))
        for o in found.optional:
            files.append(fetcher.fetch(hp.repo_id, o, hp.revision))
        spec = found.spec
        target = files[0] if spec.is_file else _up(files[0], found.required[0], found.folder)
        return LoadedSAE(load_local(target, dtype=dtype, device=device), files, spec.name)
    except BaseException:
        for f in files:
            fetcher.release(f)
        raise


@dataclass(frozen=True)
class RemoteSAE:
    """Which files of a hub SAE its format needs, found with HEAD requests only."""

    spec: Any  # the FormatSpec
    folder: str  # the SAE's folder inside the repository
    required: list[str]
    optional: list[str]  # those present
    sizes: dict[str, int]  # bytes per file, from the HEAD answers

    @property
    def size(self) -> int:
        return sum(self.sizes.values())


def probe_remote(hp: Any, fetcher: Any) -> RemoteSAE:
    """For each known format in order, one HEAD per required file; the first format whose
    files all exist wins, with the optional files present. Nothing is downloaded."""
    from saelab.sae.formats import candidates, folder_of

    tried: list[str] = []
    for spec in candidates(hp.path):
        folder = folder_of(hp.path, spec)
        required = [hp.path if f == "" else _join(folder, f) for f in spec.required]
        tried.append(f"{spec.name} ({', '.join(posixpath.basename(r) or r for r in required)})")
        sizes: dict[str, int] = {}
        for r in required:
            size = fetcher.size(hp.repo_id, r, hp.revision)
            if size is None:
                break
            sizes[r] = size
        if len(sizes) < len(required):
            continue
        optional = [_join(folder, f) for f in spec.optional]
        optional = [o for o in dict.fromkeys(optional) if not o.startswith("..")]  # in the repo
        present = []
        for o in optional:
            size = fetcher.size(hp.repo_id, o, hp.revision)
            if size is not None:
                present.append(o)
                sizes[o] = size
        return RemoteSAE(spec, folder, required, present, sizes)
    raise SaelabError(
        f"{hp.uri}: no SAE found there; looked for {'; '.join(tried)}. Check the path"
        " (a folder or file inside the repository)"
    )


def sae_downloads(sources: list[SAESource], fetcher: Any | None = None) -> list[list[Any]]:
    """The hub files each source's SAE would fetch (`HubPath`s, one group per SAE, held
    together while its hook is encoded); local SAEs need none. For a disk check before
    any work: `saelab.hub.disk.disk_report(sae_downloads(sources), run_dir)`."""
    from saelab.hub import Fetcher, HubPath, parse_hf_uri

    fetcher = fetcher or Fetcher(quiet=True)
    groups = []
    for src in sources:
        if not is_remote(src.location):
            continue
        hp = parse_hf_uri(src.location)
        found = probe_remote(hp, fetcher)
        groups.append(
            [HubPath(hp.repo_id, f, hp.revision) for f in [*found.required, *found.optional]]
        )
    return groups


def sae_disk_report(
    sources: list[SAESource],
    target_dir: str | Path,
    *,
    max_disk: int | None = None,
    evict: bool | None = None,
    writes: int = 0,
    fetcher: Any | None = None,
) -> Any:
    """Before any work (no model loaded, nothing downloaded): the `DiskReport` of every SAE
    file the sources need, from the cache and HEAD requests; raises BudgetError when a
    `max_disk` or the free disk cannot hold it. `evict=None` is the Fetcher's automatic
    mode, which deletes released files when room is needed, so its peak is one SAE's files."""
    from saelab.hub.disk import disk_report

    fetcher = fetcher or _quiet_fetcher()
    report = disk_report(
        sae_downloads(sources, fetcher),
        target_dir,
        writes=writes,
        evict=evict is not False,
        fetcher=fetcher,
    )
    report.check(max_disk)
    return report


def _quiet_fetcher() -> Any:
    from saelab.hub import Fetcher

    return Fetcher(quiet=True)


def _join(base: str, rel: str) -> str:
    return posixpath.normpath(posixpath.join(base, rel)) if base else posixpath.normpath(rel)


def _up(fetched: Path, remote_file: str, remote_folder: str) -> Path:
    """The local copy of `remote_folder`, from the local copy of a file inside it."""
    rel = posixpath.relpath(remote_file, remote_folder or ".")
    target = fetched
    for _ in rel.split("/"):
        target = target.parent
    return target


def load(
    source: str | Path,
    *,
    dtype: str | None = None,
    device: str = "cpu",
    fetcher: Any | None = None,
) -> Any:
    """An SAE from a local folder/file (any supported format) or hf://REPO/PATH[@REV]."""
    return load_sae(str(source), fetcher, dtype=dtype, device=device).sae
