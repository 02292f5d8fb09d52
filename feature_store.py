"""DocRED features held column-wise: flat NumPy arrays per corpus (in memory or memory-mapped from the cache).

`ColumnSink` collects the columns chunk by chunk (in memory, or appended to raw files); `DocREFeatures` holds a
corpus of them and assembles one document's feature dict on access (the fields: prepro's docstring).
"""
from __future__ import annotations

import json
import os
import zlib
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np

# column name -> dtype of the flat arrays that hold a corpus of features
COLUMNS: Dict[str, str] = {
    "input_ids": "int32",  # [T] all documents' (truncated) token ids, concatenated
    "doc_n_tokens": "int32",  # [D] length of each document's input_ids
    "doc_length": "int32",  # [D] length before truncation
    "doc_n_entities": "int32",  # [D]
    "doc_n_labels": "int32",  # [D] positive (pair, relation) facts
    "doc_n_truncated_mentions": "int32",  # [D]
    "doc_n_truncated_entities": "int32",  # [D] entities with no mention left after truncation
    "doc_n_sents": "int32",  # [D]
    "doc_n_read_words": "int32",  # [D] words read whole, with their markers (all of them unless truncated)
    "sent_start": "int32",  # [S] token index of each sentence's first token (see sent_pos in prepro's docstring)
    "sent_end": "int32",  # [S] exclusive
    "entity_n_mentions": "int32",  # [E] kept mentions per entity
    "mention_start": "int32",  # [M] token index of the start marker (or first sub-token when markers are off)
    "mention_end": "int32",  # [M] exclusive end, after the end marker
    "mention_sent": "int32",  # [M] sentence id
    "label_pair": "int32",  # [L] index into the document's hts
    "label_rel": "int32",  # [L] relation id >= 1
    "label_n_evidence": "int32",  # [L] evidence sentences of each label
    "evidence_sent": "int32",  # [V] their sentence ids, label after label
}
RAGGED = {k for k in COLUMNS if not k.startswith("doc_")}  # columns with a variable number of values per document


def pair_index(n: int) -> np.ndarray:
    """Every ordered entity pair h != t, h-major: [n * (n - 1), 2]."""
    h, t = np.divmod(np.arange(n * n, dtype=np.int64), n)
    keep = h != t
    return np.stack([h[keep], t[keep]], axis=1)


class ColumnSink:
    """Collects feature columns chunk by chunk, in memory or appended to raw files in a folder."""

    def __init__(self, folder: Optional[Path] = None):
        self.folder = folder
        self.parts: Dict[str, List[np.ndarray]] = {k: [] for k in COLUMNS}
        self.sizes = dict.fromkeys(COLUMNS, 0)
        self.crc32 = dict.fromkeys(COLUMNS, 0)  # detects a corrupted cache file on reload
        self.files = {k: open(folder / f"{k}.bin", "wb") for k in COLUMNS} if folder else None

    def add(self, **cols: np.ndarray) -> None:
        for name, arr in cols.items():
            arr = np.ascontiguousarray(arr, dtype=COLUMNS[name])
            self.sizes[name] += len(arr)
            self.crc32[name] = zlib.crc32(memoryview(arr).cast("B"), self.crc32[name])
            if self.files:
                arr.tofile(self.files[name])
            else:
                self.parts[name].append(arr)

    def close(self) -> Optional[Dict[str, np.ndarray]]:
        """The columns (memory mode), or None after flushing the files (disk mode)."""
        if self.files:
            for f in self.files.values():
                f.flush()
                os.fsync(f.fileno())
                f.close()
            return None
        return {k: np.concatenate(v) if v else np.zeros(0, dtype=COLUMNS[k]) for k, v in self.parts.items()}


def compute_stats(cols: Dict[str, np.ndarray], max_len: int) -> Dict[str, Any]:
    """Corpus figures: documents, positive/negative pairs, token lengths, truncation."""
    n_docs = len(cols["doc_n_tokens"])
    n_ent = cols["doc_n_entities"].astype(np.int64)
    doc_of_label = np.repeat(np.arange(n_docs), cols["doc_n_labels"])
    positive = len(np.unique(np.stack([doc_of_label, cols["label_pair"].astype(np.int64)]), axis=1).T) \
        if len(doc_of_label) else 0
    lengths = cols["doc_length"].astype(np.int64)
    return {
        "documents": n_docs,
        "documents_without_entities": int((n_ent == 0).sum()),
        "entities": int(n_ent.sum()),
        "pairs": int((n_ent * (n_ent - 1)).sum()),
        "positive_pairs": int(positive),
        "negative_pairs": int((n_ent * (n_ent - 1)).sum()) - int(positive),
        "positive_labels": int(len(cols["label_rel"])),
        "token_length_mean": float(lengths.mean()) if n_docs else 0.0,
        "token_length_p95": float(np.percentile(lengths, 95)) if n_docs else 0.0,
        "token_length_max": int(lengths.max()) if n_docs else 0,
        "max_seq_length": max_len,
        "truncated_documents": int((lengths > max_len).sum()),
        "truncated_mentions": int(cols["doc_n_truncated_mentions"].sum()),
        "truncated_entities": int(cols["doc_n_truncated_entities"].sum()),
    }


def open_columns(folder: Path, meta: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Memory-map the column files of a cache folder, checking each file's size against meta.json."""
    cols = {}
    for name, dtype in COLUMNS.items():
        size = meta["sizes"][name]
        file = folder / f"{name}.bin"
        if file.stat().st_size != size * np.dtype(dtype).itemsize:
            raise ValueError(f"{file.name} has {file.stat().st_size} bytes, expected {size} {dtype} values")
        cols[name] = np.memmap(file, dtype=dtype, mode="r", shape=(size,)) if size else np.zeros(0, dtype=dtype)
    return cols


def check_columns(cols: Dict[str, np.ndarray], meta: Dict[str, Any], titles_bytes: bytes) -> None:
    """Raise ValueError when a cache's columns do not match their checksums or each other."""
    for name, arr in cols.items():
        if zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B")) != meta["crc32"][name]:
            raise ValueError(f"{name}.bin does not match its checksum")
    if zlib.crc32(titles_bytes) != meta["crc32_titles"]:
        raise ValueError("titles.json does not match its checksum")
    n_docs = len(cols["doc_n_tokens"])
    consistent = (all(len(cols[k]) == n_docs for k in COLUMNS if k.startswith("doc_"))
                  and cols["doc_n_tokens"].sum(dtype=np.int64) == len(cols["input_ids"])
                  and cols["doc_n_entities"].sum(dtype=np.int64) == len(cols["entity_n_mentions"])
                  and cols["entity_n_mentions"].sum(dtype=np.int64) == len(cols["mention_start"])
                  and cols["doc_n_labels"].sum(dtype=np.int64) == len(cols["label_rel"])
                  and cols["doc_n_sents"].sum(dtype=np.int64) == len(cols["sent_start"]) == len(cols["sent_end"])
                  and cols["label_n_evidence"].sum(dtype=np.int64) == len(cols["evidence_sent"])
                  and len(cols["label_n_evidence"]) == len(cols["label_rel"]))
    if not consistent:
        raise ValueError("column lengths are inconsistent")


class DocREFeatures(Sequence):
    """The features of one file, stored column-wise; indexing returns one feature dict (see prepro's docstring)."""

    def __init__(self, cols: Dict[str, np.ndarray], titles: List[str], stats: Dict[str, Any],
                 path: Optional[str] = None, cache_path: Optional[str] = None):
        self.cols = cols
        self.titles = titles
        self.stats = stats
        self.path = path
        self.cache_path = cache_path
        off = lambda counts: np.concatenate([[0], np.cumsum(counts, dtype=np.int64)])  # noqa: E731
        self.token_offsets = off(cols["doc_n_tokens"])  # [D + 1]
        self.entity_offsets = off(cols["doc_n_entities"])  # [D + 1]
        self.mention_offsets = off(cols["entity_n_mentions"])  # [E + 1]
        self.label_offsets = off(cols["doc_n_labels"])  # [D + 1]
        self.sent_offsets = off(cols["doc_n_sents"])  # [D + 1]
        self.evidence_offsets = off(cols["label_n_evidence"])  # [L + 1]
        self._hts: Dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.titles)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"feature index {i} out of range for {len(self)} documents")
        c = self.cols
        e0, e1 = self.entity_offsets[i], self.entity_offsets[i + 1]
        m_off = self.mention_offsets[e0:e1 + 1]
        m0, m1 = m_off[0], m_off[-1]
        starts, ends = c["mention_start"][m0:m1].tolist(), c["mention_end"][m0:m1].tolist()
        sents = c["mention_sent"][m0:m1].tolist()
        bounds = (m_off - m0).tolist()
        entity_pos = [list(zip(starts[a:b], ends[a:b])) for a, b in zip(bounds[:-1], bounds[1:])]
        mention_sent_ids = [sents[a:b] for a, b in zip(bounds[:-1], bounds[1:])]
        n = int(e1 - e0)
        if n not in self._hts:
            self._hts[n] = pair_index(n)
        l0, l1 = self.label_offsets[i], self.label_offsets[i + 1]
        s0, s1 = self.sent_offsets[i], self.sent_offsets[i + 1]
        v_off = self.evidence_offsets[l0:l1 + 1]
        evidence_sents = c["evidence_sent"][v_off[0]:v_off[-1]].tolist()
        v_bounds = (v_off - v_off[0]).tolist()
        return {
            "title": self.titles[i],
            "input_ids": np.array(c["input_ids"][self.token_offsets[i]:self.token_offsets[i + 1]], dtype=np.int64),
            "entity_pos": entity_pos,
            "mention_sent_ids": mention_sent_ids,
            "sent_pos": np.stack([c["sent_start"][s0:s1], c["sent_end"][s0:s1]], axis=1).astype(np.int32),  # [S, 2]
            "hts": self._hts[n].copy(),  # [n_pairs, 2]
            "labels": np.stack([c["label_pair"][l0:l1], c["label_rel"][l0:l1]], axis=1).astype(np.int64),  # [n_pos, 2]
            "evidence": [evidence_sents[a:b] for a, b in zip(v_bounds[:-1], v_bounds[1:])],  # per row of labels
            "n_truncated_mentions": int(c["doc_n_truncated_mentions"][i]),
            "n_read_words": int(c["doc_n_read_words"][i]),
        }

    def __iter__(self) -> Iterator[Dict[str, Any]]:
        for i in range(len(self)):
            yield self[i]

    def __getstate__(self) -> Dict[str, Any]:
        # memory-mapped columns are reopened from the cache instead of being copied into the pickle
        state = dict(self.__dict__)
        if self.cache_path is not None:
            state["cols"] = None
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        if self.cols is None:
            self.cols = open_columns(Path(self.cache_path), json.loads((Path(self.cache_path) / "meta.json")
                                                                       .read_text(encoding="utf-8")))
