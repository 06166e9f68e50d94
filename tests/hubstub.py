"""A local stand-in for the Hugging Face Hub endpoints moemerge's huggingface_hub calls use: file resolve (HEAD/GET
with ranges), repo creation, branches, preupload and commit (regular uploads only). It records every request."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@dataclass
class Repo:
    private: bool = False
    files: dict[str, bytes] = field(default_factory=dict)
    branches: set[str] = field(default_factory=lambda: {"main"})
    commits: list[dict] = field(default_factory=list)


class HubStub:
    def __init__(self) -> None:
        self.served: dict[str, Path] = {}  # repo id -> local folder served for downloads
        self.repos: dict[str, Repo] = {}  # repos created or pushed to
        self.requests: list[tuple[str, str, dict[str, str]]] = []
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> HubStub:  # noqa: PYI034
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()

    def downloaded(self, repo_id: str) -> set[str]:
        """Files of `repo_id` whose content was requested (GET), header-only range reads excluded."""
        prefix = f"/{repo_id}/resolve/"
        return {p[len(prefix) :].split("/", 1)[1] for m, p, h in self.requests
                if m == "GET" and p.startswith(prefix) and "bytes=0-100000" not in h.get("range", "")}  # fmt: skip

    def _handler(self):
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet
                pass

            def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, data) -> None:
                self._reply(status, json.dumps(data).encode(), {"Content-Type": "application/json"})

            def _record(self) -> str:
                path = unquote(urlparse(self.path).path)
                stub.requests.append((self.command, path, {k.lower(): v for k, v in self.headers.items()}))
                return path

            def _resolve(self, head: bool) -> None:
                path = self._record()
                parts = path.strip("/").split("/")
                if len(parts) < 5 or parts[2] != "resolve":
                    return self._reply(404, headers={"X-Error-Code": "RepoNotFound"})
                repo_id, filename = "/".join(parts[:2]), "/".join(parts[4:])
                if repo_id not in stub.served:
                    return self._reply(404, headers={"X-Error-Code": "RepoNotFound"})
                file = stub.served[repo_id] / filename
                if not file.is_file():
                    return self._reply(404, headers={"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT})
                data = file.read_bytes()
                headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"',
                           "Accept-Ranges": "bytes"}  # fmt: skip
                wanted = self.headers.get("Range")
                if wanted and not head:
                    start, _, end = wanted.removeprefix("bytes=").partition("-")
                    end = min(int(end) if end else len(data) - 1, len(data) - 1)
                    headers["Content-Range"] = f"bytes {start}-{end}/{len(data)}"
                    return self._reply(206, data[int(start) : end + 1], headers)
                if head:
                    self.send_response(200)
                    for key, value in headers.items():
                        self.send_header(key, value)
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    return None
                return self._reply(200, data, headers)

            def do_HEAD(self) -> None:
                self._resolve(head=True)

            def do_GET(self) -> None:
                self._resolve(head=False)

            def do_POST(self) -> None:
                path = self._record()
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not self.headers.get("Authorization", "").startswith("Bearer "):
                    return self._reply(401, headers={"X-Error-Code": "RepoNotFound"})
                parts = path.strip("/").split("/")
                if path == "/api/repos/create":
                    data = json.loads(body)
                    repo_id = f"{data['organization']}/{data['name']}" if data.get("organization") else data["name"]
                    if data["name"].startswith("forbidden"):  # a namespace the token cannot write to
                        return self._json(
                            403, {"error": "You don't have the rights to create a model under this namespace"}
                        )
                    exists = repo_id in stub.repos
                    stub.repos.setdefault(repo_id, Repo(private=data.get("visibility") == "private"))
                    return self._json(409 if exists else 200, {"url": f"{stub.url}/{repo_id}", "error": "exists"})
                if path == "/api/validate-yaml":
                    return self._json(200, {})
                if len(parts) >= 6 and parts[:2] == ["api", "models"]:
                    repo_id, verb, rev = "/".join(parts[2:4]), parts[4], "/".join(parts[5:])
                    repo = stub.repos.get(repo_id)
                    if repo is None:
                        return self._reply(404, headers={"X-Error-Code": "RepoNotFound"})
                    if verb == "branch":
                        repo.branches.add(rev)
                        return self._json(200, {})
                    if verb == "preupload":
                        files = json.loads(body)["files"]
                        return self._json(200, {"files": [{"path": f["path"], "uploadMode": "regular",
                                                           "shouldIgnore": False} for f in files]})  # fmt: skip
                    if verb == "commit":
                        lines = [json.loads(line) for line in body.splitlines() if line.strip()]
                        header = next(item["value"] for item in lines if item["key"] == "header")
                        for item in lines:
                            if item["key"] == "file":
                                repo.files[item["value"]["path"]] = base64.b64decode(item["value"]["content"])
                        repo.commits.append({"revision": rev, **header})
                        return self._json(200, {"commitUrl": f"{stub.url}/{repo_id}/commit/{COMMIT}",
                                                "commitOid": COMMIT, "pullRequestUrl": None})  # fmt: skip
                return self._reply(404, headers={"X-Error-Code": "RepoNotFound"})

        return Handler
