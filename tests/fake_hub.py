"""A Hugging Face Hub on 127.0.0.1 that speaks what ``huggingface_hub`` 2.x uses to list and fetch files.

    hub = FakeHub(); hub.add_repo("org/name", {"path/in/repo": Path(...)}, gated=False)
    with hub: os.environ["HF_ENDPOINT"] = hub.url; ...

Endpoints (as the real Hub answers them, read from huggingface_hub's client code):

* ``GET /api/models/{repo}[/revision/{rev}]?blobs=true`` -> ``{id, sha, gated, siblings: [{rfilename, size,
  blobId, lfs: {size, sha256, pointerSize}}]}`` (``HfApi.model_info(files_metadata=True)``);
* ``HEAD|GET /{repo}/resolve/{rev}/{path}`` -> the bytes, with ``X-Repo-Commit``, ``ETag`` (the sha256 for LFS
  files, the git blob id otherwise) and ``Content-Length``; ``Range: bytes=N-`` answers 206;
* errors with ``X-Error-Code``: ``RepoNotFound`` (404), ``EntryNotFound`` (404), ``GatedRepo`` (401 until the
  request carries ``Authorization: Bearer <token>``).

Test knobs per file (``knobs={path: {...}}``), most of them a hostile mirror's tricks:

* ``cut``: the first full GET sends half the bytes, then drops the connection (a flaky network);
* ``lie_sha256``: the listing and ETag carry another sha256 than the bytes served;
* ``flood``: the GET body has no length and runs on for this many bytes past the file (``sent`` counts what
  the server managed to write before the client hung up);
* ``bare``: the listing gives no size, no LFS entry and no blob id, HEAD and GET no length, and the GET body
  ends after half the bytes with a clean close (a truncated file nothing can tell from a whole one);
* ``listing``: entries merged into the file's listing entry (``{"size": 1}``, ``{"lfs": None}``, ...).

Repository knobs: ``echo_auth`` (every resolve request fails with HTTP 500 and echoes the request's
Authorization header in the error message, the reason phrase, the request id and the body). ``requests`` logs
every (method, path, range) seen, ``headers`` every request's headers (lower-case names).
"""
from __future__ import annotations

import hashlib
import json
import threading
import urllib.parse
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

LFS_MIN = 1024  # files at least this big are "LFS" files (the real Hub: binary/large files)


@dataclass
class HubFile:
    data: bytes
    cut: bool = False
    lie_sha256: bool = False
    flood: int = 0
    bare: bool = False
    listing: dict = field(default_factory=dict)
    cut_done: bool = False
    sent: int = 0

    @property
    def lfs(self) -> bool:
        return len(self.data) >= LFS_MIN

    @property
    def sha256(self) -> str:
        real = hashlib.sha256(self.data).hexdigest()
        return hashlib.sha256(b"not " + self.data).hexdigest() if self.lie_sha256 else real

    @property
    def blob_id(self) -> str:
        return hashlib.sha1(b"blob %d\0" % len(self.data) + self.data).hexdigest()


@dataclass
class HubRepo:
    files: dict[str, HubFile]
    gated: bool = False
    echo_auth: bool = False
    sha: str = field(default_factory=lambda: hashlib.sha1(str(id(object())).encode()).hexdigest())


class FakeHub:
    def __init__(self, token: str = "hf_test_token"):
        self.repos: dict[str, HubRepo] = {}
        self.token = token
        self.requests: list[tuple[str, str, str | None]] = []
        self.headers: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # quiet
                pass

            def do_HEAD(self):
                hub._serve(self, head=True)

            def do_GET(self):
                hub._serve(self, head=False)

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def add_repo(self, repo: str, files: dict[str, Path | bytes], gated: bool = False,
                 knobs: dict | None = None, echo_auth: bool = False) -> HubRepo:
        """``files``: repository path -> a file or bytes; ``knobs``: {path: {"cut": True, "lie_sha256": True, ...}}."""
        entries = {}
        for path, src in files.items():
            data = src if isinstance(src, bytes) else Path(src).read_bytes()
            entries[path] = HubFile(data, **(knobs or {}).get(path, {}))
        self.repos[repo] = HubRepo(entries, gated, echo_auth)
        return self.repos[repo]

    def add_folder(self, repo: str, root: Path, gated: bool = False, knobs: dict | None = None,
                   echo_auth: bool = False) -> HubRepo:
        root = Path(root)
        files = {p.relative_to(root).as_posix(): p for p in sorted(root.rglob("*")) if p.is_file()}
        return self.add_repo(repo, files, gated, knobs, echo_auth)

    def touched(self, needle: str) -> list[tuple[str, str, str | None]]:
        """Requests whose path holds ``needle``."""
        return [r for r in self.requests if needle in r[1]]

    def downloads(self) -> list[str]:
        """Paths fetched with GET /resolve (not HEAD)."""
        return [p for m, p, _ in self.requests if m == "GET" and "/resolve/" in p]

    def start(self):
        self._thread.start()
        return self

    def stop(self):
        self._server.shutdown()
        self._server.server_close()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()

    # ------------------------------------------------------------------ serving

    def _error(self, h, status: int, code: str, message: str, repo: HubRepo | None = None):
        h.send_response(status)
        h.send_header("X-Error-Code", code)
        h.send_header("X-Error-Message", message)
        if repo is not None:
            h.send_header("X-Repo-Commit", repo.sha)
        body = json.dumps({"error": message}).encode()
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)

    def _find_repo(self, parts: list[str]) -> tuple[str, HubRepo | None]:
        name = "/".join(parts[:2])
        return name, self.repos.get(name)

    def _serve(self, h: BaseHTTPRequestHandler, head: bool):
        url = urllib.parse.urlsplit(h.path)
        path = urllib.parse.unquote(url.path)
        self.requests.append((h.command, path, h.headers.get("Range")))
        self.headers.append({k.lower(): v for k, v in h.headers.items()})
        parts = [p for p in path.split("/") if p]
        if parts[:2] == ["api", "models"]:
            name, repo = self._find_repo(parts[2:])
            if repo is None:
                return self._error(h, 404, "RepoNotFound", f"Repository Not Found for url: {h.path}.")
            body = json.dumps({
                "id": name, "modelId": name, "sha": repo.sha, "private": False,
                "gated": "manual" if repo.gated else False,
                "siblings": [self._sibling(p, f) for p, f in sorted(repo.files.items())],
            }).encode()
            h.send_response(200)
            h.send_header("Content-Type", "application/json")
            h.send_header("Content-Length", str(len(body)))
            h.end_headers()
            if not head:
                h.wfile.write(body)
            return
        if len(parts) >= 5 and parts[2] == "resolve":
            name, repo = self._find_repo(parts)
            if repo is None:
                return self._error(h, 404, "RepoNotFound", f"Repository Not Found for url: {h.path}.")
            if parts[3] not in ("main", repo.sha):
                return self._error(h, 404, "RevisionNotFound", f"Invalid rev id: {parts[3]}", repo)
            if repo.echo_auth:
                auth = h.headers.get("Authorization", "")
                return self._echo(h, auth, repo)
            if repo.gated and h.headers.get("Authorization") != f"Bearer {self.token}":
                return self._error(h, 401, "GatedRepo", f"Access to model {name} is restricted. You must have "
                                   "access to it and be authenticated to access it. Please log in.", repo)
            f = repo.files.get("/".join(parts[4:]))
            if f is None:
                return self._error(h, 404, "EntryNotFound", f"Entry Not Found for url: {h.path}.", repo)
            start = 0
            rng = h.headers.get("Range")
            if rng and rng.startswith("bytes=") and not head:
                start = int(rng[6:].split("-")[0])
            data = f.data[start:]
            h.send_response(206 if start else 200)
            h.send_header("X-Repo-Commit", repo.sha)
            h.send_header("ETag", f'"{f.sha256 if f.lfs else f.blob_id}"')
            if not (f.bare or (f.flood and not head)):
                h.send_header("Content-Length", str(len(data)))
            if start:
                h.send_header("Content-Range", f"bytes {start}-{len(f.data) - 1}/{len(f.data)}")
            h.send_header("Accept-Ranges", "bytes")
            h.end_headers()
            if head:
                return
            if f.bare:
                return self._send(h, f, data[: len(data) // 2])
            if f.flood:
                return self._send(h, f, data, f.flood)
            if f.cut and not f.cut_done and start == 0:
                f.cut_done = True
                h.wfile.write(data[: len(data) // 2])
                h.wfile.flush()
                h.close_connection = True
                return
            h.wfile.write(data)
            return
        self._error(h, 404, "NotFound", f"no route for {h.path}")

    @staticmethod
    def _sibling(path: str, f: HubFile) -> dict:
        entry = {"rfilename": path}
        if not f.bare:
            entry.update({"size": len(f.data), "blobId": f.blob_id})
            if f.lfs:
                entry["lfs"] = {"size": len(f.data), "sha256": f.sha256, "pointerSize": 134}
        entry.update(f.listing)
        return {k: v for k, v in entry.items() if v is not None}

    @staticmethod
    def _send(h, f: HubFile, data: bytes, extra: int = 0):
        """A body without a length (the connection's close ends it): ``data``, then ``extra`` bytes more."""
        h.close_connection = True
        try:
            h.wfile.write(data)
            f.sent += len(data)
            block = b"\0" * 65536
            while extra > 0:
                n = min(extra, len(block))
                h.wfile.write(block[:n])
                f.sent += n
                extra -= n
            h.wfile.flush()
        except OSError:  # the client hung up
            pass

    def _echo(self, h, auth: str, repo: HubRepo):
        """A mirror that quotes the request's Authorization header back in every part of an error answer."""
        message = f"internal error while checking credentials {auth!r}"
        h.send_response(500, f"Server Error ({auth})")
        h.send_header("X-Error-Message", message)
        h.send_header("X-Request-Id", f"req-{auth.replace(' ', '-')}")
        h.send_header("X-Repo-Commit", repo.sha)
        body = json.dumps({"error": message, "headers": {"authorization": auth}}).encode()
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        if h.command != "HEAD":
            h.wfile.write(body)
