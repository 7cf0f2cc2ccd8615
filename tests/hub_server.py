"""A loopback stand-in for the model hub, serving files from a local folder tree.

Tests that download must not depend on the network, and must be able to see exactly what was
downloaded and to break a download on purpose. This server answers the requests
huggingface_hub makes for single files, from `root/<org>/<name>/<path>`:

- `HEAD|GET /{org}/{name}/resolve/{revision}/{path}` with `ETag` (quoted sha256 of the
  bytes, as the hub sends for LFS files), `X-Repo-Commit` (a fixed 40-hex commit per repo),
  `Content-Length` and `Accept-Ranges: bytes`; `Range: bytes=a-b` is answered 206;
- 404 with `X-Error-Code: EntryNotFound` for a missing file, `RepoNotFound` (the code the real
  hub sends, which huggingface_hub maps to RepositoryNotFoundError) for a missing repo, and
  `RevisionNotFound` for a revision other than `main` or the repo's commit;
- 404 for everything else (`/api/...` included: huggingface_hub carries on without it).

Every request is logged, and `cut(path, times)` makes the next GETs of a file send the full
headers but only half the body before the socket is closed: a connection dropped mid-file.

Use the `hub` fixture (it also points HF_ENDPOINT and HF_HOME at the server and a fresh cache).
Bind it by assignment: `from tests.hub_server import hub` makes ruff report F811 at every test
parameter named `hub` (a root conftest with `pytest_plugins = ["tests.hub_server"]` also works):

    from tests import hub_server
    hub = hub_server.hub

    def test_x(hub):
        hub.add_file("org/name", "W_enc_0.safetensors", b"...")
        path = hf_hub_download("org/name", "W_enc_0.safetensors")
"""

from __future__ import annotations

import hashlib
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

_CHUNK = 1 << 20
_RESOLVE = re.compile(r"/(?P<org>[^/]+)/(?P<name>[^/]+)/resolve/(?P<rev>[^/]+)/(?P<path>.+)")


@dataclass(frozen=True)
class Request:
    """One request as the server saw it."""

    method: str
    path: str  # URL path, still quoted
    range: str | None  # the Range header, if any


class HubServer:
    """A threaded HTTP server on 127.0.0.1 (random port) that answers like the hub."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.log: list[Request] = []
        self.home: Path | None = None  # HF_HOME, set by the fixture
        self._cuts: dict[str, int] = {}
        self._etags: dict[tuple[str, int, int], str] = {}
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.hub = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None
        self._monkeypatch: pytest.MonkeyPatch | None = None

    # -- lifecycle ----------------------------------------------------------------------

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> HubServer:
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def __enter__(self) -> HubServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what tests use -----------------------------------------------------------------

    @property
    def requests(self) -> list[tuple[str, str]]:
        """Every request so far as (method, URL path)."""
        with self._lock:
            return [(r.method, r.path) for r in self.log]

    @property
    def cache(self) -> Path:
        """The hub cache the fixture pointed huggingface_hub at (HF_HOME/hub)."""
        assert self.home is not None, "use the hub fixture, or set .home yourself"
        return self.home / "hub"

    def add_file(self, repo_id: str, path: str, data: bytes) -> Path:
        """Put a file into a repo (creating the repo); returns its path on the server side."""
        p = self.root / repo_id / path
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
        return p

    def commit(self, repo_id: str) -> str:
        """The repo's fixed commit hash (what X-Repo-Commit says)."""
        return hashlib.sha1(repo_id.encode()).hexdigest()

    def etag(self, repo_id: str, path: str) -> str:
        """sha256 of the file's bytes, as the ETag header carries it (unquoted)."""
        return self._etag(self.root / repo_id / path)

    def cut(self, path: str, times: int = 1) -> None:
        """Drop the connection halfway through the body of the next `times` GETs of `path`.

        `path` is "org/name/file/inside/repo". A cut sends the headers with the full
        Content-Length, half the body, then closes the socket.
        """
        with self._lock:
            self._cuts[path.strip("/")] = times

    def body_gets(self, repo_id: str, path: str) -> int:
        """How many GETs asked for this file's body (any revision, ranges included)."""
        n = 0
        for r in list(self.log):
            m = _RESOLVE.fullmatch(r.path)
            if r.method == "GET" and m and _repo_file(m) == (repo_id, path):
                n += 1
        return n

    def go_offline(self) -> None:
        """Set HF_HUB_OFFLINE=1 for the rest of the test (env and huggingface_hub's constant)."""
        assert self._monkeypatch is not None, "go_offline needs the hub fixture"
        from huggingface_hub import constants

        self._monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        self._monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)

    # -- used by the handler ------------------------------------------------------------

    def _record(self, req: Request) -> None:
        with self._lock:
            self.log.append(req)

    def _take_cut(self, key: str) -> bool:
        with self._lock:
            left = self._cuts.get(key, 0)
            if left > 0:
                self._cuts[key] = left - 1
                return True
            return False

    def _etag(self, file: Path) -> str:
        st = file.stat()
        key = (str(file), st.st_size, st.st_mtime_ns)
        with self._lock:
            if key in self._etags:
                return self._etags[key]
        h = hashlib.sha256()
        with file.open("rb") as f:
            while chunk := f.read(_CHUNK):
                h.update(chunk)
        with self._lock:
            self._etags[key] = h.hexdigest()
        return h.hexdigest()


def _repo_file(m: re.Match[str]) -> tuple[str, str]:
    return f"{unquote(m['org'])}/{unquote(m['name'])}", unquote(m["path"])


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the hub; a cut closes the connection

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        pass  # the request log is kept on the server object instead

    def do_HEAD(self) -> None:  # noqa: N802
        self._serve(body=False)

    def do_GET(self) -> None:  # noqa: N802
        self._serve(body=True)

    def _serve(self, body: bool) -> None:
        hub: HubServer = self.server.hub  # type: ignore[attr-defined]
        url_path = urlsplit(self.path).path
        hub._record(Request(self.command, url_path, self.headers.get("Range")))
        m = _RESOLVE.fullmatch(url_path)
        if m is None:
            return self._error(404, "NotFound", f"no route for {url_path}")
        repo_id, rel = _repo_file(m)
        repo = hub.root / repo_id
        if ".." in repo_id.split("/") or ".." in rel.split("/") or not repo.is_dir():
            return self._error(404, "RepoNotFound", f"Repository {repo_id} not found")
        commit = hub.commit(repo_id)
        if unquote(m["rev"]) not in ("main", commit):
            return self._error(404, "RevisionNotFound", f"Invalid rev id: {m['rev']}", commit)
        file = repo / rel
        if not file.is_file():
            return self._error(404, "EntryNotFound", f"{rel} does not exist", commit)
        self._send_file(hub, file, f"{repo_id}/{rel}", commit, body)

    def _send_file(self, hub: HubServer, file: Path, key: str, commit: str, body: bool) -> None:
        size = file.stat().st_size
        start, end = 0, size - 1
        status = 200
        rng = _parse_range(self.headers.get("Range"), size)
        if rng == "bad":
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{size}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rng is not None:
            start, end = rng
            status = 206
        length = end - start + 1
        self.send_response(status)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(length))
        self.send_header("ETag", f'"{hub._etag(file)}"')
        self.send_header("X-Repo-Commit", commit)
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{end}/{size}")
        self.end_headers()
        if not body:
            return
        cut = hub._take_cut(key)
        todo = length // 2 if cut else length
        try:
            with file.open("rb") as f:
                f.seek(start)
                while todo > 0:
                    chunk = f.read(min(_CHUNK, todo))
                    if not chunk:
                        break
                    self.wfile.write(chunk)
                    todo -= len(chunk)
            self.wfile.flush()
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True
            return
        if cut:
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def _error(self, status: int, code: str, message: str, commit: str | None = None) -> None:
        self.send_response(status)
        self.send_header("X-Error-Code", code)
        self.send_header("X-Error-Message", message)
        if commit:
            self.send_header("X-Repo-Commit", commit)
        self.send_header("Content-Length", "0")
        self.end_headers()


def _parse_range(header: str | None, size: int) -> tuple[int, int] | str | None:
    """(start, end) inclusive for one `bytes=` range, 'bad' if unsatisfiable, else None."""
    if not header:
        return None
    m = re.fullmatch(r"bytes=(\d*)-(\d*)", header.strip())
    if m is None or (not m[1] and not m[2]):
        return None  # several ranges or nonsense: answer with the whole file, as servers may
    if not m[1]:  # suffix: the last N bytes
        n = int(m[2])
        return (max(size - n, 0), size - 1) if n and size else "bad"
    start = int(m[1])
    end = min(int(m[2]), size - 1) if m[2] else size - 1
    if start >= size or end < start:
        return "bad"
    return start, end


def point_hf_at(url: str, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make huggingface_hub (and saelab) use the server at `url` and the cache `home/hub`.

    huggingface_hub reads HF_ENDPOINT, HF_HOME, HF_HUB_CACHE and HF_HUB_OFFLINE once, at
    import, into `huggingface_hub.constants` (and `_cache_manager` copies HF_HUB_CACHE), so
    setting the environment is not enough: the constants are patched too. Tokens are
    cleared so no real credential is ever sent to the test server.
    """
    from huggingface_hub import constants

    home = Path(home)
    cache = home / "hub"
    monkeypatch.setenv("HF_ENDPOINT", url)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")
    for var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_TOKEN", "HUGGING_FACE_HUB_TOKEN"):
        monkeypatch.delenv(var, raising=False)
    patches = {
        "ENDPOINT": url,
        "HUGGINGFACE_CO_URL_TEMPLATE": url + "/{repo_id}/resolve/{revision}/{filename}",
        "HF_HOME": str(home),
        "HF_HUB_CACHE": str(cache),
        "HUGGINGFACE_HUB_CACHE": str(cache),
        "default_cache_path": str(cache),
        "HF_ASSETS_CACHE": str(home / "assets"),
        "HF_HUB_OFFLINE": False,
        "HF_TOKEN_PATH": str(home / "token"),
        "HF_STORED_TOKENS_PATH": str(home / "stored_tokens"),
    }
    for name, value in patches.items():
        monkeypatch.setattr(constants, name, value, raising=False)
    try:
        from huggingface_hub.utils import _cache_manager
    except ImportError:  # pragma: no cover - other huggingface_hub layouts
        return
    monkeypatch.setattr(_cache_manager, "HF_HUB_CACHE", str(cache), raising=False)


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[HubServer]:
    """A running loopback hub (files under `hub.root`) with huggingface_hub pointed at it
    and at a fresh, empty cache (`hub.home`, `hub.cache`)."""
    server = HubServer(tmp_path / "hub-root")
    server.home = tmp_path / "hf-home"
    server._monkeypatch = monkeypatch
    point_hf_at(server.url, server.home, monkeypatch)
    with server:
        yield server
