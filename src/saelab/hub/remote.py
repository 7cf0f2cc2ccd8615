"""One metadata (HEAD) request per file, and hub errors turned into one-line saelab errors.

The HEAD answer carries everything a download decision needs: the commit the revision points
to, the content hash (ETag), the size and where the body lives. Nothing is downloaded here.
"""

from __future__ import annotations

from dataclasses import dataclass

from huggingface_hub import hf_hub_url
from huggingface_hub.errors import (
    EntryNotFoundError,
    GatedRepoError,
    HfHubHTTPError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.file_download import get_hf_file_metadata

from saelab.errors import SaelabError
from saelab.hub.settings import HubSettings

try:  # huggingface_hub >= 2 ships its own httpx fork
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    import httpx as _httpx  # type: ignore[no-redef]


@dataclass(frozen=True)
class RemoteFile:
    """What the hub says about one file at one revision."""

    commit: str  # 40-hex commit the revision resolved to
    etag: str  # content hash: sha256 for LFS files, git blob sha1 otherwise
    size: int | None  # bytes; None only if the server did not say
    url: str  # where to GET the body (may be a CDN after a redirect)


class Unreachable(Exception):
    """The hub could not be reached; the caller may still have a cached copy to fall back on."""

    def __init__(self, error: SaelabError):
        super().__init__(str(error))
        self.error = error


def uri(repo_id: str, path: str, revision: str | None) -> str:
    """The hf:// spelling used in every message, so users can paste it back."""
    rev = f"@{revision}" if revision else ""
    return f"hf://{repo_id}/{path}{rev}"


def offline_error(repo_id: str, path: str, revision: str | None, s: HubSettings) -> SaelabError:
    return SaelabError(
        f"{uri(repo_id, path, revision)} is not in the local cache ({s.cache_dir}) and "
        "HF_HUB_OFFLINE=1 forbids downloading it: unset HF_HUB_OFFLINE (or run once with network) "
        f"to fetch it, or copy it in with `hf download {repo_id} {path}` on a machine online "
        "and point HF_HOME at that cache"
    )


def head(
    s: HubSettings, repo_id: str, path: str, revision: str | None, *, retry: bool
) -> RemoteFile | None:
    """The file's metadata, or None when the repo exists but has no such file.

    Raises `Unreachable` for network trouble (the caller decides whether the cache can answer)
    and `SaelabError` for everything the user must fix (repo, revision, access).
    """
    url = hf_hub_url(repo_id, path, revision=revision, endpoint=s.endpoint)
    where = uri(repo_id, path, revision)
    try:
        meta = get_hf_file_metadata(url, endpoint=s.endpoint, retry_on_errors=retry)
    except EntryNotFoundError:
        return None
    except OfflineModeIsEnabled as e:
        raise offline_error(repo_id, path, revision, s) from e
    except _httpx.TransportError as e:
        raise Unreachable(
            SaelabError(
                f"cannot reach {s.endpoint} to look up {where} ({type(e).__name__}: {e}): check "
                "the network or HF_ENDPOINT, or set HF_HUB_OFFLINE=1 to use only cached files"
            )
        ) from e
    except HfHubHTTPError as e:
        raise http_error(e, s, repo_id, path, revision) from e
    if not meta.commit_hash or not meta.etag:
        raise SaelabError(
            f"{s.endpoint} answered for {where} without a commit or ETag header: "
            "check that HF_ENDPOINT points at a model hub"
        )
    return RemoteFile(commit=meta.commit_hash, etag=meta.etag, size=meta.size, url=meta.location)


def http_error(
    e: HfHubHTTPError, s: HubSettings, repo_id: str, path: str, revision: str | None
) -> SaelabError:
    """A hub HTTP error as a message that names the input and the fix."""
    where = uri(repo_id, path, revision)
    status = e.response.status_code if e.response is not None else 0
    if isinstance(e, GatedRepoError):
        return SaelabError(
            f"{where}: the repo {repo_id} is gated: accept its terms at {s.endpoint}/{repo_id} "
            "and set HF_TOKEN (or run `hf auth login`)"
        )
    if isinstance(e, RevisionNotFoundError):
        return SaelabError(
            f"{where}: the repo {repo_id} has no revision {revision!r}: "
            "check the branch, tag or commit after '@'"
        )
    if status == 403:
        return SaelabError(
            f"{where}: {s.endpoint} refused access to {repo_id} (HTTP 403): check that HF_TOKEN "
            "has read access to it"
        )
    if isinstance(e, RepositoryNotFoundError) or status in (401, 404):
        # The hub answers 401 for a private repo without a token and 404 for a missing one;
        # a server that sends no recognised error code lands here too.
        return SaelabError(
            f"{where}: model repo {repo_id!r} was not found on {s.endpoint}: check its name, "
            "or set HF_TOKEN if it is private"
        )
    return SaelabError(f"{where}: {s.endpoint} answered HTTP {status}: try again later")
