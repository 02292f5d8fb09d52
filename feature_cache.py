"""The on-disk feature cache: one folder per (file, tokenizer, label map, length, marker) key, holding the raw column
files, titles.json and meta.json (sizes, checksums, figures); built in a temporary folder and published with one
atomic rename (safe for processes and users sharing it), memory-mapped on reuse, rebuilt when absent, stale or
corrupted, and moved to the per-user cache folder when the asked one cannot be written.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import uuid
import zlib
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Tuple

from feature_store import ColumnSink, DocREFeatures, check_columns, compute_stats, open_columns
from utils import current_umask

logger = logging.getLogger(__name__)

# bump when the features of the same input change (2: sentence spans and evidence; 3: words read before truncation)
FEATURE_FORMAT_VERSION = 3

ABANDONED_SECONDS = 3600  # a temporary build folder none of whose files changed for this long was left by a killed run

# fills a sink with the features of a file; returns (titles, extra figures for stats)
Build = Callable[[ColumnSink], Tuple[List[str], Dict[str, Any]]]


def cache_key(file_sha256: str, enc: Any, rel2id: Dict[str, int], max_seq_length: int,
              entity_marker: Optional[str], skip_unknown: bool = False) -> str:
    """Hash of everything the features depend on: file content, tokenizer (`enc`, a word_tokenizer.WordTokenizer), label
    map, length, marker, whether labels of unknown relations are left out, format."""
    parts = {
        "file": file_sha256,
        "tokenizer": getattr(enc.tokenizer, "name_or_path", type(enc.tokenizer).__name__),
        "vocab_size": len(enc.tokenizer),
        "tokenizer_sha256": enc.fingerprint(),
        "rel2id": sorted(rel2id.items()),
        "max_seq_length": max_seq_length,
        "entity_marker": entity_marker,
        "format_version": FEATURE_FORMAT_VERSION,
        **({"skip_unknown_relations": True} if skip_unknown else {}),  # old keys stay valid
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode("utf-8")).hexdigest()


def load_cache(folder: Path, key: str) -> DocREFeatures:
    """The features cached in `folder`; ValueError when its key, checksums or column lengths do not match."""
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if meta.get("key") != key or meta.get("format_version") != FEATURE_FORMAT_VERSION:
        raise ValueError("its key does not match")
    titles_bytes = (folder / "titles.json").read_bytes()
    titles = json.loads(titles_bytes)
    cols = open_columns(folder, meta)
    check_columns(cols, meta, titles_bytes)
    if len(titles) != len(cols["doc_n_tokens"]):
        raise ValueError("titles and columns disagree")
    return DocREFeatures(cols, titles, meta["stats"], path=meta["source"], cache_path=str(folder))


def write_cache(folder: Path, key: str, source: str, build: Build, max_len: int) -> bool:
    """Run `build` into a temporary folder beside `folder`, then publish it with one atomic rename (`publish`);
    False when a stale cache in the way cannot be replaced (permissions)."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    sweep_abandoned(folder)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        sink = ColumnSink(tmp)
        try:
            titles, extra = build(sink)
        finally:
            sink.close()
        titles_bytes = json.dumps(titles, ensure_ascii=False).encode("utf-8")
        meta = {"key": key, "format_version": FEATURE_FORMAT_VERSION, "source": source, "sizes": sink.sizes,
                "crc32": sink.crc32, "crc32_titles": zlib.crc32(titles_bytes)}
        meta["stats"] = {**compute_stats(open_columns(tmp, meta), max_len), **extra}
        (tmp / "titles.json").write_bytes(titles_bytes)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes 0700; the mode mkdir would give
        return publish(tmp, folder, key)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def sweep_abandoned(folder: Path, idle_seconds: float = ABANDONED_SECONDS) -> int:
    """Remove the temporary folders of `folder` (builds and stale caches renamed aside) that no file has changed in
    for `idle_seconds`: a run killed mid-build leaves one, and a live build writes its columns all along. The
    number removed."""
    now, removed = time.time(), 0
    for tmp in folder.parent.glob(f".{folder.name}.*.tmp"):
        try:
            newest = max([tmp.stat().st_mtime] + [f.stat().st_mtime for f in tmp.iterdir()])
        except OSError:
            continue  # published, removed or unreadable meanwhile: not ours to judge
        if now - newest >= idle_seconds:
            shutil.rmtree(tmp, ignore_errors=True)
            removed += not tmp.exists()
    if removed:
        logger.info("removed %d abandoned temporary folder(s) of feature cache %s", removed, folder)
    return removed


def publish(tmp: Path, folder: Path, key: str, tries: int = 3) -> bool:
    """Rename the finished `tmp` onto `folder`. A complete cache with the same key already there (another process
    published it first) is kept and `tmp` dropped; a stale or corrupted one is renamed aside, then removed; False
    (one warning) when that is not allowed."""
    for _ in range(tries):
        try:
            os.rename(tmp, folder)
            return True
        except OSError as e:
            if not folder.exists():
                raise
            if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        if load_or_none(folder, key, quiet=True) is not None:
            return True  # the same features, published by another process: used, never deleted
        aside = folder.with_name(f".{folder.name}.{uuid.uuid4().hex[:8]}.old.tmp")
        try:
            os.rename(folder, aside)
        except FileNotFoundError:
            continue  # another process moved it first
        except PermissionError:
            logger.warning("feature cache %s is stale or incomplete and this user may not replace it; the features "
                           "are kept in memory instead", folder)
            return False
        shutil.rmtree(aside, ignore_errors=True)
    raise OSError(errno.EEXIST, f"the feature cache {folder} kept changing under this process")


def user_cache_dir() -> Path:
    """The per-user feature cache folder: $XDG_CACHE_HOME/docre, else ~/.cache/docre."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "docre"


def unwritable(folder: Path) -> Optional[str]:
    """Why a cache cannot be built in `folder` (created if missing), or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe.", dir=folder))  # what write_cache does first
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def resolve_cache_dir(cache_dir: Optional[str | os.PathLike]) -> Optional[Path]:
    """Where to build features: `cache_dir` when it can be written, else the per-user cache folder, else None
    (cache off); one warning when falling back. Call once per run and pass the result on to read_docred."""
    if cache_dir is None:
        return None
    wanted = Path(cache_dir)
    why = unwritable(wanted)
    if why is None:
        return wanted
    fallback = user_cache_dir()
    why_not = unwritable(fallback) if fallback != wanted else why
    if why_not is None:
        logger.warning("feature cache folder %s cannot be written (%s); caching features in %s instead",
                       wanted, why, fallback)
        return fallback
    logger.warning("feature cache folder %s cannot be written (%s), nor the per-user folder %s (%s); features are "
                   "built in memory, without a cache", wanted, why, fallback, why_not)
    return None


def unreadable(folder: Path) -> Optional[str]:
    """Why a cache folder that exists cannot be read (permissions: another user's, or its mode), or None."""
    meta = folder / "meta.json"
    if os.access(folder, os.R_OK | os.X_OK) and (not meta.exists() or os.access(meta, os.R_OK)):
        return None  # readable (a missing meta.json is an incomplete cache, rebuilt)
    owner = "another user's folder" if folder.stat().st_uid != os.getuid() else "its mode forbids reading"
    return f"permission denied: {owner}"


def load_or_none(folder: Path, key: str, quiet: bool = False) -> Optional[DocREFeatures]:
    """The cache in `folder`, or None when it is absent or unreadable (then it is rebuilt, never trusted)."""
    if not folder.exists():
        return None
    try:
        return load_cache(folder, key)
    except Exception as e:
        if not quiet:
            logger.warning("feature cache %s is corrupted or incomplete (%s); rebuilding it", folder, e)
        return None


def cached_features(cache_dir: str | os.PathLike, name: str, key: str, source: str, build: Build,
                    max_len: int) -> Optional[DocREFeatures]:
    """The features cached as `name` under `cache_dir` (read even from a read-only folder), else built by `build`
    into the folder `resolve_cache_dir` picks and memory-mapped from there; None when no folder can be written.
    A cache folder this user cannot read is left alone (one warning) and the per-user folder used instead."""
    wanted = Path(cache_dir)
    blocked = (wanted / name).exists() and unreadable(wanted / name)
    if blocked:
        fallback = user_cache_dir()
        base = None if fallback == wanted or unwritable(fallback) else fallback
        logger.warning("feature cache %s cannot be read (%s); %s", wanted / name, blocked,
                       f"caching features in {base} instead" if base else "features are built in memory")
    else:
        features = load_or_none(wanted / name, key)
        if features is not None:
            return features
        base = resolve_cache_dir(cache_dir)
    if base is None:
        return None
    features = load_or_none(base / name, key) if base != wanted else None
    if features is None and write_cache(base / name, key, source, build, max_len):
        features = load_cache(base / name, key)
    return features
