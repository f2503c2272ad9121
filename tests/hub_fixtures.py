"""A Hugging Face Hub on this machine, for tests: a cache laid out as huggingface_hub lays it, and a small HTTP server
that speaks the part of the Hub's API that huggingface_hub's own upload and download code uses (create a repository,
preupload, commit, resolve a file). Nothing here replaces huggingface_hub: the library's real client talks to it."""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import yaml


def put_in_hub_cache(cache: Path, repo: str, files: dict[str, bytes], revision: str) -> None:
    """Store ``files`` (path in the repository -> content) as hub model repository ``repo`` at ``revision`` (40 hex
    digits, then ``main``), laid out as huggingface_hub's cache: blobs, snapshot links to them and ``refs/main``."""
    folder = cache / f"models--{repo.replace('/', '--')}"
    (folder / "blobs").mkdir(parents=True, exist_ok=True)
    snapshot = folder / "snapshots" / revision
    for name, content in files.items():
        blob = folder / "blobs" / hashlib.sha256(content).hexdigest()
        blob.write_bytes(content)
        link = snapshot / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path(*[".."] * (len(Path(name).parts) + 1), "blobs", blob.name))
    (folder / "refs").mkdir(exist_ok=True)
    (folder / "refs" / "main").write_text(revision)


class FakeHub:
    """``with FakeHub() as hub:`` serves ``hub.endpoint``; ``hub.repos[repo_id][revision][path]`` holds the bytes
    committed, ``hub.commits`` the commit messages, ``hub.private`` the repositories created private,
    ``hub.validated_cards`` the metadata of every model card checked."""

    def __init__(self) -> None:
        self.repos: dict[str, dict[str, dict[str, bytes]]] = {}
        self.commits: list[tuple[str, str]] = []
        self.private: set[str] = set()
        self.unknown_requests: list[str] = []
        self.validated_cards: list[dict] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(
                self,
                status: int,
                body: bytes = b"",
                headers: dict | None = None,
                content_type: str = "application/json",
            ) -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                for key, value in (headers or {}).items():
                    self.send_header(key, value)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, status: int, data) -> None:
                self._reply(status, json.dumps(data).encode())

            def _body(self) -> bytes:
                return self.rfile.read(int(self.headers.get("Content-Length") or 0))

            def do_POST(self) -> None:
                body = self._body()
                if self.path == "/api/validate-yaml":  # the README's front matter, as the Hub checks it
                    return self._validate_card(json.loads(body)["content"])
                if self.path.startswith("/api/repos/create"):
                    request = json.loads(body)
                    repo_id = "/".join(filter(None, (request.get("organization"), request["name"])))
                    hub.repos.setdefault(repo_id, {"main": {}})
                    if request.get("private") or request.get("visibility") == "private":
                        hub.private.add(repo_id)
                    return self._json(200, {"url": f"{hub.endpoint}/{repo_id}"})
                match = re.fullmatch(r"/api/models/(.+?)/(preupload|commit)/([^/?]+)(\?.*)?", self.path)
                if match is None or match[1] not in hub.repos:
                    hub.unknown_requests.append(f"POST {self.path}")
                    return self._json(404, {"error": "Repository not found"})
                repo_id, action, revision = match[1], match[2], match[3]
                if action == "preupload":
                    files = json.loads(body)["files"]
                    return self._json(
                        200,
                        {"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False} for f in files]},
                    )
                lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
                files = dict(hub.repos[repo_id].get(revision, {}))
                for line in lines:
                    if line["key"] == "header":
                        hub.commits.append((repo_id, line["value"]["summary"]))
                    elif line["key"] == "file":
                        files[line["value"]["path"]] = base64.b64decode(line["value"]["content"])
                hub.repos[repo_id][revision] = files
                oid = hashlib.sha1(
                    json.dumps(sorted((k, hashlib.sha256(v).hexdigest()) for k, v in files.items())).encode()
                ).hexdigest()
                return self._json(200, {"commitUrl": f"{hub.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid})

            def _validate_card(self, content: str) -> None:
                match = re.match(r"---\n(.*?)\n---\n", content, re.S)
                try:
                    metadata = yaml.safe_load(match[1]) if match else None
                except yaml.YAMLError as error:
                    metadata = f"invalid YAML: {error}"
                if not isinstance(metadata, dict):
                    return self._json(400, {"errors": [{"message": f"no valid metadata block ({metadata!r})"}]})
                hub.validated_cards.append(metadata)
                return self._json(200, {"errors": [], "warnings": []})

            def _resolve(self) -> None:
                match = re.fullmatch(r"/(.+?)/resolve/([^/]+)/(.+)", self.path.split("?")[0])
                if match is None:
                    hub.unknown_requests.append(f"{self.command} {self.path}")
                    return self._json(404, {"error": "not found"})
                repo_id, revision, path = match[1], match[2], match[3]
                if repo_id not in hub.repos:
                    return self._reply(
                        404,
                        b'{"error": "Repository not found"}',
                        {"X-Error-Code": "RepoNotFound", "X-Error-Message": "Repository not found"},
                    )
                if revision not in hub.repos[repo_id]:
                    return self._reply(
                        404,
                        b'{"error": "Revision not found"}',
                        {"X-Error-Code": "RevisionNotFound", "X-Error-Message": "Invalid rev id"},
                    )
                files = hub.repos[repo_id][revision]
                if path not in files:
                    return self._reply(
                        404,
                        b'{"error": "Entry not found"}',
                        {"X-Error-Code": "EntryNotFound", "X-Error-Message": "Entry not found"},
                    )
                content = files[path]
                commit = hashlib.sha1(
                    repr(sorted(files)).encode() + b"".join(files[k] for k in sorted(files))
                ).hexdigest()
                self._reply(
                    200,
                    content,
                    {"X-Repo-Commit": commit, "ETag": f'"{hashlib.sha256(content).hexdigest()}"'},
                    content_type="application/octet-stream",
                )

            do_GET = do_HEAD = _resolve

        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.endpoint = f"http://127.0.0.1:{self._server.server_port}"
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()
