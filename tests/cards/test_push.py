"""``build-dataset push``: the real huggingface_hub client against a local server that plays the Hub.

``FakeHub`` implements the part of the Hub API that ``HfApi`` calls for a push:
repo creation, dataset info, tree listing, branch creation, preupload (which
files go through LFS: ``*.parquet`` and ``*.png``, as the Hub's default
``.gitattributes`` says), the README metadata check, the LFS batch API with
basic transfer (PUT, sha256-checked), and the NDJSON commit endpoint (with
``parentCommit``). It stores every commit, so the tests read back exactly what
a push uploaded and deleted. Every Hub request must carry the expected bearer
token, else 401 as the Hub answers it.
"""
from __future__ import annotations

import base64
import hashlib
import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, unquote

import pytest
import yaml

from builder.cli import main

TOKEN = "hf_TESTSECRETgoodtoken0123456789"
WRONG_TOKEN = "hf_TESTSECRETwrongtoken987654321"
REPO = "tester/fer-demo"
FIRST_PUSH = [
    "README.md",
    "data/train-00000-of-00001.parquet",
    "data/validation-00000-of-00001.parquet",
    "figures/class_counts.png",
    "stats.json",
]


def git_blob_sha1(data: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


def lfs_pointer(data: bytes) -> bytes:
    return (f"version https://git-lfs.github.com/spec/v1\noid sha256:{hashlib.sha256(data).hexdigest()}\n"
            f"size {len(data)}\n").encode()


class FakeHub:
    """State of the fake Hub: repos, branches, commits (full file snapshots), LFS objects, and a request log."""

    LFS_SUFFIXES = (".parquet", ".png")

    def __init__(self, token: str = TOKEN):
        self.token = token
        self.repos: dict[str, dict] = {}  # repo id -> {"private": bool, "branches": {name: sha}}
        self.snapshots: dict[str, dict[str, tuple[bytes, bool]]] = {}  # sha -> path -> (content, is_lfs)
        self.lfs_objects: dict[str, bytes] = {}  # sha256 -> content
        self.commits: list[dict] = []  # every commit made through the API, in order
        self.lfs_puts: list[str] = []  # sha256 of every LFS upload
        self.requests: list[tuple[str, str]] = []  # (method, path) of every request
        self.url = ""

    # -- state -----------------------------------------------------------------------------------
    def files(self, repo: str, revision: str = "main") -> dict[str, bytes]:
        sha = self.repos[repo]["branches"][revision]
        return {path: data for path, (data, _) in self.snapshots[sha].items()}

    def _new_commit(self, files: dict, parent: str | None, summary: str) -> str:
        sha = hashlib.sha1(json.dumps([parent, summary, sorted((p, hashlib.sha256(d).hexdigest(), lfs)
                                                                for p, (d, lfs) in files.items())]).encode()
                           + str(len(self.snapshots)).encode()).hexdigest()
        self.snapshots[sha] = files
        return sha

    def _resolve(self, repo: str, revision: str) -> str | None:
        branches = self.repos[repo]["branches"]
        return branches.get(revision) or (revision if revision in self.snapshots else None)

    # -- HTTP --------------------------------------------------------------------------------------
    def handle(self, method: str, raw_path: str, headers, body: bytes):
        """-> (status, json-able body or None, extra headers)."""
        path, _, query = raw_path.partition("?")
        params = parse_qs(query)
        self.requests.append((method, path))
        if method == "PUT" and path.startswith("/lfs-upload/"):  # presigned storage URL: no token
            oid = path.rsplit("/", 1)[1]
            if hashlib.sha256(body).hexdigest() != oid:
                return 400, {"error": "sha256 mismatch"}, {}
            self.lfs_objects[oid] = body
            self.lfs_puts.append(oid)
            return 200, None, {}
        if "authorization" not in headers:  # anonymous: the Hub hides private and missing repos alike
            return 401, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if headers["authorization"] != f"Bearer {self.token}":
            return 401, {"error": "Invalid credentials in Authorization header"}, {
                "X-Error-Message": "Invalid credentials in Authorization header"}
        if method == "POST" and path == "/api/repos/create":
            return self._create_repo(json.loads(body))
        if method == "POST" and path == "/api/validate-yaml":
            try:
                yaml.safe_load(json.loads(body)["content"].split("---")[1])
            except Exception as exc:  # malformed metadata: the Hub answers 400 with errors
                return 400, {"errors": [{"message": str(exc)}]}, {}
            return 200, {"errors": [], "warnings": []}, {}
        m = re.fullmatch(r"/datasets/([^/]+/[^/]+)\.git/info/lfs/objects/batch", path)
        if m and method == "POST":
            return self._lfs_batch(unquote(m.group(1)), json.loads(body))
        m = re.fullmatch(r"/api/datasets/([^/]+/[^/]+)/(revision|tree|preupload|commit|branch)/([^/]+)(/.*)?", path)
        if not m:
            return 404, {"error": f"no route {method} {path}"}, {}
        repo, kind, revision = m.group(1), m.group(2), unquote(m.group(3))
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        if kind == "branch" and method == "POST":
            return self._create_branch(repo, revision, json.loads(body or b"{}"))
        sha = self._resolve(repo, revision)
        if sha is None:
            return 404, {"error": "Invalid rev id"}, {"X-Error-Code": "RevisionNotFound"}
        if kind == "revision" and method == "GET":
            return 200, {"id": repo, "sha": sha, "private": self.repos[repo]["private"],
                         "siblings": [{"rfilename": p} for p in sorted(self.snapshots[sha])]}, {}
        if kind == "tree" and method == "GET":
            recursive = params.get("recursive", [""])[0].lower() in ("true", "1")
            return self._tree(sha, (m.group(4) or "").lstrip("/"), recursive)
        if kind == "preupload" and method == "POST":
            files = json.loads(body)["files"]
            return 200, {"files": [{"path": f["path"], "shouldIgnore": False,
                                    "uploadMode": "lfs" if f["path"].endswith(self.LFS_SUFFIXES) else "regular"}
                                   for f in files]}, {}
        if kind == "commit" and method == "POST":
            return self._commit(repo, revision, sha, body)
        return 405, {"error": "method not allowed"}, {}

    def _create_repo(self, payload: dict):
        repo = f"{payload.get('organization') or 'tester'}/{payload['name']}"
        if payload.get("type") != "dataset":
            return 400, {"error": "this fake Hub only has dataset repos"}, {}
        if repo in self.repos:
            return 409, {"error": "You already created this dataset repo", "url": f"{self.url}/datasets/{repo}"}, {}
        gitattributes = b"*.parquet filter=lfs diff=lfs merge=lfs -text\n*.png filter=lfs diff=lfs merge=lfs -text\n"
        sha = self._new_commit({".gitattributes": (gitattributes, False)}, None, "initial commit")
        self.repos[repo] = {"private": payload.get("visibility") == "private", "branches": {"main": sha}}
        return 200, {"url": f"{self.url}/datasets/{repo}", "name": repo}, {}

    def _create_branch(self, repo: str, branch: str, payload: dict):
        branches = self.repos[repo]["branches"]
        if branch in branches:
            return 409, {"error": "Reference already exists"}, {}
        branches[branch] = self._resolve(repo, payload.get("startingPoint", "main"))
        return 200, {}, {}

    def _tree(self, sha: str, folder: str, recursive: bool):
        entries, dirs = [], set()
        for path, (data, lfs) in sorted(self.snapshots[sha].items()):
            if folder and not path.startswith(folder + "/"):
                continue
            rest = path[len(folder) + 1:] if folder else path
            parts = rest.split("/")
            for i in range(1, len(parts)):
                d = "/".join(([folder] if folder else []) + parts[:i])
                if d not in dirs and (recursive or i == 1):
                    dirs.add(d)
                    entries.append({"type": "directory", "oid": hashlib.sha1(d.encode()).hexdigest(), "size": 0,
                                    "path": d})
            if len(parts) > 1 and not recursive:
                continue
            stored = lfs_pointer(data) if lfs else data
            entry = {"type": "file", "oid": git_blob_sha1(stored), "size": len(data), "path": path}
            if lfs:
                entry["lfs"] = {"oid": hashlib.sha256(data).hexdigest(), "size": len(data),
                                "pointerSize": len(stored)}
            entries.append(entry)
        return 200, entries, {}

    def _lfs_batch(self, repo: str, payload: dict):
        if repo not in self.repos:
            return 404, {"error": "Repository not found"}, {"X-Error-Code": "RepoNotFound"}
        objects = []
        for obj in payload["objects"]:
            entry = {"oid": obj["oid"], "size": obj["size"]}
            if obj["oid"] not in self.lfs_objects:
                entry["actions"] = {"upload": {"href": f"{self.url}/lfs-upload/{obj['oid']}"}}
            objects.append(entry)
        return 200, {"transfer": "basic", "objects": objects}, {}

    def _commit(self, repo: str, revision: str, sha: str, body: bytes):
        lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
        header = lines[0]["value"]
        if revision not in self.repos[repo]["branches"]:
            return 400, {"error": "can only commit to a branch"}, {}
        if header.get("parentCommit") not in (None, sha):
            return 412, {"error": "A commit has happened since. Please refresh and try again."}, {}
        files = dict(self.snapshots[sha])
        record = {"repo": repo, "revision": revision, "summary": header["summary"],
                  "description": header.get("description", ""), "regular": [], "lfs": [], "deleted": []}
        for line in lines[1:]:
            key, value = line["key"], line["value"]
            if key == "file":
                files[value["path"]] = (base64.b64decode(value["content"]), False)
                record["regular"].append(value["path"])
            elif key == "lfsFile":
                if value["oid"] not in self.lfs_objects:
                    return 422, {"error": f"LFS object {value['oid']} was never uploaded"}, {}
                files[value["path"]] = (self.lfs_objects[value["oid"]], True)
                record["lfs"].append(value["path"])
            elif key == "deletedFile":
                if value["path"] not in files:
                    return 404, {"error": "A file with this name doesn't exist"}, {"X-Error-Code": "EntryNotFound"}
                del files[value["path"]]
                record["deleted"].append(value["path"])
            else:
                return 400, {"error": f"unsupported operation {key}"}, {}
        new = self._new_commit(files, sha, header["summary"])
        self.repos[repo]["branches"][revision] = new
        record["added"] = sorted(record["regular"] + record["lfs"])
        record["oid"] = new
        self.commits.append(record)
        return 200, {"commitUrl": f"{self.url}/datasets/{repo}/commit/{new}", "commitOid": new,
                     "pullRequestUrl": None, "success": True}, {}


def serve(hub: FakeHub) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def _body(self) -> bytes:
            if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
                data = b""
                while size := int(self.rfile.readline().strip() or b"0", 16):
                    data += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
                return data
            return self.rfile.read(int(self.headers.get("Content-Length") or 0))

        def _answer(self):
            headers = {k.lower(): v for k, v in self.headers.items()}
            status, payload, extra = hub.handle(self.command, self.path, headers, self._body())
            data = b"" if payload is None else json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args):  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.fixture
def hub(monkeypatch, tmp_path):
    """A fresh fake Hub; huggingface_hub pointed at it, online, with the test token."""
    import huggingface_hub.constants as hf_constants

    server = serve(fake := FakeHub())
    # conftest sets HF_HUB_OFFLINE=1 before huggingface_hub is imported, so huggingface_hub.constants.HF_HUB_OFFLINE
    # is True and its HTTP client refuses every request (OfflineModeIsEnabled, raised by the request hook, which
    # reads the constant at request time). Patching the constant, not the environment (read once at import), lets
    # this test's requests through; they can only go to the local server, whose URL is the endpoint.
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", False)
    # hf_xet is installed, so huggingface_hub would upload LFS content through the Xet protocol (a CAS server);
    # with Xet off it uses the classic LFS batch API + PUT, which FakeHub implements. Also read at import.
    monkeypatch.setattr(hf_constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(hf_constants, "HF_TOKEN_PATH", str(tmp_path / "no-stored-token"))
    monkeypatch.setenv("HF_ENDPOINT", fake.url)  # read by cards.push at push time
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.delenv("HF_OIDC_RESOURCE", raising=False)
    yield fake
    server.shutdown()
    server.server_close()


def write_parquet(path: Path, labels: list[int]) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table({"label": labels, "sample_id": [f"s{i}" for i in range(len(labels))]}), path)


def write_png(path: Path, value: int) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value, 0, 0)).save(path)


@pytest.fixture
def release(tmp_path) -> Path:
    """A small released build folder, in the layout the release step writes, plus files that must stay local."""
    out = tmp_path / "out" / "demo"
    out.mkdir(parents=True)
    (out / "README.md").write_text(
        "---\nlicense: other\nlicense_name: fer-synth-test\nlicense_link: https://example.org/licence\n"
        "task_categories: [image-classification]\nconfigs:\n- config_name: default\n"
        "  data_files:\n  - split: train\n    path: data/train-*.parquet\n  - split: validation\n"
        "    path: data/validation-*.parquet\n---\n# demo\n\nA tiny test release.\n")
    (out / "stats.json").write_text(json.dumps({"dataset": "demo", "version": "0.1.0", "tool_version": "0.0.test",
                                                "fingerprint": "abc123"}, indent=2) + "\n")
    write_parquet(out / "data" / "train-00000-of-00001.parquet", [0, 1, 2, 3])
    write_parquet(out / "data" / "validation-00000-of-00001.parquet", [4, 5])
    write_png(out / "figures" / "class_counts.png", 10)
    (out / ".release.json").write_text(json.dumps({"fingerprint": "abc123", "shards": 1}) + "\n")
    # Not part of the upload:
    (out / "shards" / "generate" / "0").mkdir(parents=True)
    (out / "shards" / "generate" / "0" / "records.jsonl").write_text("{}\n")
    (out / "rejected").mkdir()
    (out / "rejected" / "integrity.jsonl").write_text("{}\n")
    (out / "hf").mkdir()
    (out / "hf" / "dataset_dict.json").write_text("{}\n")
    (out / "build.json").write_text("{}\n")
    (out / ".lock").write_text("")
    return out


def push(out: Path, capfd, *args: str) -> tuple[int, str]:
    """Run ``build-dataset push`` in-process; -> (exit code, stdout + stderr)."""
    code = main(["push", str(out), "--repo-id", REPO, *args])
    captured = capfd.readouterr()
    return code, captured.out + captured.err


def plan_lines(output: str) -> list[tuple[str, str]]:
    """(action, repo path) of each file line of a push's output."""
    return [(words[0], words[1]) for words in map(str.split, output.splitlines())
            if words and words[0] in ("add", "update", "unchanged", "delete")]


def assert_no_secret(text: str) -> None:
    assert "TESTSECRET" not in text


def test_push_uploads_only_changes_and_deletes_stale_shards(hub, release, capfd, caplog):
    code, output = push(release, capfd)
    assert code == 0, output
    assert [c["added"] for c in hub.commits] == [FIRST_PUSH]
    assert hub.commits[0]["lfs"] == [  # the data files and figures went through LFS, the rest as regular files
        "data/train-00000-of-00001.parquet", "data/validation-00000-of-00001.parquet", "figures/class_counts.png"]
    assert hub.commits[0]["summary"] == "Upload demo 0.1.0 release"
    assert sorted(hub.files(REPO)) == [".gitattributes", *FIRST_PUSH]
    assert all(hub.files(REPO)[p] == (release / p).read_bytes() for p in FIRST_PUSH)
    assert len(hub.lfs_puts) == 3
    assert f"commit: {hub.url}/datasets/{REPO}/commit/{hub.commits[0]['oid']}" in output
    assert plan_lines(output) == [("add", p) for p in FIRST_PUSH] and "uploaded 5 files" in output
    assert_no_secret(output)

    # Unchanged release: nothing uploaded, no commit, and the output says so.
    requests_before = len(hub.requests)
    code, output = push(release, capfd)
    assert code == 0, output
    assert len(hub.commits) == 1 and len(hub.lfs_puts) == 3
    assert not [r for r in hub.requests[requests_before:] if r[1].endswith(("/commit/main", "/preupload/main"))]
    assert "nothing to upload" in output and "no commit made" in output
    assert plan_lines(output) == [("unchanged", p) for p in FIRST_PUSH]

    # One figure changed: exactly that file is uploaded.
    write_png(release / "figures" / "class_counts.png", 200)
    code, output = push(release, capfd)
    assert code == 0, output
    assert hub.commits[-1]["added"] == ["figures/class_counts.png"] and hub.commits[-1]["deleted"] == []
    assert len(hub.lfs_puts) == 4
    assert hub.files(REPO)["figures/class_counts.png"] == (release / "figures" / "class_counts.png").read_bytes()

    # A smaller release (one shard gone) and new stats: the stale shard is deleted in the same commit.
    (release / "data" / "validation-00000-of-00001.parquet").unlink()
    (release / "stats.json").write_text(json.dumps({"dataset": "demo", "version": "0.2.0"}) + "\n")
    code, output = push(release, capfd, "--message", "Drop the validation split")
    assert code == 0, output
    last = hub.commits[-1]
    assert (last["added"], last["deleted"]) == (["stats.json"], ["data/validation-00000-of-00001.parquet"])
    assert last["summary"] == "Drop the validation split"
    assert sorted(hub.files(REPO)) == [".gitattributes", "README.md", "data/train-00000-of-00001.parquet",
                                       "figures/class_counts.png", "stats.json"]
    assert len(hub.commits) == 3
    assert_no_secret(output + caplog.text)


def test_dry_run_changes_nothing(hub, release, capfd):
    # The repo does not exist yet: every file is listed as add, and the reason is given.
    code, output = push(release, capfd, "--dry-run")
    assert code == 0, output
    assert "could not read the remote" in output and "does not exist" in output
    assert plan_lines(output) == [("add", p) for p in FIRST_PUSH]
    assert hub.repos == {} and hub.commits == [] and all(method == "GET" for method, _ in hub.requests)

    assert push(release, capfd)[0] == 0
    write_png(release / "figures" / "class_counts.png", 99)
    (release / "data" / "validation-00000-of-00001.parquet").unlink()
    requests_before = len(hub.requests)
    code, output = push(release, capfd, "--dry-run")
    assert code == 0, output
    assert {path: action for action, path in plan_lines(output)} == {
        "README.md": "unchanged", "data/train-00000-of-00001.parquet": "unchanged",
        "data/validation-00000-of-00001.parquet": "delete", "figures/class_counts.png": "update",
        "stats.json": "unchanged"}
    assert "1 to upload" in output and "1 to delete" in output and "nothing was changed (dry run)" in output
    assert len(hub.commits) == 1
    assert all(method == "GET" for method, _ in hub.requests[requests_before:])
    assert_no_secret(output)


def test_dry_run_offline_lists_everything_as_add(hub, release, capfd, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    code, output = push(release, capfd, "--dry-run")
    assert code == 0, output
    assert "HF_HUB_OFFLINE" in output and "could not read the remote" in output
    assert plan_lines(output) == [("add", p) for p in FIRST_PUSH]
    assert hub.requests == []

    code, output = push(release, capfd)  # a real push offline: exit 2 with the fix
    assert code == 2 and "HF_HUB_OFFLINE" in output and hub.requests == []


def test_push_to_a_branch(hub, release, capfd):
    code, output = push(release, capfd, "--revision", "v0.1", "--private")
    assert code == 0, output
    assert hub.repos[REPO]["private"] is True
    assert hub.commits[0]["revision"] == "v0.1" and hub.commits[0]["added"] == FIRST_PUSH
    assert sorted(hub.files(REPO, "main")) == [".gitattributes"]
    assert push(release, capfd, "--revision", "v0.1")[0] == 0 and len(hub.commits) == 1


def test_missing_token_exits_2(hub, release, capfd, monkeypatch):
    monkeypatch.delenv("HF_TOKEN")
    code, output = push(release, capfd)
    assert code == 2
    assert "no Hugging Face token" in output and "hf auth login" in output and "HF_TOKEN" in output
    assert hub.requests == []
    code, output = push(release, capfd, "--dry-run")  # a dry run reads anonymously and says a push needs a token
    assert code == 0, output
    assert "no Hugging Face token" in output and "could not read the remote" in output
    assert plan_lines(output) == [("add", p) for p in FIRST_PUSH]
    assert hub.requests and all(method == "GET" for method, _ in hub.requests)


def test_rejected_token_exits_2_without_printing_it(hub, release, capfd, caplog, monkeypatch):
    monkeypatch.setenv("HF_TOKEN", WRONG_TOKEN)
    code, output = push(release, capfd)
    assert code == 2, output
    assert "401" in output and "rejected the token" in output and "hf auth login" in output
    assert hub.requests and hub.commits == []
    code, dry_output = push(release, capfd, "--dry-run")  # a dry run reports it too, and still plans
    assert code == 0 and "401" in dry_output
    assert_no_secret(output + dry_output + caplog.text)


def test_folder_without_release_marker_exits_2(hub, release, capfd):
    (release / ".release.json").unlink()
    code, output = push(release, capfd)
    assert code == 2
    assert str(release) in output and ".release.json" in output and "build-dataset MANIFEST" in output
    assert hub.requests == []


def test_bad_repo_id_exits_2(hub, release, capfd):
    code, output = main(["push", str(release), "--repo-id", "no-owner"]), capfd.readouterr()
    assert code == 2 and "OWNER/NAME" in output.err and hub.requests == []


def test_release_files_are_the_hub_layout_only(release):
    from cards.push import release_files

    assert list(release_files(release)) == FIRST_PUSH
    # evaluation results the card links go up; their crop cache and per-sample predictions stay local
    (release / "eval" / "cache").mkdir(parents=True)
    for name in ("resnet.json", "resnet.md", "resnet-confusion.png", "resnet-predictions.jsonl", "cache/c.json"):
        (release / "eval" / name).write_text("{}")
    assert list(release_files(release)) == sorted(FIRST_PUSH + ["eval/resnet-confusion.png", "eval/resnet.json",
                                                                "eval/resnet.md"])


def test_card_metadata_the_hub_would_refuse_stops_the_push_before_any_request(hub, release, capfd):
    text = (release / "README.md").read_text().replace("license: other", "license: other\nsize_categories: [tiny]")
    (release / "README.md").write_text(text)
    code, output = push(release, capfd)
    assert code == 2 and "breaks the Hub's rules: size_categories: 'tiny'" in output
    assert hub.requests == [] and hub.commits == []


def test_a_release_of_existing_images_without_a_declared_licence_is_not_pushed(hub, release, capfd):
    """Someone else's photos (an images source) are published only under the licence the manifest declares."""
    stats = json.loads((release / "stats.json").read_text())
    (release / "stats.json").write_text(json.dumps({**stats, "source": {"folder": "faces", "license": None}}))
    code, output = push(release, capfd)
    assert code == 2 and "copies existing images whose licence the manifest does not declare" in output
    assert "fix: set images.license in the manifest" in output
    assert hub.requests == [] and hub.commits == []
    (release / "stats.json").write_text(json.dumps({**stats, "source": {"folder": "faces", "license": "cc-by-4.0"}}))
    code, output = push(release, capfd)
    assert code == 0 and hub.commits, output


def test_edits_of_real_photos_without_a_declared_licence_are_not_pushed(hub, release, capfd):
    """An edit source of real people's photos declares their licence before its edits are published; synthetic
    sources need none."""
    stats = json.loads((release / "stats.json").read_text())
    real = {"source": {"synthetic": False, "consent": "signed forms", "license": None}}
    (release / "stats.json").write_text(json.dumps({**stats, "edit": real}))
    code, output = push(release, capfd)
    assert code == 2 and "edits of real people's photos whose licence the manifest does not declare" in output
    assert "fix: set edit.license in the manifest" in output and hub.requests == [] and hub.commits == []
    synthetic = {"source": {"synthetic": True, "consent": None, "license": None}}
    (release / "stats.json").write_text(json.dumps({**stats, "edit": synthetic}))
    code, output = push(release, capfd)
    assert code == 0 and hub.commits, output


def test_offline_push_stops_before_any_request_and_before_asking_for_a_token(hub, release, capfd, monkeypatch):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    for token in (TOKEN, None):  # offline is the first thing to fix, with or without a token
        if token is None:
            monkeypatch.delenv("HF_TOKEN")
        code, output = push(release, capfd)
        assert code == 2, output
        assert output.startswith(f"error: cannot push to datasets/{REPO}@main: HF_HUB_OFFLINE is set"), output
        assert "unset HF_HUB_OFFLINE" in output and "no Hugging Face token" not in output
        assert_no_secret(output)
    assert hub.requests == [] and hub.commits == []


@pytest.mark.parametrize("name", ["data/train-00000-of-00001.parquet", "README.md", "stats.json", "data"])
def test_links_that_leave_the_release_are_refused(hub, release, capfd, tmp_path, name):
    """A release folder someone handed over: a file (or the data folder) that links outside it is refused, naming
    it, before anything is read or sent; a link that stays inside the folder is fine."""
    secret = tmp_path / "home" / ".ssh" / "id_rsa"
    secret.parent.mkdir(parents=True)
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\nTESTSECRET\n")
    target = release / name
    if name == "data":  # the whole folder, with a file of the same name elsewhere
        elsewhere = tmp_path / "elsewhere"
        shutil.copytree(target, elsewhere)
        shutil.rmtree(target)
        target.symlink_to(elsewhere, target_is_directory=True)
        named, resolved = release / FIRST_PUSH[1], elsewhere / Path(FIRST_PUSH[1]).name
    else:
        target.unlink()
        target.symlink_to(secret)
        named, resolved = target, secret
    for args in ((), ("--dry-run",)):
        code, output = push(release, capfd, *args)
        assert code == 2, output
        assert output.startswith(f"error: {named}: is a link to {resolved}, outside the release folder {release}"), \
            output
        assert "TESTSECRET" not in output
    assert hub.requests == [] and hub.commits == []


def test_links_inside_the_release_are_pushed(hub, release, capfd):
    copy = release / "figures" / "copy.png"
    copy.symlink_to(release / "figures" / "class_counts.png")
    from cards.push import release_files

    assert release_files(release)["figures/copy.png"] == copy
