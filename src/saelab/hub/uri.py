"""`hf://` URIs: where a file lives on the model hub.

Configs and the CLI name pretrained SAEs as `hf://ORG/NAME/PATH[@REVISION]`; this module turns
that string into a `HubPath` once, so the rest of the code never re-parses it and a typo is
caught before any network call.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from saelab.errors import SaelabError

_SCHEME = "hf://"
_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_FORM = (
    "write it as hf://ORG/NAME/PATH[@REVISION], "
    "e.g. hf://google/gemma-scope-2b-pt-res/layer_12/width_16k/average_l0_82/params.npz"
)


@dataclass(frozen=True)
class HubPath:
    """One file or folder of a model repo on the hub, at an optional revision."""

    repo_id: str  # "org/name"
    path: str  # file or folder inside the repo, "" for the root
    revision: str | None  # branch, tag or commit from "@REV"; None means the default branch

    @property
    def uri(self) -> str:
        """The canonical `hf://` spelling, for messages and manifests."""
        tail = f"/{self.path}" if self.path else ""
        rev = f"@{self.revision}" if self.revision else ""
        return f"{_SCHEME}{self.repo_id}{tail}{rev}"

    def __str__(self) -> str:
        return self.uri


def _bad(uri: str, why: str) -> SaelabError:
    return SaelabError(f"{uri!r} is not a hub URI ({why}): {_FORM}")


def parse_hf_uri(uri: str) -> HubPath:
    """Parse `hf://ORG/NAME[/PATH][@REVISION]`.

    Also accepted, because other tools write them: `hf://ORG/NAME@REVISION/PATH` (the
    huggingface_hub file-system form) and a trailing `?revision=REV` (circuit-tracer configs).
    A revision may contain slashes (`@refs/pr/3`), so it is taken after the last `@`.
    """
    if not isinstance(uri, str) or not uri.startswith(_SCHEME):
        raise _bad(str(uri), "it must start with hf://")
    rest = uri[len(_SCHEME) :]
    revision: str | None = None
    if "?" in rest:
        rest, query = rest.split("?", 1)
        m = re.fullmatch(r"revision=([^&]+)", query)
        if not m:
            raise _bad(uri, f"unknown query {query!r}; only ?revision=REV is understood")
        revision = m.group(1)
    parts = rest.split("/", 2)
    if len(parts) < 2:
        raise _bad(uri, "it needs both an organisation and a repo name")
    org, name = parts[0], parts[1]
    tail = parts[2] if len(parts) == 3 else ""
    if "@" in name:  # hf://org/name@rev/path
        name, name_rev = name.split("@", 1)
        revision = _merge_revision(uri, revision, name_rev)
    elif "@" in tail:  # hf://org/name/path@rev
        tail, tail_rev = tail.rsplit("@", 1)
        revision = _merge_revision(uri, revision, tail_rev)
    for label, part in (("organisation", org), ("repo name", name)):
        if not _PART.fullmatch(part):
            raise _bad(
                uri, f"the {label} {part!r} is empty or has characters a repo id cannot have"
            )
    path = tail.strip("/")
    if any(seg in ("", ".", "..") for seg in path.split("/")) and path:
        raise _bad(uri, f"the path {path!r} has an empty, '.' or '..' segment")
    if revision is not None and not revision.strip():
        raise _bad(uri, "the revision after '@' is empty")
    return HubPath(repo_id=f"{org}/{name}", path=path, revision=revision)


def _merge_revision(uri: str, first: str | None, second: str) -> str:
    """Two revisions in one URI must agree; anything else is ambiguous."""
    if not second:
        raise _bad(uri, "the revision after '@' is empty")
    if first is not None and first != second:
        raise _bad(uri, f"it names two revisions, {first!r} and {second!r}")
    return second
