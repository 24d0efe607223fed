"""A tiny Hugging Face Hub served on localhost, for tests that run the hub libraries' real code.

`LocalHub` serves model and dataset repositories held in memory (``{path: bytes}``) with the
routes ``huggingface_hub`` and ``datasets`` call (found by logging their requests): repository
info (``/api/{models,datasets}/ID[/revision/REV]``), the file tree (``.../tree/REV[/PATH]``,
recursive or not) and file downloads (``[datasets/]ID/resolve/REV/PATH``, GET and HEAD, with the
``X-Repo-Commit`` and ``ETag`` headers a download needs). A missing repository, revision or file
gets the hub's 404 with its ``X-Error-Code``. Point a process at it with
``HF_ENDPOINT=hub.url``; nothing leaves the machine. ``hub.requests`` records every request.
"""

from __future__ import annotations

import hashlib
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse

COMMIT = "0123456789abcdef0123456789abcdef01234567"

_RESOLVE = re.compile(r"^/(datasets/)?([^/]+/[^/]+)/resolve/([^/]+)/(.+)$")
_INFO = re.compile(r"^/api/(datasets|models)/([^/]+/[^/]+)(?:/revision/([^/]+))?$")
_TREE = re.compile(r"^/api/(datasets|models)/([^/]+/[^/]+)/tree/([^/]+)/?(.*)$")


class LocalHub:
    """Serve ``repos`` (``{("model" | "dataset", "org/name"): {path: bytes}}``) on 127.0.0.1."""

    def __init__(self) -> None:
        self.repos: dict[tuple[str, str], dict[str, bytes]] = {}
        self.requests: list[str] = []
        hub = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: Any) -> None:
                pass

            def _send(self, code: int, body: bytes, headers: dict[str, str]) -> None:
                self.send_response(code)
                for key, value in headers.items():
                    self.send_header(key, value)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _json(self, obj: Any, code: int = 200, extra: dict[str, str] | None = None) -> None:
                body = json.dumps(obj).encode()
                self._send(code, body, {"Content-Type": "application/json", **(extra or {})})

            def _error(self, code: str) -> None:
                self._json({"error": code}, 404, {"X-Error-Code": code})

            def handle_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                hub.requests.append(f"{self.command} {self.path}")
                url = urlparse(self.path)
                hub.respond(self, unquote(url.path), "recursive=true" in url.query.lower())

            do_GET = do_HEAD = do_POST = handle_any

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def add(self, kind: str, repo_id: str, files: dict[str, bytes]) -> None:
        """Serve a repository of ``kind`` ``"model"`` or ``"dataset"``."""
        self.repos[(kind, repo_id)] = dict(files)

    def add_folder(self, kind: str, repo_id: str, folder: Path) -> None:
        """Serve every file under ``folder`` as a repository."""
        files = {p.relative_to(folder).as_posix(): p.read_bytes()
                 for p in sorted(folder.rglob("*")) if p.is_file()}  # fmt: skip
        self.add(kind, repo_id, files)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def respond(self, h: Any, path: str, recursive: bool) -> None:
        m = _RESOLVE.match(path)
        if m:
            files = self.repos.get(("dataset" if m.group(1) else "model", m.group(2)))
            if files is None:
                return h._error("RepoNotFound")
            if m.group(3) not in ("main", COMMIT):
                return h._error("RevisionNotFound")
            data = files.get(m.group(4))
            if data is None:
                return h._error("EntryNotFound")
            etag = f'"{hashlib.sha1(data).hexdigest()}"'
            return h._send(200, data, {"X-Repo-Commit": COMMIT, "ETag": etag})
        m = _INFO.match(path) or _TREE.match(path)
        if m is None:
            return h._json({"error": "not served"}, 404)
        files = self.repos.get((m.group(1)[:-1], m.group(2)))
        if files is None:
            return h._error("RepoNotFound")
        if m.group(3) not in (None, "main", COMMIT):
            return h._error("RevisionNotFound")
        if m.re is _INFO:
            siblings = [{"rfilename": name} for name in files]
            return h._json({"id": m.group(2), "sha": COMMIT, "private": False, "tags": [],
                            "siblings": siblings})  # fmt: skip
        return h._json(_tree(files, m.group(4).strip("/"), recursive))


def _tree(files: dict[str, bytes], prefix: str, recursive: bool) -> list[dict[str, Any]]:
    """The hub's tree listing of ``prefix``: files and folders, one level or all of them."""
    out: list[dict[str, Any]] = []
    folders: set[str] = set()
    for name, data in files.items():
        if prefix and not name.startswith(prefix + "/"):
            continue
        parts = (name[len(prefix) + 1 :] if prefix else name).split("/")
        if recursive or len(parts) == 1:
            oid = hashlib.sha1(data).hexdigest()
            out.append({"type": "file", "path": name, "size": len(data), "oid": oid})
        for depth in range(1, len(parts) if recursive else min(2, len(parts))):
            folders.add("/".join(([prefix] if prefix else []) + parts[:depth]))
    out += [{"type": "directory", "path": p, "oid": "0" * 40} for p in sorted(folders)]
    return out
