"""A Hugging Face Hub on 127.0.0.1 for tests (HF_ENDPOINT): the file API the Hub client uses to download a repo
(revision -> commit, the recursive tree with LFS sha256s, resolve with Range), a token check for private repos,
and scripted failures: a transfer dropped halfway, a file served with other bytes than the tree lists."""

from __future__ import annotations

import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse


def git_blob_id(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


@dataclass
class Repo:
    files: dict[str, bytes]
    commit: str = "a" * 40
    lfs: tuple[str, ...] = ()      # paths stored in LFS (the tree lists their sha256)
    token: str | None = None       # a private repo: requests need "Authorization: Bearer <token>"
    served: dict[str, bytes] = field(default_factory=dict)  # path -> other bytes than the tree lists


class HubServer:
    def __init__(self, repos: dict[str, Repo]):
        self.repos = repos
        self.requests: list[tuple[str, str, str | None]] = []   # (method, path, Range)
        self.drop_once: set[str] = set()                          # file paths whose next GET stops halfway
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_HEAD(self):
                hub.respond(self, body=False)

            def do_GET(self):
                hub.respond(self, body=True)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()

    def _json(self, h, obj, status=200) -> None:
        data = json.dumps(obj).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.end_headers()
        h.wfile.write(data)

    def respond(self, h, body: bool) -> None:
        path = unquote(urlparse(h.path).path)
        self.requests.append((h.command, path, h.headers.get("Range")))
        parts = path.strip("/").split("/")
        api = parts[0] == "api"
        kind = ""
        if api:
            kind, parts = ("datasets/" if parts[1] == "datasets" else ""), parts[2:]  # api/models|datasets/...
        elif parts[0] == "datasets":
            kind, parts = "datasets/", parts[1:]
        repo_id = "/".join(parts[:2])
        repo = self.repos.get(kind + repo_id)  # dataset repos are keyed "datasets/owner/name"
        if repo is None:
            return self._json(h, {"error": "Repository not found"}, 404)
        if repo.token and h.headers.get("Authorization") != f"Bearer {repo.token}":
            return self._json(h, {"error": "Invalid credentials"}, 401)
        if api and parts[2] == "revision":
            return self._json(h, {"id": repo_id, "sha": repo.commit,
                                  "siblings": [{"rfilename": p} for p in sorted(repo.files)]})
        if api and parts[2] == "tree":
            return self._json(h, [self._entry(repo, p) for p in sorted(repo.files)])
        if parts[2] == "resolve":
            return self._file(h, repo, "/".join(parts[4:]), body)
        return self._json(h, {"error": "not served"}, 404)

    @staticmethod
    def _entry(repo: Repo, p: str) -> dict:
        data = repo.files[p]
        entry = {"type": "file", "path": p, "size": len(data), "oid": git_blob_id(data)}
        if p in repo.lfs:
            entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data), "pointerSize": 134}
        return entry

    def _file(self, h, repo: Repo, p: str, body: bool) -> None:
        if p not in repo.files:
            return self._json(h, {"error": "Entry not found"}, 404)
        data = repo.served.get(p, repo.files[p])
        listed = repo.files[p]
        etag = hashlib.sha256(listed).hexdigest() if p in repo.lfs else git_blob_id(listed)
        start = 0
        rng = h.headers.get("Range")
        if rng:
            start = int(rng.split("=")[1].split("-")[0])
            h.send_response(206)
            h.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            h.send_response(200)
        h.send_header("Content-Length", str(len(data) - start))
        h.send_header("X-Repo-Commit", repo.commit)
        h.send_header("ETag", f'"{etag}"')
        if p in repo.lfs:
            h.send_header("X-Linked-Etag", f'"{etag}"')
            h.send_header("X-Linked-Size", str(len(listed)))
        h.end_headers()
        if not body:
            return
        if p in self.drop_once:
            self.drop_once.discard(p)
            h.wfile.write(data[start:start + (len(data) - start) // 2])
            h.wfile.flush()
            h.close_connection = True
            h.connection.shutdown(2)
            return
        h.wfile.write(data[start:])
