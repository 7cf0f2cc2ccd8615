"""Stream one file body over HTTP: resume after a cut, retry with backoff, verify the bytes.

huggingface_hub's own `http_get` retries too, but it sleeps a fixed second, resets its retry
count whenever a byte arrives and cannot be told how often to try; saelab needs a bounded,
tested retry policy and must be able to promise that a file it returns is whole. So the body
is fetched here, through huggingface_hub's shared HTTP session (same proxies, headers, token
and offline guard), into a temporary file the caller owns and renames into the cache.

The hub's ETag is the sha256 of an LFS file's content, or the git blob sha1 of a small file;
whichever it is, the bytes are checked against it before they can be trusted.
"""

from __future__ import annotations

import hashlib
import re
import time
from collections.abc import Callable
from typing import BinaryIO

from huggingface_hub import constants
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.utils import get_session, hf_raise_for_status

try:  # huggingface_hub >= 2 ships its own httpx fork
    import httpx2 as _httpx
except ImportError:  # pragma: no cover - huggingface_hub 1.x
    import httpx as _httpx  # type: ignore[no-redef]

_CHUNK = 1 << 20


class Retryable(Exception):
    """A failure worth another attempt: the connection dropped, the body was short, a 5xx."""


class Verifier:
    """Hashes the body as it streams so a whole-file check costs no second read."""

    def __init__(self, etag: str | None, size: int | None):
        self.etag = (etag or "").lower()
        self.size = size
        self.reset()

    def reset(self) -> None:
        if re.fullmatch(r"[0-9a-f]{64}", self.etag):
            self.kind: str | None = "sha256"
            self._h = hashlib.sha256()
        elif re.fullmatch(r"[0-9a-f]{40}", self.etag) and self.size is not None:
            self.kind = "git-sha1"  # git hashes "blob <size>\0" + content
            self._h = hashlib.sha1(f"blob {self.size}\0".encode())
        else:
            self.kind = None  # an ETag we cannot interpret: the size check must do

    def update(self, chunk: bytes) -> None:
        if self.kind is not None:
            self._h.update(chunk)

    def ok(self) -> bool:
        return self.kind is None or self._h.hexdigest() == self.etag


def stream(
    url: str,
    out: BinaryIO,
    *,
    headers: dict[str, str],
    size: int | None,
    etag: str | None,
    retries: int,
    backoff_s: float,
    on_bytes: Callable[[int, int], None],
    on_request: Callable[[], None],
) -> int:
    """Write the body at `url` into `out` (empty, opened 'w+b'); return the attempts used.

    `on_bytes(n, position)` sees every chunk received (for speed and byte counts) and where
    the file now ends (for progress); `on_request()` sees every GET sent.

    Each retry resumes with a Range request from the bytes already in `out`; a server that
    ignores the Range gets the file rewritten from the start. A hash mismatch or an overlong
    body starts over. After `retries` failed retries the last failure is raised as
    `Retryable`; a client error (404, 401, ...) is raised at once.
    """
    verifier = Verifier(etag, size)
    attempt = 0
    while True:
        attempt += 1
        try:
            try:
                written = _one_get(url, out, headers, size, verifier, on_bytes, on_request)
            except _httpx.TransportError as e:
                raise Retryable(f"{type(e).__name__}: {e or 'connection lost'}") from e
            except HfHubHTTPError as e:
                status = e.response.status_code if e.response is not None else 0
                if status < 500 and status not in (408, 429):
                    raise
                raise Retryable(f"HTTP {status}") from e
            if size is not None and written != size:
                raise Retryable(f"the server sent {written} of {size} bytes")
            if not verifier.ok():
                _restart(out, verifier)
                raise Retryable(f"the bytes do not match the hub's {verifier.kind} ({etag})")
            return attempt
        except Retryable:
            if attempt > retries:
                raise
        time.sleep(backoff_s * 2 ** (attempt - 1))


def _restart(out: BinaryIO, verifier: Verifier) -> None:
    out.seek(0)
    out.truncate()
    verifier.reset()


def _one_get(
    url: str,
    out: BinaryIO,
    headers: dict[str, str],
    size: int | None,
    verifier: Verifier,
    on_bytes: Callable[[int, int], None],
    on_request: Callable[[], None],
) -> int:
    """One GET, resuming after the bytes already in `out`; returns the bytes in `out` at the end."""
    written = out.tell()
    h = dict(headers)
    h["Accept-Encoding"] = "identity"  # sizes and hashes are of the stored bytes
    if written:
        h["Range"] = f"bytes={written}-"
    on_request()
    timeout = _httpx.Timeout(
        constants.HF_HUB_DOWNLOAD_TIMEOUT, connect=constants.HF_HUB_ETAG_TIMEOUT
    )
    with get_session().stream("GET", url, headers=h, timeout=timeout) as resp:
        hf_raise_for_status(resp)
        if written and (resp.status_code != 206 or not _starts_at(resp, written)):
            _restart(out, verifier)  # the Range was ignored: the body starts from byte 0
            written = 0
        for chunk in resp.iter_bytes(chunk_size=_CHUNK):
            if not chunk:
                continue
            if size is not None and written + len(chunk) > size:
                _restart(out, verifier)
                raise Retryable(f"the server sent more than the {size} bytes it announced")
            out.write(chunk)
            verifier.update(chunk)
            written += len(chunk)
            on_bytes(len(chunk), written)
    return written


def _starts_at(resp: _httpx.Response, offset: int) -> bool:
    return resp.headers.get("Content-Range", "").startswith(f"bytes {offset}-")
