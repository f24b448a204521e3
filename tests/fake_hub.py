"""A stand-in Hugging Face hub on 127.0.0.1 for the download tests.

A real ``http.server`` in a thread, answering the requests huggingface_hub 0.36 makes for
``HfApi.model_info(files_metadata=True)`` and ``hf_hub_download``:

- ``GET /api/models/{repo}/revision/{rev}``: JSON with ``sha`` (the commit) and
  ``siblings`` (``rfilename``, ``size``, ``blobId``, and ``lfs`` {sha256, size,
  pointerSize} for large files);
- ``HEAD|GET /{repo}/resolve/{rev}/{path}``: ``X-Repo-Commit``, ``ETag`` (git blob sha1,
  or the sha256 of an LFS file, which also gets ``X-Linked-Etag`` / ``X-Linked-Size``),
  ``Content-Length``, and ``Range: bytes=N-`` answered with 206 (resume);
- errors with the ``X-Error-Code`` huggingface_hub maps to its exceptions
  (RepoNotFound, RevisionNotFound, EntryNotFound).

Faults to inject per file: ``drop[path] = (n_bytes, times)`` sends ``n_bytes`` of the body
then closes the connection (``times`` GETs in a row); ``corrupt`` serves the same number of
bytes with one flipped, while listing the checksum of the good ones.
"""

from __future__ import annotations

import hashlib
import json
import socket
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlsplit

LFS_SUFFIXES = (".onnx", ".gguf", ".bin", ".safetensors")


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str
    refs: tuple[str, ...] = ("main",)

    def is_lfs(self, path: str) -> bool:
        return path.endswith(LFS_SUFFIXES)

    def sibling(self, path: str) -> dict:
        data = self.files[path]
        out = {"rfilename": path, "size": len(data), "blobId": git_blob_sha1(data)}
        if self.is_lfs(path):
            out["lfs"] = {"sha256": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
            out["blobId"] = hashlib.sha1(path.encode()).hexdigest()  # the pointer's blob, not the data's
        return out

    def etag(self, path: str) -> str:
        data = self.files[path]
        return hashlib.sha256(data).hexdigest() if self.is_lfs(path) else git_blob_sha1(data)


@dataclass
class FakeHub:
    repos: dict[str, Repo] = field(default_factory=dict)
    drop: dict[str, tuple[int, int]] = field(default_factory=dict)
    corrupt: set[str] = field(default_factory=set)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def add(self, repo: str, files: dict[str, bytes], commit: str | None = None, refs=("main",)) -> Repo:
        commit = commit or hashlib.sha1(repo.encode()).hexdigest()
        self.repos[repo] = Repo(dict(files), commit, tuple(refs))
        return self.repos[repo]

    def gets(self, path_suffix: str) -> list[str | None]:
        """The Range headers of the GETs of a file (None: the whole file)."""
        return [rng for method, path, rng in self.requests if method == "GET" and path.endswith(path_suffix)]


def _handler(hub: FakeHub):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"  # one request per connection: a drop is a plain close

        def log_message(self, *args):  # quiet
            pass

        def _error(self, status: int, code: str, commit: str | None = None) -> None:
            body = json.dumps({"error": code}).encode()
            self.send_response(status)
            self.send_header("X-Error-Code", code)
            self.send_header("X-Error-Message", code)
            if commit:
                self.send_header("X-Repo-Commit", commit)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _repo_rev(self, repo_id: str, rev: str) -> Repo | None:
            repo = hub.repos.get(repo_id)
            if repo is None:
                self._error(404, "RepoNotFound")
                return None
            if rev != repo.commit and rev not in repo.refs:
                self._error(404, "RevisionNotFound")
                return None
            return repo

        def do_HEAD(self):
            self._serve()

        def do_GET(self):
            self._serve()

        def _serve(self):
            path = unquote(urlsplit(self.path).path)
            hub.requests.append((self.command, path, self.headers.get("Range")))
            if path.startswith("/api/models/") and "/revision/" in path:
                repo_id, rev = path[len("/api/models/") :].split("/revision/", 1)
                repo = self._repo_rev(repo_id, rev)
                if repo is None:
                    return
                body = json.dumps(
                    {
                        "_id": repo.commit[:24],
                        "id": repo_id,
                        "modelId": repo_id,
                        "sha": repo.commit,
                        "private": False,
                        "siblings": [repo.sibling(p) for p in sorted(repo.files)],
                    }
                ).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command == "GET":
                    self.wfile.write(body)
                return
            if "/resolve/" in path:
                repo_id, rest = path.lstrip("/").split("/resolve/", 1)
                rev, _, file = rest.partition("/")
                repo = self._repo_rev(repo_id, rev)
                if repo is None:
                    return
                if file not in repo.files:
                    self._error(404, "EntryNotFound", repo.commit)
                    return
                self._send_file(repo, file)
                return
            self._error(404, "RepoNotFound")

        def _send_file(self, repo: Repo, file: str) -> None:
            data = repo.files[file]
            if file in hub.corrupt:
                data = bytes([data[0] ^ 0xFF]) + data[1:]
            start = 0
            rng = self.headers.get("Range")
            if rng and rng.startswith("bytes=") and self.command == "GET":
                start = int(rng[len("bytes=") :].split("-", 1)[0] or 0)
            body = data[start:]
            self.send_response(206 if start else 200)
            self.send_header("X-Repo-Commit", repo.commit)
            etag = repo.etag(file)
            self.send_header("ETag", f'"{etag}"')
            if repo.is_lfs(file):
                self.send_header("X-Linked-Etag", f'"{etag}"')
                self.send_header("X-Linked-Size", str(len(data)))
            self.send_header("Accept-Ranges", "bytes")
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(body)))
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            if self.command == "HEAD":
                return
            n, times = hub.drop.get(file, (0, 0))
            if times > 0:
                hub.drop[file] = (n, times - 1)
                self.wfile.write(body[:n])
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)  # mid-file: the client sees a short body
                self.close_connection = True
                return
            self.wfile.write(body)

    return Handler


class running:
    """``with running(FakeHub()) as hub:`` serves ``hub`` on 127.0.0.1 at ``hub.url``."""

    def __init__(self, hub: FakeHub):
        self.hub = hub
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self.thread.start()
        host, port = self.server.server_address[:2]
        self.hub.url = f"http://{host}:{port}"
        return self.hub

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(timeout=5)
