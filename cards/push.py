"""Publishing: upload a finished release folder to a Hugging Face Hub dataset repo.

``build-dataset push OUT --repo-id OWNER/NAME`` uploads what the release
wrote for the Hub and nothing else: ``README.md`` (the data card), ``stats.json``,
``data/*.parquet``, ``figures/*.png`` and the evaluation results the card links
(``eval/*.json``, ``*.png``, ``*.md``; not ``eval/cache/`` nor the per-sample predictions). The folder must be released
(``.release.json`` present); shards, ``hf/``, ``rejected/``, caches and locks
stay local. A file (or folder) that is a link resolving outside ``OUT`` is refused before anything is
read: a release folder someone handed over must not upload files from elsewhere on the machine.

The local files are compared by content with the repo at the revision: a
remote LFS (or Xet) file by its ``lfs.sha256``, a regular one by its git blob
sha1 (``sha1(b"blob <size>\\0" + data)``, the Hub's ``blob_id``). Only new or
changed files are sent, in one commit made on top of the commit that was
compared (``parent_commit``), together with deletions of repo files under
``data/`` and ``figures/`` that the release no longer has (those two folders
belong to the release). A push of an unchanged release makes no commit.

The token is the one ``huggingface_hub.get_token()`` finds (``HF_TOKEN``, then
the ``hf auth login`` file); it is passed to ``HfApi`` and never printed,
logged or put into a message. Hub and network errors become ``UserError``s
that name the repo and a fix; with ``HF_HUB_OFFLINE`` set, a push stops before any request (a dry run
plans every file as new). ``HF_ENDPOINT`` is read when the push runs (not
only when ``huggingface_hub`` is imported), so a test or a mirror can set it.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from builder.core.build_folder import MARKER
from builder.core.errors import UserError

REPO_TYPE = "dataset"
DEFAULT_REVISION = "main"
TOP_FILES = ("README.md", "stats.json")
"""Files at the top of the release folder that are uploaded; both must exist."""
OWNED_DIRS = {"data": ("*.parquet",), "figures": ("*.png",), "eval": ("*.json", "*.png", "*.md")}
"""Folders the release owns on the Hub, with the files uploaded from each: remote files in them
that the release does not have are deleted."""
LOGIN_FIX = "run `hf auth login` (a token with write access), or set HF_TOKEN"


@dataclass(frozen=True)
class PlanEntry:
    """One file of a push: ``add`` (new), ``update`` (changed), ``unchanged`` or ``delete``."""

    path: str
    action: str
    size: int


@dataclass
class PushResult:
    repo_id: str
    revision: str
    endpoint: str
    plan: list[PlanEntry]
    dry_run: bool = False
    remote_error: str | None = None
    """Why the repo could not be read (dry run only); every file is then planned as ``add``."""
    commit_url: str | None = None
    notes: list[str] = field(default_factory=list)

    def entries(self, *actions: str) -> list[PlanEntry]:
        return [e for e in self.plan if e.action in actions]

    @property
    def uploads(self) -> list[PlanEntry]:
        return self.entries("add", "update")

    @property
    def deletions(self) -> list[PlanEntry]:
        return self.entries("delete")

    @property
    def repo_url(self) -> str:
        return f"{self.endpoint.rstrip('/')}/datasets/{self.repo_id}"


def release_files(out: Path) -> dict[str, Path]:
    """Repo path (POSIX) -> local file, sorted by repo path, of everything a push uploads from ``out``."""
    out = Path(out)
    if not out.is_dir():
        raise UserError("no such release folder", file=str(out),
                        fix="give the --out folder of a finished build (build-dataset MANIFEST --out DIR)")
    if not (out / MARKER).is_file():
        raise UserError(f"not a finished release (no {MARKER}): only a released build folder can be pushed",
                        file=str(out), fix=f"run `build-dataset MANIFEST --out {out}` first (it resumes and "
                        "releases), then push again")
    files = {}
    for name in TOP_FILES:
        if not (out / name).is_file():
            raise UserError(f"the release has no {name}", file=str(out),
                            fix=f"run `build-dataset MANIFEST --out {out}` again to redo the release")
        files[name] = out / name
    for folder, patterns in OWNED_DIRS.items():  # top level only: eval/cache/ stays local
        for path in (p for pattern in patterns for p in (out / folder).glob(pattern)):
            if path.is_file():
                files[path.relative_to(out).as_posix()] = path
    root = out.resolve()
    for _, path in sorted(files.items()):  # before any file is read: a link may point anywhere (~/.ssh/id_rsa)
        _refuse_outside(path, root, out)
    if not any(p.startswith("data/") for p in files):
        raise UserError("the release has no data/*.parquet files (released by an older version of the tool?)",
                        file=str(out), fix=f"run `build-dataset MANIFEST --out {out}` again to redo the release")
    _refuse_undeclared_licence(out)
    from cards.hub_metadata import validate_card_text

    problems = validate_card_text((out / "README.md").read_text(encoding="utf-8"))
    if problems:  # the Hub would refuse or mislabel it: say so before anything is uploaded
        raise UserError("the card's metadata breaks the Hub's rules: " + "; ".join(problems),
                        file=str(out / "README.md"), fix="fix the YAML front matter (or the manifest field it "
                        "comes from) and release again")
    return dict(sorted(files.items()))


def _refuse_undeclared_licence(out: Path) -> None:
    """A release of existing images (an images source), or of edits of real people's photos (an edit source),
    whose licence the manifest does not declare is not published: the images are someone else's, and the Hub card
    would have to guess their terms."""
    try:
        stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stats = {}
    source = stats.get("source") if isinstance(stats, dict) else None
    if isinstance(source, dict) and not source.get("license"):
        raise UserError("the release copies existing images whose licence the manifest does not declare",
                        file=str(out / "stats.json"), fix="set images.license in the manifest (an SPDX id such as "
                        "cc-by-4.0, or 'other' with the terms in the card), build again to release, then push")
    edited = ((stats.get("edit") or {}).get("source") or {}) if isinstance(stats, dict) else {}
    if edited and not edited.get("synthetic") and not edited.get("license"):
        raise UserError("the release holds edits of real people's photos whose licence the manifest does not "
                        "declare", file=str(out / "stats.json"), fix="set edit.license in the manifest (the source "
                        "photos' licence: an SPDX id, or 'other' with the terms in the card), build again to "
                        "release, then push")


def _refuse_outside(path: Path, root: Path, out: Path) -> None:
    """``UserError`` naming ``path`` when it (or a folder above it) is a link that resolves outside the release
    folder: a folder someone handed over must not make push upload files from elsewhere on this machine."""
    try:
        target = path.resolve(strict=True)
        inside = target.is_relative_to(root)
    except (OSError, RuntimeError):  # a dangling link or a link loop
        target, inside = None, False
    if not inside:
        where = f"to {target}, " if target is not None else "that cannot be resolved, "
        raise UserError(f"is a link {where}outside the release folder {out}: push uploads only files inside it",
                        file=str(path), fix="replace the link with the file itself (or run `build-dataset release "
                        f"{out}` to write the release again) and push again")


def file_hashes(path: Path) -> tuple[str, str]:
    """(sha256, git blob sha1) of a file, read once."""
    sha256, sha1 = hashlib.sha256(), hashlib.sha1()
    sha1.update(b"blob %d\0" % path.stat().st_size)
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            sha256.update(chunk)
            sha1.update(chunk)
    return sha256.hexdigest(), sha1.hexdigest()


def plan_push(local: dict[str, Path], remote: dict | None) -> list[PlanEntry]:
    """Compare the release with the repo's files (repo path -> ``RepoFile``; ``None``: unknown, all added)."""
    remote = remote or {}
    plan = []
    for path, file in local.items():
        size = file.stat().st_size
        theirs = remote.get(path)
        if theirs is None:
            plan.append(PlanEntry(path, "add", size))
            continue
        sha256, blob_sha1 = file_hashes(file)
        lfs = getattr(theirs, "lfs", None)
        same = (lfs.sha256 == sha256) if lfs is not None else (theirs.blob_id == blob_sha1)
        plan.append(PlanEntry(path, "unchanged" if same else "update", size))
    for path, theirs in remote.items():
        if path not in local and path.split("/", 1)[0] in OWNED_DIRS and "/" in path:
            plan.append(PlanEntry(path, "delete", theirs.size or 0))
    return sorted(plan, key=lambda e: e.path)


def push(out: Path, repo_id: str, *, private: bool = False, dry_run: bool = False, revision: str | None = None,
         message: str | None = None, endpoint: str | None = None, log=print) -> PushResult:
    """Upload the release in ``out`` to the dataset repo ``repo_id`` (see the module docstring).

    ``endpoint``: the Hub's URL; default ``HF_ENDPOINT`` as set now, else huggingface_hub's default.
    """
    from huggingface_hub import (
        CommitOperationAdd,
        CommitOperationDelete,
        HfApi,
        get_token,
    )
    from huggingface_hub import constants as hf_constants

    out = Path(out)
    local = release_files(out)
    _check_repo_id(repo_id)
    revision = revision or DEFAULT_REVISION
    endpoint = (endpoint or os.environ.get("HF_ENDPOINT") or hf_constants.ENDPOINT).rstrip("/")
    token = get_token()
    result = PushResult(repo_id, revision, endpoint, [], dry_run=dry_run)
    where = f"datasets/{repo_id}@{revision}"
    if hf_constants.HF_HUB_OFFLINE and not dry_run:  # no request could succeed: say so before asking for a token
        raise UserError(f"cannot push to {where}: HF_HUB_OFFLINE is set, so nothing may reach the Hub",
                        fix="on a machine with network access, unset HF_HUB_OFFLINE and run the same command again "
                        "(`--dry-run` lists what a push would upload, offline too)")
    if not token and not dry_run:
        raise UserError(f"no Hugging Face token: cannot push to {where}", fix=LOGIN_FIX)
    # token=False: read anonymously (a public repo) instead of letting HfApi look for a token again.
    api = HfApi(endpoint=endpoint, token=token or False)

    def hub_error(exc: Exception, doing: str) -> UserError:
        return _hub_error(exc, doing, repo_id, revision, endpoint, token)

    if dry_run:
        try:
            _, remote, _ = _remote_state(api, repo_id, revision)
        except Exception as exc:  # a dry run plans every file as new when the repo cannot be read
            if not _is_hub_error(exc):
                raise
            error = hub_error(exc, "read")
            result.remote_error = error.message + (f"\n  fix: {error.fix}" if error.fix else "")
            remote = None
        if not token:
            result.notes.append(f"no Hugging Face token: the repo was read anonymously, and a push needs one "
                                f"({LOGIN_FIX})")
        result.plan = plan_push(local, remote)
        return result

    try:
        log(f"push: creating or checking {where}")
        api.create_repo(repo_id, repo_type=REPO_TYPE, private=True if private else None, exist_ok=True)
        if revision != DEFAULT_REVISION:
            api.create_branch(repo_id, branch=revision, repo_type=REPO_TYPE, exist_ok=True)
        sha, remote, is_private = _remote_state(api, repo_id, revision)
    except Exception as exc:
        if not _is_hub_error(exc):
            raise
        raise hub_error(exc, "create or read") from None
    if private and is_private is False:
        result.notes.append(f"{repo_id} already exists and is public: --private only applies when the push "
                            "creates the repo; change its visibility in the repo settings on the Hub")
    result.plan = plan_push(local, remote)
    uploads, deletions = result.uploads, result.deletions
    if not uploads and not deletions:
        return result

    operations = [CommitOperationAdd(path_in_repo=e.path, path_or_fileobj=str(local[e.path])) for e in uploads]
    operations += [CommitOperationDelete(path_in_repo=e.path) for e in deletions]
    deleting = f" and deleting {_count(len(deletions), 'file')}" if deletions else ""
    log(f"push: uploading {_count(len(uploads), 'file')} ({_size(sum(e.size for e in uploads))}){deleting} "
        f"to {where} in one commit")
    try:
        info = api.create_commit(repo_id, operations, commit_message=message or _default_message(out),
                                 commit_description=_description(out), repo_type=REPO_TYPE, revision=revision,
                                 parent_commit=sha)
    except Exception as exc:
        if not _is_hub_error(exc):
            raise
        raise hub_error(exc, "commit to") from None
    result.commit_url = info.commit_url
    return result


def format_result(result: PushResult, out: Path | str) -> str:
    """The plan (one line per file) and a summary, for the console."""
    where = f"datasets/{result.repo_id}@{result.revision}"
    lines = [f"{'dry run: ' if result.dry_run else ''}push {out} -> {where} ({result.repo_url})"]
    if result.remote_error:
        lines.append(f"{result.remote_error}\ncould not read the remote: every file is listed as add")
    width = max([len(e.path) for e in result.plan] + [10])
    lines += [f"  {e.action:<9}  {e.path:<{width}}  {_size(e.size):>9}" for e in result.plan]
    uploads, deletions, unchanged = result.uploads, result.deletions, result.entries("unchanged")
    counts = (f"{len(uploads)} to upload ({_size(sum(e.size for e in uploads))}), "
              f"{len(deletions)} to delete, {len(unchanged)} unchanged")
    if result.dry_run:
        lines.append(f"{counts}; nothing was changed (dry run)")
    elif not uploads and not deletions:
        lines.append(f"nothing to upload: {where} already has this release ({len(unchanged)} files unchanged); "
                     "no commit made")
    else:
        lines.append(f"uploaded {_count(len(uploads), 'file')} ({sum(e.size for e in uploads)} bytes), deleted "
                     f"{len(deletions)}, {len(unchanged)} unchanged\ncommit: {result.commit_url}")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _remote_state(api, repo_id: str, revision: str) -> tuple[str | None, dict, bool | None]:
    """(commit sha of ``revision``, repo path -> RepoFile at that commit, whether the repo is private)."""
    from huggingface_hub.hf_api import RepoFile

    info = api.dataset_info(repo_id, revision=revision)
    # List the commit that was read, so the commit made later (parent_commit=sha) applies to exactly this state.
    tree = api.list_repo_tree(repo_id, recursive=True, revision=info.sha or revision, repo_type=REPO_TYPE)
    return info.sha, {f.path: f for f in tree if isinstance(f, RepoFile)}, info.private


def _check_repo_id(repo_id: str) -> None:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
        ok = repo_id.count("/") == 1
    except HFValidationError:
        ok = False
    if not ok:
        raise UserError(f"--repo-id {repo_id!r} is not a Hub repo id", fix="use OWNER/NAME, e.g. --repo-id "
                        "your-user/fer-synth-demo (OWNER: your user name or an organisation you can write to)")


def _is_hub_error(exc: BaseException) -> bool:
    """Errors that come from the Hub or the network, as opposed to bugs (which keep their traceback)."""
    from huggingface_hub.errors import HfHubHTTPError

    if isinstance(exc, RuntimeError) and exc.__cause__ is not None and str(exc).startswith("Error while uploading"):
        return _is_hub_error(exc.__cause__)  # huggingface_hub wraps LFS upload errors this way
    if isinstance(exc, (HfHubHTTPError, ConnectionError, TimeoutError)):  # incl. OfflineModeIsEnabled
        return True
    if isinstance(exc, ValueError) and "README.md" in str(exc):  # the Hub's check of the card's metadata
        return True
    # Transport errors of the HTTP client huggingface_hub uses (httpx2, httpx or requests, by version).
    return type(exc).__module__.split(".")[0] in ("httpx2", "httpx", "requests", "urllib3")


def _hub_error(exc: Exception, doing: str, repo_id: str, revision: str, endpoint: str,
               token: str | None) -> UserError:
    """A ``UserError`` naming the repo and a fix; nothing in it comes from the token."""
    from huggingface_hub.errors import (
        HfHubHTTPError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    if isinstance(exc, RuntimeError) and exc.__cause__ is not None:
        exc = exc.__cause__
    where = f"datasets/{repo_id}@{revision}"
    cannot = f"cannot {doing} {where}"
    if isinstance(exc, OfflineModeIsEnabled):
        return UserError(f"{cannot}: HF_HUB_OFFLINE is set", fix="unset HF_HUB_OFFLINE on a machine with network "
                         "access and run the same command again")
    owner = repo_id.split("/")[0]
    if isinstance(exc, RevisionNotFoundError):
        return UserError(f"{cannot}: branch {revision!r} does not exist",
                         fix="check --revision (a push without --dry-run creates the branch from main)")
    if isinstance(exc, RepositoryNotFoundError):
        creates = " (a push without --dry-run creates the repo)" if doing == "read" else ""
        return UserError(f"{cannot}: the dataset repo does not exist or this token cannot see it",
                         fix=f"check --repo-id{creates}; for a private repo of {owner!r}, log in with a token "
                         "that can access it (`hf auth login`, or set HF_TOKEN)")
    if isinstance(exc, HfHubHTTPError):
        status = exc.response.status_code if exc.response is not None else None
        detail = _redact(exc.server_message or "", token).strip().splitlines()
        detail = f" ({detail[0][:200]})" if detail else ""
        if status == 401:
            return UserError(f"{cannot}: the Hub rejected the token (401 Unauthorized){detail}",
                             fix=f"the token is invalid or expired: {LOGIN_FIX}")
        if status == 403:
            return UserError(f"{cannot}: the token may not write there (403 Forbidden){detail}",
                             fix=f"use a token with write access to {owner!r} ({LOGIN_FIX}), or push to your own "
                             "namespace")
        if status in (409, 412):
            return UserError(f"{cannot}: the branch moved while pushing ({status}){detail}",
                             fix="someone else pushed at the same time: run the same command again")
        return UserError(f"{cannot}: the Hub answered {status}{detail}",
                         fix="check the message; run the same command again (unchanged files are skipped)")
    if isinstance(exc, ValueError):
        return UserError(f"{cannot}: the Hub refused README.md's metadata: {_redact(str(exc), token)}",
                         file="README.md", fix="fix the card's YAML front matter (cards/card.py writes it)")
    return UserError(f"{cannot}: could not reach {endpoint} ({type(exc).__name__})",
                     fix="check the network connection (and HF_ENDPOINT if set), then run the same command again")


def _redact(text: str, token: str | None) -> str:
    return text.replace(token, "***") if token else text


def _stats(out: Path) -> dict:
    try:
        return json.loads((out / "stats.json").read_text())
    except (OSError, ValueError):
        return {}


def _default_message(out: Path) -> str:
    stats = _stats(out)
    name = " ".join(str(stats[k]) for k in ("dataset", "version") if stats.get(k))
    return f"Upload {name or out.name} release"


def _description(out: Path) -> str:
    stats = _stats(out)
    parts = [f"Built by fer-synth {stats['tool_version']}" if stats.get("tool_version") else "Built by fer-synth"]
    if stats.get("fingerprint"):
        parts.append(f"build fingerprint {stats['fingerprint']}")
    return ", ".join(parts) + "."


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _size(n: float) -> str:
    """Bytes in decimal units, as the Hub shows them."""
    if n < 1000:
        return f"{int(n)} B"
    for unit in ("kB", "MB", "GB", "TB"):
        n /= 1000
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}"
