"""A small local stand-in for the Hugging Face Hub's HTTP API, for testing pushes end to end offline.

It answers the calls `huggingface_hub` (2.x) makes for `create_repo` + `create_commit` / `upload_folder`:

    GET  /api/agent-harnesses                       the client's user-agent registry (answered empty)
    POST /api/repos/create                          create a repo (records the visibility asked for)
    POST /api/validate-yaml                         README.md metadata check (must parse as a YAML mapping)
    POST /api/models/{repo}/preupload/{revision}    decides per file: "lfs" (binary or large) or "regular"
    POST /{repo}.git/info/lfs/objects/batch         legacy LFS batch API: hands out upload URLs on this server
    PUT  /lfs-upload/{oid}                          receives an LFS object (sha256 checked)
    POST /api/models/{repo}/commit/{revision}       NDJSON commit: inline base64 files + LFS pointers

and, for data set repos (`datasets`' `push_to_hub`, `DatasetCard.load/push_to_hub`), the same under
/api/datasets/ plus what those read back: repo info, paths-info, the file tree, and file downloads
(/datasets/{repo}/resolve/{revision}/{path}).

and records what it was sent (`FakeHub.repos`, `FakeHub.requests`, `FakeHub.auth_headers`). Anything else is
answered 404 and recorded in `FakeHub.unexpected`, so a client change shows up as a test failure. The client
uses the LFS path only with Xet disabled (HF_HUB_DISABLE_XET); Xet's CAS protocol is not emulated.
Loopback only; use it as a context manager (`with FakeHub() as hub: ... hub.endpoint`).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote

import yaml

TOKEN = "hf_FAKEtokenForTests0123456789abcdefXYZ"  # what the tests log in with; must never be written
LFS_SUFFIXES = (".safetensors", ".bin", ".pt", ".png", ".jpg", ".gguf", ".pth", ".parquet")
LFS_MIN_SIZE = 10 * 1024 * 1024  # the Hub sends big text files to LFS too


class FileBody(bytes):
    """A file's content as served, with the commit it is at (X-Repo-Commit)."""

    commit: str


@dataclass
class FakeRepo:
    repo_id: str
    visibility: str | None
    repo_type: str
    files: dict[str, bytes] = field(default_factory=dict)
    lfs_files: set[str] = field(default_factory=set)
    commits: list[dict] = field(default_factory=list)


class FakeHub:
    def __init__(self):
        self.repos: dict[str, FakeRepo] = {}
        self.lfs_objects: dict[str, bytes] = {}
        self.requests: list[tuple[str, str]] = []
        self.auth_headers: list[str | None] = []
        self.unexpected: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self.server.daemon_threads = True
        self.endpoint = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> FakeHub:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(timeout=5)

    # --- the API ---------------------------------------------------------------------------------------------

    def create_repo(self, body: dict) -> tuple[int, dict]:
        repo_id = f"{body['organization']}/{body['name']}" if body.get("organization") else body["name"]
        if repo_id in self.repos:
            return 409, {"error": "You already created this model repo", "url": f"{self.endpoint}/{repo_id}"}
        self.repos[repo_id] = FakeRepo(repo_id, body.get("visibility"), body.get("type") or "model")
        return 200, {"url": f"{self.endpoint}/{repo_id}", "name": repo_id, "id": repo_id}

    def validate_yaml(self, body: dict) -> tuple[int, dict]:
        match = re.match(r"^---\n(.*?)\n---\n", body.get("content", ""), re.DOTALL)
        try:
            metadata = yaml.safe_load(match.group(1)) if match else {}
        except yaml.YAMLError as err:
            return 400, {"errors": [{"message": f"invalid YAML: {err}"}]}
        if not isinstance(metadata, dict):
            return 400, {"errors": [{"message": "metadata must be a mapping"}]}
        return 200, {"warnings": []}

    def preupload(self, repo_id: str, body: dict) -> tuple[int, dict]:
        if repo_id not in self.repos:
            return 404, {"error": "Repository not found"}
        files = []
        for f in body["files"]:
            lfs = f["path"].endswith(LFS_SUFFIXES) or f["size"] >= LFS_MIN_SIZE
            files.append(
                {"path": f["path"], "uploadMode": "lfs" if lfs else "regular", "shouldIgnore": False}
            )
        return 200, {"files": files, "commitOid": "0" * 40}

    def lfs_batch(self, repo_id: str, body: dict) -> tuple[int, dict]:
        if repo_id not in self.repos:
            return 404, {"message": "Repository not found"}
        objects = []
        for obj in body["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"], "authenticated": True}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.endpoint}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}

    def lfs_upload(self, oid: str, data: bytes) -> tuple[int, dict]:
        if hashlib.sha256(data).hexdigest() != oid:
            return 400, {"error": "sha256 mismatch"}
        self.lfs_objects[oid] = data
        return 200, {}

    def commit(self, repo_id: str, revision: str, data: bytes) -> tuple[int, dict]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        lines = [json.loads(line) for line in data.splitlines() if line.strip()]
        header = next(x["value"] for x in lines if x["key"] == "header")
        for item in lines:
            value = item["value"]
            if item["key"] == "file":
                repo.files[value["path"]] = base64.b64decode(value["content"])
            elif item["key"] == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 422, {"error": f"LFS object of {value['path']} was never uploaded"}
                repo.files[value["path"]] = self.lfs_objects[value["oid"]]
                repo.lfs_files.add(value["path"])
            elif item["key"] != "header":
                return 400, {"error": f"unsupported commit operation {item['key']}"}
        oid = hashlib.sha1(data).hexdigest()
        repo.commits.append({"revision": revision, "summary": header["summary"], "oid": oid})
        return 200, {"commitUrl": f"{self.endpoint}/{repo_id}/commit/{oid}", "commitOid": oid}

    def repo_info(self, repo_id: str) -> tuple[int, dict]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        sha = repo.commits[-1]["oid"] if repo.commits else "0" * 40
        return 200, {"id": repo_id, "sha": sha, "private": repo.visibility == "private",
                     "siblings": [{"rfilename": path} for path in sorted(repo.files)]}  # fmt: skip

    def _entry(self, repo: FakeRepo, path: str) -> dict:
        data = repo.files[path]
        return {"type": "file", "path": path, "size": len(data), "oid": hashlib.sha1(data).hexdigest()}

    def paths_info(self, repo_id: str, body: bytes) -> tuple[int, list]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        asked = (
            parse_qs(body.decode()).get("paths", [])
            if not body.startswith(b"{")
            else json.loads(body)["paths"]
        )
        return 200, [self._entry(repo, p) for p in asked if p in repo.files]

    def tree(self, repo_id: str, folder: str) -> tuple[int, list]:
        repo = self.repos.get(repo_id)
        if repo is None:
            return 404, {"error": "Repository not found"}
        prefix = folder.rstrip("/") + "/" if folder else ""
        entries, dirs = [], set()
        for path in sorted(repo.files):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest:
                dirs.add(prefix + rest.split("/", 1)[0])
            else:
                entries.append(self._entry(repo, path))
        if prefix and not entries and not dirs:
            return 404, {"error": "Entry not found"}
        return 200, [{"type": "directory", "path": d, "oid": "0" * 40} for d in sorted(dirs)] + entries

    def download(self, repo_id: str, path: str) -> tuple[int, FileBody | dict]:
        repo = self.repos.get(repo_id)
        if repo is None or path not in repo.files:
            return 404, {"error": "Entry not found"}
        body = FileBody(repo.files[path])
        body.commit = repo.commits[-1]["oid"] if repo.commits else "0" * 40  # the client caches by it
        return 200, body


def _handler_for(hub: FakeHub):
    repo = r"(?P<repo>[^/]+/[^/]+)"
    routes = [
        # The client fetches this best-effort registry (for its user agent) on its first request.
        ("GET", re.compile(r"^/api/agent-harnesses$"), lambda m, b: (200, {"standardEnvVars": [], "harnesses": {}})),
        ("POST", re.compile(r"^/api/repos/create$"), lambda m, b: hub.create_repo(json.loads(b))),
        ("POST", re.compile(r"^/api/validate-yaml$"), lambda m, b: hub.validate_yaml(json.loads(b))),
        ("POST", re.compile(rf"^/api/(?:models|datasets)/{repo}/preupload/(?P<rev>[^/]+)$"),
         lambda m, b: hub.preupload(m["repo"], json.loads(b))),
        ("POST", re.compile(rf"^/(?:datasets/)?{repo}\.git/info/lfs/objects/batch$"),
         lambda m, b: hub.lfs_batch(m["repo"], json.loads(b))),
        ("PUT", re.compile(r"^/lfs-upload/(?P<oid>[0-9a-f]{64})$"), lambda m, b: hub.lfs_upload(m["oid"], b)),
        ("POST", re.compile(rf"^/api/(?:models|datasets)/{repo}/commit/(?P<rev>[^/]+)$"),
         lambda m, b: hub.commit(m["repo"], m["rev"], b)),
        ("GET", re.compile(rf"^/api/datasets/{repo}(?:/revision/(?P<rev>[^/]+))?$"), lambda m, b: hub.repo_info(m["repo"])),
        ("POST", re.compile(rf"^/api/datasets/{repo}/paths-info/(?P<rev>[^/]+)$"),
         lambda m, b: hub.paths_info(m["repo"], b)),
        ("GET", re.compile(rf"^/api/datasets/{repo}/tree/(?P<rev>[^/]+)(?:/(?P<path>.*))?$"),
         lambda m, b: hub.tree(m["repo"], m["path"] or "")),
        ("GET", re.compile(rf"^/datasets/{repo}/resolve/(?P<rev>[^/]+)/(?P<path>.+)$"),
         lambda m, b: hub.download(m["repo"], m["path"])),
    ]  # fmt: skip

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _serve(self, method: str) -> None:
            body = self._read_body()
            path = unquote(self.path.split("?", 1)[0])
            with hub.lock:
                hub.requests.append((method, path))
                hub.auth_headers.append(self.headers.get("Authorization"))
                for route_method, pattern, action in routes:
                    match = pattern.match(path)
                    if match and route_method == ("GET" if method == "HEAD" else method):
                        status, payload = action(match, body)
                        break
                else:
                    hub.unexpected.append((method, path))
                    status, payload = 404, {"error": f"fake hub: no route for {method} {path}"}
            raw = isinstance(payload, bytes)  # a file's content
            data = payload if raw else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/octet-stream" if raw else "application/json")
            self.send_header("Content-Length", str(len(data)))
            if payload == {
                "error": "Entry not found"
            }:  # how the Hub tells a missing file from a missing repo
                self.send_header("X-Error-Code", "EntryNotFound")
            if raw:
                self.send_header("ETag", f'"{hashlib.sha1(data).hexdigest()}"')
                self.send_header("X-Repo-Commit", payload.commit)
            self.end_headers()
            if method != "HEAD":
                self.wfile.write(data)

        def _read_body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":  # streamed uploads
                chunks = []
                while size := int(self.rfile.readline().split(b";")[0].strip() or b"0", 16):
                    chunks.append(self.rfile.read(size))
                    self.rfile.readline()
                self.rfile.readline()
                return b"".join(chunks)
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def do_GET(self):
            self._serve("GET")

        def do_HEAD(self):
            self._serve("HEAD")

        def do_POST(self):
            self._serve("POST")

        def do_PUT(self):
            self._serve("PUT")

        def log_message(self, *args):  # keep test output clean
            pass

    return Handler
