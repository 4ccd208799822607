"""A stand-in Hugging Face Hub on loopback (test harness only): nothing can reach the real hub here.

It answers the HTTP calls that ``huggingface_hub.snapshot_download`` / ``hf_hub_download`` and
the operator's config.json read make, for repositories that are local directories:

- ``GET /api/{models|datasets}/{org}/{name}/revision/{rev}``: repository info (commit, files);
- ``GET /api/{models|datasets}/{org}/{name}/tree/{rev}``: the file list;
- ``HEAD|GET /[datasets/]{org}/{name}/resolve/{rev}/{path}``: a file, with the commit and ETag
  headers the client checks.

Repositories can be gated: without ``Authorization: Bearer <token>`` they answer 401, with
another token 403, like the hub. Every request is recorded (method, path, bearer token), so
tests can see what the product sent. Point clients at it with ``HF_ENDPOINT`` (the trainer) or
``KUBEFT_HF_ENDPOINT`` (the operator).
"""

from __future__ import annotations

import hashlib
import http.server
import json
import threading
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

COMMIT = "c0ffee" + "0" * 34  # every repository is at this one commit


@dataclass
class FakeHub:
    """Repositories by (kind, "org/name"): kind is ``model`` or ``dataset``; gated ones need `token`."""

    repos: dict[tuple[str, str], Path]
    gated: dict[tuple[str, str], str] = field(default_factory=dict)
    requests: list[tuple[str, str, str | None]] = field(default_factory=list)
    url: str = ""

    def files(self, root: Path) -> list[str]:
        return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())

    def answer(self, method: str, raw_path: str, auth: str | None) -> tuple[int, dict[str, str], bytes]:
        """(status, headers, body) for one request."""
        path = urllib.parse.unquote(urllib.parse.urlparse(raw_path).path)
        token = auth.removeprefix("Bearer ").strip() if auth else None
        self.requests.append((method, path, token))
        parts = path.strip("/").split("/")
        if parts[0] == "api":
            if len(parts) < 4 or parts[1] not in ("models", "datasets"):
                return 404, {}, b'{"error": "not found"}'
            kind, repo, rest = parts[1][:-1], "/".join(parts[2:4]), parts[4:]
        else:
            kind = "dataset" if parts[0] == "datasets" else "model"
            parts = parts[1:] if kind == "dataset" else parts
            if len(parts) < 5 or parts[2] != "resolve":
                return 404, {}, b"not found"
            repo, rest = "/".join(parts[:2]), parts[2:]
        key = (kind, repo)
        root = self.repos.get(key)
        if root is None:
            return 404, {"X-Error-Code": "RepositoryNotFound"}, b'{"error": "Repository not found"}'
        if key in self.gated and token != self.gated[key]:
            code = 401 if token is None else 403
            return (
                code,
                {"X-Error-Code": "GatedRepo"},
                b'{"error": "Access to this repository is restricted"}',
            )
        if parts[0] == "api":
            files = self.files(root)
            if rest[:1] == ["tree"]:
                tree = [
                    {"type": "file", "path": f, "size": (root / f).stat().st_size,
                     "oid": hashlib.sha1((root / f).read_bytes()).hexdigest()}
                    for f in files
                ]  # fmt: skip
                return 200, {"Content-Type": "application/json"}, json.dumps(tree).encode()
            info = {"id": repo, "sha": COMMIT, "siblings": [{"rfilename": f} for f in files]}
            return 200, {"Content-Type": "application/json"}, json.dumps(info).encode()
        target = root / "/".join(rest[2:])  # resolve/<rev>/<path>
        if not target.is_file():
            return 404, {"X-Error-Code": "EntryNotFound"}, b"Entry not found"
        data = target.read_bytes()
        headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{hashlib.sha1(data).hexdigest()}"'}
        return 200, headers, data


def _handler(hub: FakeHub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def do_HEAD(self) -> None:
            self._serve(head=True)

        def do_GET(self) -> None:
            self._serve(head=False)

        def _serve(self, head: bool) -> None:
            code, headers, body = hub.answer(self.command, self.path, self.headers.get("Authorization"))
            self.send_response(code)
            for name, value in headers.items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if not head:
                self.wfile.write(body)

    return Handler


@contextmanager
def serve(hub: FakeHub) -> Iterator[FakeHub]:
    """Runs `hub` on a free loopback port (``hub.url``) for the duration of the block."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
