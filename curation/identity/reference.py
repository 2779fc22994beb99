"""``build-dataset index-reference``: embed the primary face of every reference photo into a FAISS index.

Incremental: an image is keyed by (source name, sha256 of its bytes); images
already embedded or skipped are not read again (a folder file whose size and
mtime are unchanged is not even re-hashed), new ones are embedded and appended
batch by batch, then the FAISS index is rebuilt from the stored vectors. An
index built with another backend, model or face policy is refused. Images
without a face, unreadable or duplicate ones are counted by reason and listed in
``skipped.jsonl``; none stops the run.
"""
from __future__ import annotations

import hashlib
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from builder.core.errors import UserError
from curation.identity.folder import FAISS, FORMAT, ReferenceFolder

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
PHASH_NOTE = "curation.hashing.phash of the whole decoded image, 16 hex digits (int(text, 16))"


@dataclass
class Item:
    """One listed reference image; ``load()`` returns its bytes."""

    source: str
    item: str
    sha256: str | None
    load: Callable[[], bytes]
    dataset_row: int | None = None
    file_size: int | None = None
    mtime_ns: int | None = None
    error: str | None = None

    @property
    def id(self) -> str:
        return f"{self.source}:{self.item}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def list_folder(name: str, folder: Path, recursive: bool, known_files: dict, field: str,
                file: str | None, progress: bool = False) -> tuple[list[Item], str]:
    """The folder's images (sorted relative paths) and the listing's sha256 over (path, content sha256)."""
    if not folder.is_dir():
        raise UserError(f"{field}.folder '{folder}' is not a folder", file=file,
                        fix="point it at a folder of face photos (relative paths start where you run the command)")
    pattern = folder.rglob("*") if recursive else folder.glob("*")
    paths = sorted(p for p in pattern if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(folder).parts))
    from tqdm import tqdm

    items, digest = [], hashlib.sha256()
    for path in tqdm(paths, desc=f"list {name}", unit="img", disable=not progress, file=sys.stderr):
        rel = path.relative_to(folder).as_posix()
        stat = path.stat()
        cached = known_files.get((name, rel))
        item = Item(name, rel, None, path.read_bytes, file_size=stat.st_size, mtime_ns=stat.st_mtime_ns)
        if cached and cached[:2] == (stat.st_size, stat.st_mtime_ns):
            item.sha256 = cached[2]
        else:
            try:
                item.sha256 = _sha(path.read_bytes())
            except OSError as exc:
                item.error = f"{type(exc).__name__}: {exc}"
        digest.update(f"{rel}\t{item.sha256}\n".encode())
        items.append(item)
    return items, digest.hexdigest()


def list_dataset(spec, field: str, file: str | None, progress: bool = False) -> tuple[list[Item], str]:
    """The rows of a saved dataset (image bytes read once for their sha256) and the listing's sha256."""
    from datasets import Image

    from builder.core.saved_datasets import open_split

    columns = {"image_column": spec.image_column, **({"id_column": spec.id_column} if spec.id_column else {})}
    ds = open_split(spec.dataset, spec.split, columns, field, file=file)
    if not isinstance(ds.features[spec.image_column], Image):
        raise UserError(f"{field}.image_column '{spec.image_column}' is not an Image column "
                        f"({ds.features[spec.image_column]})", file=file, fix="name the dataset's Image column")
    from tqdm import tqdm

    ds = ds.cast_column(spec.image_column, Image(decode=False))
    items = []
    for i, row in enumerate(tqdm(ds, desc=f"list {spec.name}", unit="img", disable=not progress, file=sys.stderr)):
        value = row[spec.image_column] or {}
        data = value.get("bytes")
        if data is None and value.get("path"):
            data = Path(value["path"]).read_bytes() if Path(value["path"]).is_file() else None
        ident = str(row[spec.id_column]) if spec.id_column else str(i)
        item = Item(spec.name, ident, _sha(data) if data is not None else None, (lambda d=data: d), dataset_row=i)
        if data is None:
            item.error = "row has no image bytes"
        items.append(item)
    ident = {"fingerprint": ds._fingerprint, "rows": len(ds), "split": spec.split, "column": spec.image_column,
             "id_column": spec.id_column}
    return items, _sha(json.dumps(ident, sort_keys=True).encode())


def _identity(config) -> dict:
    """What must match between runs on one output_dir (checked before any model loads)."""
    from curation.identity.embedders import expected_sha256

    return {"backend": config.backend, "model_sha256": expected_sha256(config.backend, config.model),
            "faces": {"min_score": config.faces.min_score, "min_size": config.faces.min_size}}


def check_identity(info: dict, wanted: dict, file: str) -> None:
    """Refuse to add to an index built with another backend, model or face policy."""
    have = {"backend": info["backend"], "model_sha256": info["model"]["sha256"], "faces": info["faces"]}
    diffs = [f"{key}: index has {have[key]}, config asks for {wanted[key]}" for key in have if have[key] != wanted[key]]
    if diffs:
        raise UserError("output_dir holds a reference index built differently (" + "; ".join(diffs) + ")", file=file,
                        fix="use the same backend, model and faces settings as the index, or a new output_dir "
                            "(embeddings of different models cannot be mixed)")


def index_reference(config, source: str | None = None, progress: bool = True,
                    log: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> dict:
    """Bring ``config.output_dir`` up to date with ``config.sources``; returns a summary of this run."""
    folder = ReferenceFolder(config.out)
    wanted = _identity(config)
    info = folder.info()
    if info is not None:
        check_identity(info, wanted, source or str(folder.path("index.json")))
        folder.cut_to(info["count"], info["skipped"], info["dim"])
    else:
        folder.reset()

    metadata, skipped = (folder.metadata(info["count"]), folder.skipped(info["skipped"])) if info else ([], [])
    known = {(m["source"], m["sha256"]): m["id"] for m in metadata + skipped if m.get("sha256")}
    known_files = {(m["source"], m["item"]): (m.get("file_size"), m.get("mtime_ns"), m["sha256"])
                   for m in metadata + skipped if m.get("sha256") and m.get("file_size") is not None}

    listings, pending, duplicates, first = {}, [], [], {}
    for i, spec in enumerate(config.sources):
        field = f"sources[{i}] ({spec.name})"
        if spec.folder is not None:
            items, digest = list_folder(spec.name, Path(spec.folder), spec.recursive, known_files, field, source,
                                        progress)
        else:
            items, digest = list_dataset(spec, field, source, progress)
        listings[spec.name] = {"kind": "folder" if spec.folder is not None else "dataset",
                               "location": spec.folder or spec.dataset, "listing_sha256": digest,
                               "images": len(items)}
        for item in items:
            key = (item.source, item.sha256)
            if item.sha256 is not None and key in known:
                continue  # embedded or skipped by an earlier run
            if item.sha256 is not None and key in first:
                duplicates.append(_skip(item, "duplicate", f"same bytes as {first[key]}"))
                continue
            first.setdefault(key, item.id)
            pending.append(item)
    if not any(v["images"] for v in listings.values()):
        raise UserError("the sources hold no image", file=source,
                        fix=f"put face photos ({', '.join(IMAGE_SUFFIXES)}) in the folders, or fix the paths")
    log(f"reference: {sum(v['images'] for v in listings.values())} images in {len(listings)} source(s); "
        f"{len(pending)} new, {len(duplicates)} duplicate(s) of new ones")

    run = Counter()
    if pending or info is None:
        from curation.identity.embedders import load_embedder

        embedder = load_embedder(config.backend, config.model)
        if info is None:
            info = {"format": FORMAT, "backend": config.backend, "model": embedder.describe(), "dim": embedder.dim,
                    "faces": wanted["faces"], "count": 0, "skipped": 0, "skipped_reasons": {}, "sources": {},
                    "index": None, "phash": PHASH_NOTE}
    info["sources"] = {**info["sources"], **listings}
    if pending:
        _embed_all(folder, info, pending, duplicates, embedder, config, run, progress)

    built = _build_faiss(folder, info, config.index, log)
    folder.write_info(info)
    summary = {"embedded": run.pop("embedded", 0), "skipped": dict(sorted(run.items())), "count": info["count"],
               "index": info["index"]["params"] if info["index"] else None, "rebuilt": built}
    log(f"reference index {config.out}: {info['count']} faces ({summary['embedded']} new), skipped this run: "
        f"{summary['skipped'] or 'none'}; {info['index']['params']['type'] if info['index'] else 'no'} index")
    return summary


def _embed_all(folder: ReferenceFolder, info: dict, pending: list[Item], duplicates: list[dict], embedder,
               config, run: Counter, progress: bool) -> None:
    """Embed ``pending`` batch by batch, committing ``info`` after each; duplicates go with the last batch."""
    from tqdm import tqdm

    from curation.identity.images import load_detector

    detector, policy = load_detector(config.faces.min_score, config.faces.min_size, _device(config.device))
    reasons = Counter(info["skipped_reasons"])
    batches = list(_batches(pending, config.batch_size))
    with tqdm(total=len(pending), desc="embed reference faces", unit="img", disable=not progress,
              file=sys.stderr) as bar:
        for n, batch in enumerate(batches):
            vectors, meta, skips = [], [], []
            for item in batch:
                outcome = _embed_one(item, embedder, detector, policy)
                if isinstance(outcome, tuple):
                    vectors.append(outcome[0])
                    meta.append({**outcome[1], "row": info["count"] + len(meta)})
                else:
                    skips.append(outcome)
                bar.update(1)
            if n == len(batches) - 1:
                skips += duplicates  # only once every original is committed (a rerun keys on them)
            folder.append(np.asarray(vectors, np.float32).reshape(-1, embedder.dim), meta, skips)
            info["count"] += len(meta)
            info["skipped"] += len(skips)
            reasons.update(s["reason"] for s in skips)
            run.update(embedded=len(meta))
            run.update(s["reason"] for s in skips)
            info["skipped_reasons"] = dict(sorted(reasons.items()))
            folder.write_info(info)


def _device(requested: str) -> str:
    from builder.models.diffusion import resolve_device

    return resolve_device(requested)


def _batches(items: list, size: int) -> Iterator[list]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _skip(item: Item, reason: str, detail: str) -> dict:
    return {"id": item.id, "source": item.source, "item": item.item, "dataset_row": item.dataset_row,
            "sha256": item.sha256, "reason": reason, "detail": detail, "file_size": item.file_size,
            "mtime_ns": item.mtime_ns}


def _embed_one(item: Item, embedder, detector, policy) -> tuple[np.ndarray, dict] | dict:
    """(vector, metadata line) for an image with a face, else its skipped line."""
    from curation.faces.detect import find_face
    from curation.hashing import phash
    from curation.identity.images import decode_rgb

    if item.error:
        return _skip(item, "unreadable_image", item.error)
    try:
        image = decode_rgb(item.load())
    except Exception as exc:  # any undecodable file is counted and skipped, never a crash
        return _skip(item, "unreadable_image", f"{type(exc).__name__}: {exc}")
    try:
        face = find_face(detector, policy, image)
        if face is None:  # hashed all the same: dedupe against the reference compares whole images
            return {**_skip(item, "no_face", f"no face with score >= {policy.min_score} and side >= "
                                             f"{policy.min_size:g} px"), "phash": f"{phash(image):016x}"}
        vector = embedder.embed(image, face)
    except Exception as exc:  # a failing image is counted and skipped, never a crash
        return _skip(item, "error", f"{type(exc).__name__}: {exc}")
    line = {"id": item.id, "source": item.source, "item": item.item, "dataset_row": item.dataset_row,
            "box": face["box"], "landmarks": face["landmarks"], "score": face["score"], "faces": face["count"],
            "sha256": item.sha256,
            "phash": f"{phash(image):016x}", "width": int(image.shape[1]), "height": int(image.shape[0]),
            "file_size": item.file_size, "mtime_ns": item.mtime_ns}
    return vector, line


def _build_faiss(folder: ReferenceFolder, info: dict, spec, log) -> bool:
    """(Re)build index.faiss from the stored vectors unless it is current; True when built."""
    from curation.identity.index import build_index, resolve_params, write_index

    params = resolve_params(spec, info["count"]).as_dict()
    current = info.get("index")
    if current and current["params"] == params and current["ntotal"] == info["count"] \
            and folder.path(FAISS).is_file():
        return False
    if info["count"] == 0:
        info["index"] = None
        folder.path(FAISS).unlink(missing_ok=True)
        return False
    from curation.identity.index import IndexParams

    log(f"building the {params['type']} index over {info['count']} vectors")
    index = build_index(folder.vectors(info["count"], info["dim"]), IndexParams(**params))
    write_index(index, folder.path(FAISS))
    from builder.models.diffusion import file_sha256

    info["index"] = {"params": params, "ntotal": int(index.ntotal), "file": FAISS,
                     "sha256": file_sha256(folder.path(FAISS))}
    return True
