"""Read DocRED JSON, validate it (validation.py holds the rules), and turn each document into entity-pair features
(cached on disk on request).

One feature per document (see ARCHITECTURE.md, "feature"):
    title, input_ids (with the tokenizer's own special tokens), entity_pos (per entity: (start, end) token spans of
    its kept mentions, start = the start marker), mention_sent_ids, sent_pos [n_sents, 2] int32 (token span
    [start, end) of each sentence), hts [n_pairs, 2], labels [n_pos, 2] = (pair index into hts, relation id >= 1),
    evidence (per row of labels, its evidence sentence ids), n_truncated_mentions.

sent_pos is in input_ids coordinates: a sentence's span holds the markers of its mentions and starts after the
leading special tokens. Every sentence keeps its row (so sentence ids, mention_sent_ids and evidence agree): one
cut by truncation at max_seq_length ends at the cut, one wholly past it gets the empty span [c, c), c the index of
the trailing special tokens; so does a sentence whose words yield no token.

Features are held column-wise in flat NumPy arrays (in memory, or memory-mapped from the cache), so 100k documents
fit in a few hundred MB; `DocREFeatures[i]` assembles the dict of one document on access.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import hashlib
import json
import logging
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from validation import CorpusValidator, Labels, ValidationError, check_not_empty

logger = logging.getLogger("prepro")

FEATURE_FORMAT_VERSION = 2  # 2: sentence spans and evidence
CHUNK_DOCS = 256  # documents tokenized per batch call

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
    "sent_start": "int32",  # [S] token index of each sentence's first token (see sent_pos in the docstring)
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
_RAGGED = {k for k in COLUMNS if not k.startswith("doc_")}  # columns with a variable number of values per document


# ----------------------------------------------------------------------------- label map


def build_rel2id(rel_info_file: str | os.PathLike) -> Dict[str, int]:
    """Label map from a rel_info.json: Na -> 0, then the relation ids in the file's order."""
    with open(rel_info_file, encoding="utf-8") as f:
        rel_info = json.load(f)
    if not isinstance(rel_info, dict) or not rel_info:
        raise ValueError(f"{rel_info_file}: expected a non-empty JSON object {{relation id: name}}")
    rel2id = {"Na": 0}
    for rel in rel_info:
        if rel != "Na":
            rel2id[rel] = len(rel2id)
    return rel2id


def _check_rel2id(rel2id: Any, source: str) -> Dict[str, int]:
    """Validate a label map: {"Na": 0, ...} with ids 0..K each used once."""
    if not isinstance(rel2id, dict) or not all(isinstance(k, str) and type(v) is int for k, v in rel2id.items()):
        raise ValueError(f"{source}: a label map must be a JSON object {{relation: int id}}")
    if rel2id.get("Na") != 0:
        raise ValueError(f"{source}: the label map must map 'Na' (the none class) to 0, got {rel2id.get('Na')!r}")
    if sorted(rel2id.values()) != list(range(len(rel2id))):
        raise ValueError(f"{source}: label ids must be 0..{len(rel2id) - 1}, each used once")
    return rel2id


def load_rel2id(data_dir: Optional[str] = None, rel2id_file: Optional[str] = None,
                rel_info_file: Optional[str] = None) -> Dict[str, int]:
    """The label map: `rel2id_file`, else built from rel_info (given or <data_dir>/rel_info.json), else meta/."""
    if rel2id_file is not None:
        with open(rel2id_file, encoding="utf-8") as f:
            return _check_rel2id(json.load(f), str(rel2id_file))
    if rel_info_file is None and data_dir is not None and (Path(data_dir) / "rel_info.json").exists():
        rel_info_file = str(Path(data_dir) / "rel_info.json")
    if rel_info_file is not None:
        return build_rel2id(rel_info_file)
    default = Path(__file__).resolve().parent / "meta" / "rel2id.json"
    with open(default, encoding="utf-8") as f:
        return _check_rel2id(json.load(f), str(default))


def check_num_class(rel2id: Dict[str, int], num_class: Optional[int]) -> int:
    """Return the number of classes of the label map; raise if `--num_class` says otherwise."""
    if num_class is not None and num_class != len(rel2id):
        raise ValueError(f"--num_class {num_class} does not match the label map, which has {len(rel2id)} classes "
                         f"(Na + {len(rel2id) - 1} relations); drop --num_class or pass the matching --rel2id")
    return len(rel2id)


# ----------------------------------------------------------------------------- reading


_WS = re.compile(r"[ \t\n\r]*")
_TITLE = re.compile(r'"title"\s*:\s*("(?:[^"\\]|\\.)*")')


def _json_problem(path: str, err: json.JSONDecodeError, what: str) -> ValidationError:
    return ValidationError(path, [f"invalid JSON while reading {what}, at line {err.lineno} column {err.colno} "
                                  f"(char {err.pos}): {err.msg}; is the file truncated?"])


def _partial_title(text: str) -> str:
    """` (title '...')` from the JSON text of a document that does not parse, or ` (title unknown)`."""
    found = _TITLE.search(text)
    try:
        return f" (title {json.loads(found.group(1))!r})" if found else " (title unknown)"
    except json.JSONDecodeError:
        return " (title unknown)"


def _file_sha256(path: str | os.PathLike) -> str:
    """sha256 hex of a file's bytes, read in blocks (a cache hit never holds the file in memory)."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _read_text(path: str | os.PathLike) -> str:
    """The text of a UTF-8 file; a clear error for non-UTF-8 bytes, naming the document and field holding them."""
    data = Path(path).read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        where = _locate_bad_bytes(path, data, e.start)
        raise ValidationError(path, [f"{where}not valid UTF-8: byte {data[e.start:e.start + 1]!r} at offset "
                                     f"{e.start} (line {line}): {e.reason}; re-save the file as UTF-8"]) from None


def _is_escaped_byte(text: str) -> bool:
    return any("\udc80" <= c <= "\udcff" for c in text)


def _field_of(obj: Any, accept: Callable[[str], bool], field: str = "") -> Optional[str]:
    """The field (e.g. `sents[0][2]`, `vertexSet[1][0].name`) of the first string in `obj` that `accept` takes."""
    if isinstance(obj, str):
        return field if accept(obj) else None
    items = ([(f"{field}.{k}" if field else k, k, v) for k, v in obj.items()] if isinstance(obj, dict)
             else [(f"{field}[{i}]", "", v) for i, v in enumerate(obj)] if isinstance(obj, list) else [])
    for sub, key, value in items:
        found = sub if accept(key) else _field_of(value, accept, sub)
        if found is not None:
            return found
    return None


def _locate_bad_bytes(path: str | os.PathLike, data: bytes, offset: int) -> str:
    """`document i (title ...): field f: ` of the bytes at `offset`, or "" when the JSON around them is broken."""
    position = len(data[:offset].decode("utf-8-sig"))  # in characters; the bytes before `offset` are valid
    text = data.decode("utf-8-sig", errors="surrogateescape")  # each bad byte becomes one lone surrogate
    try:
        for i, (doc, start, end) in enumerate(_iter_spans(path, text)):
            if start <= position < end:
                title = doc.get("title") if isinstance(doc, dict) else None
                if isinstance(title, str):
                    title = title.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
                field = _field_of(doc, _is_escaped_byte) or "<document>"
                return f"document {i} (title {title!r}): field {field}: "
    except ValidationError:
        pass
    return ""


def iter_documents(path: str | os.PathLike, text: str) -> Iterator[Any]:
    """Yield the elements of the top-level JSON list in `text` one by one (never holding all parsed documents)."""
    for doc, _, _ in _iter_spans(path, text):
        yield doc


def _iter_spans(path: str | os.PathLike, text: str) -> Iterator[Tuple[Any, int, int]]:
    """(document, start, end) of each element of the top-level JSON list in `text`, parsed one by one."""
    path = str(path)
    decoder = json.JSONDecoder()
    idx = _WS.match(text, 0).end()
    if idx == len(text):  # an empty file holds no documents (check_not_empty decides whether that is an error)
        return
    if text[idx:idx + 1] != "[":
        try:
            top = json.loads(text)
        except json.JSONDecodeError as e:
            raise _json_problem(path, e, "the top level") from None
        raise ValidationError(path, [f"the top level must be a JSON list of documents, got {type(top).__name__}"])
    idx = _WS.match(text, idx + 1).end()
    if text[idx:idx + 1] == "]":
        return
    i = 0
    while True:
        try:
            doc, end = decoder.raw_decode(text, idx)
        except json.JSONDecodeError as e:
            raise _json_problem(path, e, f"document {i}{_partial_title(text[idx:e.pos])}") from None
        yield doc, idx, end
        i += 1
        idx = _WS.match(text, end).end()
        sep = text[idx:idx + 1]
        if sep == "]":
            if _WS.match(text, idx + 1).end() != len(text):
                raise ValidationError(path, [f"extra data after the list of documents at char {idx + 1}"])
            return
        if sep != ",":
            err = json.JSONDecodeError("expected ',' or ']' after a document", text, idx)
            title = doc.get("title") if isinstance(doc, dict) else None
            raise _json_problem(path, err, f"document {i - 1} (title {title!r})")
        idx = _WS.match(text, idx + 1).end()


# ----------------------------------------------------------------------------- tokenization


def _prefix_space_json(spec: Any) -> Any:
    """Turn on add_prefix_space in every ByteLevel pre-tokenizer of a tokenizer.json subtree."""
    if isinstance(spec, dict):
        spec = {k: _prefix_space_json(v) for k, v in spec.items()}
        if spec.get("type") == "ByteLevel" and "add_prefix_space" in spec:
            spec["add_prefix_space"] = True
        return spec
    if isinstance(spec, list):
        return [_prefix_space_json(v) for v in spec]
    return spec


class WordTokenizer:
    """Tokenizes documents given as word lists: token ids with the tokenizer's special tokens, and the word index
    of every content token.

    Each distinct word of a batch of documents is tokenized once, as a pre-tokenized word (exactly what
    `tokenizer(words, is_split_into_words=True)` does word by word, since pre-tokenized words never interact), and
    documents are assembled from those pieces with NumPy. The special tokens come from the tokenizer's own
    post-processor (`build_inputs_with_special_tokens` for slow tokenizers).

    Fast tokenizers get a private copy of their Rust backend so that (a) byte-level BPE words get their leading
    space (RoBERTa sees " Paris" inside text, not "Paris"), (b) no truncation or padding preset in tokenizer.json
    applies, (c) a literal "[SEP]" in a document is text, not a special token.
    """

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer
        backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
        self.backend = None
        if backend is not None:
            from tokenizers import Tokenizer

            spec = json.loads(backend.to_str())
            spec["pre_tokenizer"] = _prefix_space_json(spec.get("pre_tokenizer"))
            self.backend = Tokenizer.from_str(json.dumps(spec))
            self.backend.no_truncation()
            self.backend.no_padding()
            self.backend.encode_special_tokens = True
            probe = self.backend.encode(["x"], is_pretokenized=True, add_special_tokens=True)
            ids, word_ids = probe.ids, probe.word_ids
        else:
            ids = tokenizer.build_inputs_with_special_tokens([-1])
            word_ids = [None if i != -1 else 0 for i in ids]
        content = [i for i, w in enumerate(word_ids) if w is not None]
        self.prefix_ids = np.asarray(ids[:content[0]], dtype=np.int32)
        self.suffix_ids = np.asarray(ids[content[-1] + 1:], dtype=np.int32)
        self.n_prefix, self.n_suffix = len(self.prefix_ids), len(self.suffix_ids)

    def fingerprint(self) -> str:
        """A hash of everything about the tokenizer that changes its output."""
        if self.backend is not None:
            body = self.backend.to_str()
        else:
            body = json.dumps(sorted(self.tokenizer.get_vocab().items()), ensure_ascii=False)
        return hashlib.sha256(body.encode("utf-8")).hexdigest()

    def check_marker(self, marker: Optional[str]) -> None:
        """Raise when the entity marker would produce no token (then nothing could point at it)."""
        if marker is not None and (not isinstance(marker, str) or self._pieces([marker])[1][0] == 0):
            raise ValueError(f"entity_marker must be a string that yields at least one token, got {marker!r}")

    def _pieces(self, words: List[str]) -> Tuple[np.ndarray, np.ndarray]:
        """(token ids of all `words` concatenated [T], number of tokens of each word [len(words)])."""
        if self.backend is None:
            pieces = self.tokenizer(words, add_special_tokens=False)["input_ids"] if words else []
            return (np.fromiter(chain.from_iterable(pieces), dtype=np.int32),
                    np.fromiter(map(len, pieces), dtype=np.int64, count=len(words)))
        bounds = np.linspace(0, len(words), num=9, dtype=np.int64)  # a few parts, encoded in parallel
        parts = [words[a:b] for a, b in zip(bounds[:-1], bounds[1:]) if b > a]
        encs = self.backend.encode_batch(parts, is_pretokenized=True, add_special_tokens=False)
        ids = [np.asarray(e.ids, dtype=np.int32) for e in encs]
        counts = [np.bincount(np.asarray(e.word_ids, dtype=np.int64), minlength=len(p)) for e, p in zip(encs, parts)]
        return np.concatenate(ids or [np.zeros(0, np.int32)]), np.concatenate(counts or [np.zeros(0, np.int64)])

    def encode(self, docs: List[List[str]]) -> List[Tuple[np.ndarray, np.ndarray]]:
        """For each word list: (content token ids [L], word index of each content token [L])."""
        flat = list(chain.from_iterable(docs))
        vocab = {w: i for i, w in enumerate(dict.fromkeys(flat))}
        piece_ids, piece_len = self._pieces(list(vocab))
        piece_start = np.cumsum(piece_len) - piece_len
        uid = np.fromiter(map(vocab.__getitem__, flat), dtype=np.int64, count=len(flat))  # [W]
        tok_len = piece_len[uid]  # [W]
        word_of_tok = np.repeat(np.arange(len(flat)), tok_len)  # [T]
        offset_in_word = np.arange(len(word_of_tok)) - np.repeat(np.cumsum(tok_len) - tok_len, tok_len)
        ids = piece_ids[piece_start[uid][word_of_tok] + offset_in_word]  # [T]
        doc_words = np.cumsum([0] + [len(d) for d in docs])
        doc_toks = np.concatenate([[0], np.cumsum(tok_len)])[doc_words]
        return [(ids[a:b], word_of_tok[a:b] - w0) for a, b, w0 in zip(doc_toks[:-1], doc_toks[1:], doc_words[:-1])]

    def with_special_tokens(self, content: np.ndarray) -> np.ndarray:
        """[prefix specials] + content + [suffix specials]."""
        return np.concatenate([self.prefix_ids, content, self.suffix_ids])


# ----------------------------------------------------------------------------- features


def pair_index(n: int) -> np.ndarray:
    """Every ordered entity pair h != t, h-major: [n * (n - 1), 2]."""
    h, t = np.divmod(np.arange(n * n, dtype=np.int64), n)
    keep = h != t
    return np.stack([h[keep], t[keep]], axis=1)


def _mark_words(doc: Dict[str, Any], marker: Optional[str]) -> Tuple[List[str], np.ndarray, np.ndarray,
                                                                        np.ndarray, np.ndarray, np.ndarray]:
    """The document's words with markers inserted as words of their own.

    Returns (words, first word slot of each mention, last word slot of each mention, sentence id of each mention,
    number of mentions per entity, first word slot of each sentence and the number of slots [n_sents + 1]). A start
    marker goes before every word that starts a mention and an end marker after every word that ends one (once per
    word, however many mentions share it, as in ATLOP); a word's markers belong to its sentence.
    """
    sents = doc["sents"]
    sent_start = np.cumsum([0] + [len(s) for s in sents])  # [n_sents + 1]
    words = [w for s in sents for w in s]
    mentions = [m for ent in doc["vertexSet"] for m in ent]
    counts = np.array([len(ent) for ent in doc["vertexSet"]], dtype=np.int64)
    sent_ids = np.array([m["sent_id"] for m in mentions], dtype=np.int64)
    span = np.array([m["pos"] for m in mentions], dtype=np.int64).reshape(-1, 2)
    first_word = sent_start[sent_ids] + span[:, 0]  # [M]
    last_word = sent_start[sent_ids] + span[:, 1] - 1  # [M]
    if marker is None:
        return words, first_word, last_word, sent_ids, counts, sent_start
    n = len(words)
    starts = np.zeros(n, dtype=np.int64)
    ends = np.zeros(n, dtype=np.int64)
    starts[first_word] = 1
    ends[last_word] = 1
    width = 1 + starts + ends
    bound = np.concatenate([[0], np.cumsum(width)])  # [n + 1] first slot of each word (its start marker, if any)
    slot = bound[:-1]
    marked = np.empty(int(bound[-1]), dtype=object)
    marked[slot + starts] = words
    marked[slot[starts == 1]] = marker
    marked[(slot + width - 1)[ends == 1]] = marker
    return (marked.tolist(), slot[first_word], (slot + width - 1)[last_word], sent_ids, counts,
            bound[sent_start])


def _mention_spans(wid: np.ndarray, first_slot: np.ndarray, last_slot: np.ndarray,
                   marked: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Content-token spans [start, end) of mentions given their first and last word slots."""
    # with markers: the last token of the start-marker word, i.e. "*" even when a tokenizer splits it ("▁", "*")
    start = np.searchsorted(wid, first_slot, side="right" if marked else "left") - int(marked)  # [M]
    end = np.maximum(np.searchsorted(wid, last_slot, side="right"), start + 1)  # [M]
    return start, end


class _ColumnSink:
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


def _featurize_chunk(docs: List[Dict[str, Any]], labels: List[Labels], enc: WordTokenizer, max_len: int,
                     marker: Optional[str], sink: _ColumnSink) -> None:
    """Tokenize a chunk of valid documents and append their feature columns to `sink`."""
    marked = [_mark_words(doc, marker) for doc in docs]
    encoded = enc.encode([m[0] for m in marked])
    budget = max_len - enc.n_prefix - enc.n_suffix  # content tokens that fit
    cols: Dict[str, List[Any]] = {k: [] for k in COLUMNS}
    for (_, first, last, sent_ids, counts, sent_slot), (content, wid), (lab, evidence) in zip(marked, encoded, labels):
        start, end = _mention_spans(wid, first, last, marker is not None)
        kept = end <= budget  # [M] the whole mention, markers included, survives truncation
        ids = enc.with_special_tokens(content[:budget])
        sent_bound = np.minimum(np.searchsorted(wid, sent_slot), budget) + enc.n_prefix  # [n_sents + 1]
        n = len(counts)
        kept_per_entity = np.bincount(np.repeat(np.arange(n), counts)[kept], minlength=n)  # [n_entities]
        h, t = lab[:, 0], lab[:, 1]
        cols["input_ids"].append(ids)
        cols["mention_start"].append(start[kept] + enc.n_prefix)
        cols["mention_end"].append(end[kept] + enc.n_prefix)
        cols["mention_sent"].append(sent_ids[kept])
        cols["entity_n_mentions"].append(kept_per_entity)
        cols["sent_start"].append(sent_bound[:-1])
        cols["sent_end"].append(sent_bound[1:])
        cols["label_pair"].append(h * (n - 1) + t - (t > h))  # position of (h, t) in pair_index(n)
        cols["label_rel"].append(lab[:, 2])
        cols["label_n_evidence"].append(np.fromiter(map(len, evidence), dtype=np.int64, count=len(evidence)))
        cols["evidence_sent"].append(np.fromiter(chain.from_iterable(evidence), dtype=np.int64))
        cols["doc_n_tokens"].append(len(ids))
        cols["doc_length"].append(len(content) + enc.n_prefix + enc.n_suffix)
        cols["doc_n_entities"].append(n)
        cols["doc_n_sents"].append(len(sent_slot) - 1)
        cols["doc_n_labels"].append(len(lab))
        cols["doc_n_truncated_mentions"].append(int((~kept).sum()))
        cols["doc_n_truncated_entities"].append(int((kept_per_entity == 0).sum()))
    sink.add(**{k: np.concatenate(v) if k in _RAGGED else np.asarray(v) for k, v in cols.items()})


def _compute_stats(cols: Dict[str, np.ndarray], max_len: int) -> Dict[str, Any]:
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


class DocREFeatures(Sequence):
    """The features of one file, stored column-wise; indexing returns one feature dict (see module docstring)."""

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
            self.cols = _open_columns(Path(self.cache_path), json.loads((Path(self.cache_path) / "meta.json")
                                                                        .read_text(encoding="utf-8")))


# ----------------------------------------------------------------------------- cache


def _open_columns(folder: Path, meta: Dict[str, Any]) -> Dict[str, np.ndarray]:
    """Memory-map the column files of a cache folder, checking each file's size against meta.json."""
    cols = {}
    for name, dtype in COLUMNS.items():
        size = meta["sizes"][name]
        file = folder / f"{name}.bin"
        if file.stat().st_size != size * np.dtype(dtype).itemsize:
            raise ValueError(f"{file.name} has {file.stat().st_size} bytes, expected {size} {dtype} values")
        cols[name] = np.memmap(file, dtype=dtype, mode="r", shape=(size,)) if size else np.zeros(0, dtype=dtype)
    return cols


def _check_columns(cols: Dict[str, np.ndarray], meta: Dict[str, Any], titles_bytes: bytes) -> None:
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


def cache_key(file_sha256: str, enc: WordTokenizer, rel2id: Dict[str, int], max_seq_length: int,
              entity_marker: Optional[str], skip_unknown: bool = False) -> str:
    """Hash of everything the features depend on: file content, tokenizer, label map, length, marker, whether
    labels of unknown relations are left out, format."""
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


def _load_cache(folder: Path, key: str) -> DocREFeatures:
    meta = json.loads((folder / "meta.json").read_text(encoding="utf-8"))
    if meta.get("key") != key or meta.get("format_version") != FEATURE_FORMAT_VERSION:
        raise ValueError("its key does not match")
    titles_bytes = (folder / "titles.json").read_bytes()
    titles = json.loads(titles_bytes)
    cols = _open_columns(folder, meta)
    _check_columns(cols, meta, titles_bytes)
    if len(titles) != len(cols["doc_n_tokens"]):
        raise ValueError("titles and columns disagree")
    return DocREFeatures(cols, titles, meta["stats"], path=meta["source"], cache_path=str(folder))


@contextlib.contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: parsing creates millions of acyclic containers, and the collector's
    passes over them would double the parsing time; refcounting still frees each chunk."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _build(path: str, text: str, enc: WordTokenizer, rel2id: Dict[str, int], max_len: int,
           marker: Optional[str], sink: _ColumnSink, show_progress: bool,
           skip_unknown: bool = False) -> Tuple[List[str], Dict[str, Any]]:
    """Validate every document and featurize the valid ones chunk by chunk; raise ValidationError on problems."""
    validator = CorpusValidator(rel2id, skip_unknown)
    titles: List[str] = []
    chunk: List[Dict[str, Any]] = []
    chunk_labels: List[Labels] = []
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(desc=f"reading {Path(path).name}", unit="doc", mininterval=2.0)
    with _gc_paused():
        for i, doc in enumerate(iter_documents(path, text)):
            labels = validator.check(doc, i)
            if progress is not None:
                progress.update()
            if validator.problems:  # keep validating to report every problem, but stop building
                continue
            titles.append(doc["title"])
            chunk.append(doc)
            chunk_labels.append(labels)
            if len(chunk) == CHUNK_DOCS:
                _featurize_chunk(chunk, chunk_labels, enc, max_len, marker, sink)
                chunk, chunk_labels = [], []
        if chunk and not validator.problems:
            _featurize_chunk(chunk, chunk_labels, enc, max_len, marker, sink)
    if progress is not None:
        progress.close()
    if validator.problems:
        raise ValidationError(path, validator.problems)
    dropped = validator.warnings
    if dropped:
        shown = "; ".join(dropped[:5]) + (f"; ... and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        logger.warning("%s: dropped %d label(s) (h == t or duplicates): %s", path, len(dropped), shown)
    return titles, {"dropped_labels": len(dropped), "unknown_labels": dict(sorted((validator.unknown or {}).items()))}


def _warn_truncation(path: str, features: DocREFeatures, shown: int = 3) -> None:
    """Warn about documents cut at max_seq_length, naming the first few, and about the mentions lost with them."""
    stats = features.stats
    if not stats["truncated_documents"]:
        return
    lengths, lost = features.cols["doc_length"], features.cols["doc_n_truncated_mentions"]
    cut = np.flatnonzero(lengths > stats["max_seq_length"])
    named = "; ".join(f"document {i} (title {features.titles[i]!r}): field sents: {lengths[i]} tokens, "
                      f"{lost[i]} mention(s) cut" for i in cut[:shown])
    more = f"; ... and {len(cut) - shown} more" if len(cut) > shown else ""
    logger.warning("%s: %d of %d documents are longer than max_seq_length=%d and were truncated (%s%s); %d mention(s) "
                   "fell past the end and are not pooled, %d entit(ies) lost every mention and get a zero embedding",
                   path, stats["truncated_documents"], stats["documents"], stats["max_seq_length"], named, more,
                   stats["truncated_mentions"], stats["truncated_entities"])


def _write_cache(folder: Path, key: str, path: str, enc: WordTokenizer, rel2id: Dict[str, int], max_len: int,
                 marker: Optional[str], show_progress: bool, skip_unknown: bool = False) -> None:
    """Build the features of `path` into a temporary folder beside `folder`, then rename it into place."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", suffix=".tmp", dir=folder.parent))
    try:
        sink = _ColumnSink(tmp)
        try:
            titles, extra = _build(path, _read_text(path), enc, rel2id, max_len, marker, sink, show_progress,
                                   skip_unknown)
        finally:
            sink.close()
        titles_bytes = json.dumps(titles, ensure_ascii=False).encode("utf-8")
        meta = {"key": key, "format_version": FEATURE_FORMAT_VERSION, "source": path, "sizes": sink.sizes,
                "crc32": sink.crc32, "crc32_titles": zlib.crc32(titles_bytes)}
        meta["stats"] = {**_compute_stats(_open_columns(tmp, meta), max_len), **extra}
        (tmp / "titles.json").write_bytes(titles_bytes)
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
        if folder.exists():
            shutil.rmtree(folder)
        try:
            os.rename(tmp, folder)
        except OSError:  # another process (e.g. a DDP rank) renamed the same cache into place first
            pass
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def user_cache_dir() -> Path:
    """The per-user feature cache folder: $XDG_CACHE_HOME/docre, else ~/.cache/docre."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "docre"


def _unwritable(folder: Path) -> Optional[str]:
    """Why a cache cannot be built in `folder` (created if missing), or None when it can."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
        os.rmdir(tempfile.mkdtemp(prefix=".probe.", dir=folder))  # what _write_cache does first
    except OSError as e:
        return f"{type(e).__name__}: {e.strerror or e}"
    return None


def resolve_cache_dir(cache_dir: Optional[str | os.PathLike]) -> Optional[Path]:
    """Where to build features: `cache_dir` when it can be written, else the per-user cache folder, else None
    (cache off); one warning when falling back. Call once per run and pass the result on to read_docred."""
    if cache_dir is None:
        return None
    wanted = Path(cache_dir)
    why = _unwritable(wanted)
    if why is None:
        return wanted
    fallback = user_cache_dir()
    why_not = _unwritable(fallback) if fallback != wanted else why
    if why_not is None:
        logger.warning("feature cache folder %s cannot be written (%s); caching features in %s instead",
                       wanted, why, fallback)
        return fallback
    logger.warning("feature cache folder %s cannot be written (%s), nor the per-user folder %s (%s); features are "
                   "built in memory, without a cache", wanted, why, fallback, why_not)
    return None


def _load_or_none(folder: Path, key: str) -> Optional[DocREFeatures]:
    """The cache in `folder`, or None when it is absent or unreadable (then it is rebuilt, never trusted)."""
    if not folder.exists():
        return None
    try:
        return _load_cache(folder, key)
    except Exception as e:
        logger.warning("feature cache %s is corrupted or incomplete (%s); rebuilding it", folder, e)
        return None


def read_docred(path: str | os.PathLike, tokenizer: Any, rel2id: Dict[str, int], max_seq_length: int = 1024,
                entity_marker: Optional[str] = "*", cache_dir: Optional[str | os.PathLike] = None,
                show_progress: bool = False, allow_empty: bool = False,
                skip_unknown_relations: bool = False) -> DocREFeatures:
    """Validated features of a DocRED file, one per document; memory-mapped from `cache_dir` when given.

    An existing cache is read from `cache_dir` even when the folder is read-only; a new one is built where
    `resolve_cache_dir` says. A file without documents raises ValidationError unless `allow_empty`. Labels of
    relations outside `rel2id` are problems, or with `skip_unknown_relations` (scoring a model on a file with
    relations it was not trained on) left out of the features, counted in `stats["unknown_labels"]` and warned of.
    """
    path = str(path)
    enc = WordTokenizer(tokenizer)
    enc.check_marker(entity_marker)
    if max_seq_length <= enc.n_prefix + enc.n_suffix:
        raise ValueError(f"max_seq_length={max_seq_length} leaves no room for text after the special tokens")
    features = None
    if cache_dir is not None:
        key = cache_key(_file_sha256(path), enc, rel2id, max_seq_length, entity_marker, skip_unknown_relations)
        name = f"{Path(path).stem}-{key[:16]}"
        features = _load_or_none(Path(cache_dir) / name, key)
        base = resolve_cache_dir(cache_dir) if features is None else None
        if base is not None:
            features = _load_or_none(base / name, key) if base != Path(cache_dir) else None
            if features is None:
                _write_cache(base / name, key, path, enc, rel2id, max_seq_length, entity_marker, show_progress,
                             skip_unknown_relations)
                features = _load_cache(base / name, key)
    if features is None:
        sink = _ColumnSink()
        titles, extra = _build(path, _read_text(path), enc, rel2id, max_seq_length, entity_marker, sink,
                               show_progress, skip_unknown_relations)
        cols = sink.close()
        features = DocREFeatures(cols, titles, {**_compute_stats(cols, max_seq_length), **extra}, path=path)
    if not allow_empty:
        check_not_empty(path, len(features))
    logger.info("%s: %d documents, %d without entities (no pairs)", path, len(features),
                features.stats["documents_without_entities"])
    unknown = features.stats.get("unknown_labels") or {}
    if unknown:
        logger.warning("%s: %d label(s) of %d relation(s) not in the label map (%s) are left out of the features",
                       path, sum(unknown.values()), len(unknown), ", ".join(f"{r} x{n}" for r, n in unknown.items()))
    _warn_truncation(path, features)
    return features


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description="Preprocess a DocRED file into cached features and print figures, "
                                                 "or (--build_meta) write meta/rel2id.json from a rel_info.json.")
    parser.add_argument("--data_dir", default="dataset/docred")
    parser.add_argument("--file", help="a DocRED JSON file, relative to --data_dir")
    parser.add_argument("--model_name_or_path", default="minilm", help="tokenizer folder, or `minilm` (packaged)")
    parser.add_argument("--max_seq_length", type=int, default=1024)
    parser.add_argument("--cache_dir", default=None, help="default: <data_dir>/.cache; 'none' to disable (as train.py)")
    parser.add_argument("--no_cache", action="store_true", help="do not read or write the feature cache")
    parser.add_argument("--no_entity_marker", "--no_marker", dest="no_entity_marker", action="store_true",
                        help="no '*' entity markers around mentions")
    parser.add_argument("--rel2id", default=None, help="label map JSON (default: from rel_info.json or meta/)")
    parser.add_argument("--rel_info", default=None, help="rel_info.json to build the label map from")
    parser.add_argument("--num_class", type=int, default=None, help="checked against the label map")
    parser.add_argument("--build_meta", action="store_true", help="write --out from --rel_info and exit")
    parser.add_argument("--out", default=str(Path(__file__).resolve().parent / "meta" / "rel2id.json"))
    return parser


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the CLI; bad input raises (ValidationError, ValueError, OSError), which `cli` turns into exit 2."""
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s", level=logging.INFO)
    from utils import atomic_write_json, resolve_model_path

    if args.build_meta:
        if args.rel_info is None:
            parser.error("--build_meta needs --rel_info FILE")
        rel2id = build_rel2id(args.rel_info)
        atomic_write_json(args.out, rel2id, indent=1)
        print(f"wrote {args.out}: Na -> 0 and {len(rel2id) - 1} relations in the order of {args.rel_info}")
        return {"classes": len(rel2id)}
    if args.file is None:
        parser.error("--file is required (or pass --build_meta)")
    from transformers import AutoTokenizer

    rel2id = load_rel2id(args.data_dir, args.rel2id, args.rel_info)
    check_num_class(rel2id, args.num_class)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model_name_or_path))
    off = args.no_cache or (args.cache_dir or "").lower() == "none"
    cache_dir = None if off else (args.cache_dir or os.path.join(args.data_dir, ".cache"))
    start = time.perf_counter()
    features = read_docred(os.path.join(args.data_dir, args.file), tokenizer, rel2id, args.max_seq_length,
                           None if args.no_entity_marker else "*", cache_dir=cache_dir, show_progress=True)
    seconds = time.perf_counter() - start
    s = dict(features.stats, seconds=round(seconds, 3), docs_per_s=round(len(features) / max(seconds, 1e-9), 1))
    print(f"documents {s['documents']} ({s['documents_without_entities']} without entities)  "
          f"positive pairs {s['positive_pairs']}  negative pairs {s['negative_pairs']}")
    print(f"token length mean {s['token_length_mean']:.1f}  p95 {s['token_length_p95']:.0f}  "
          f"max {s['token_length_max']}  (max_seq_length {args.max_seq_length})")
    print(f"truncated documents {s['truncated_documents']}  mentions {s['truncated_mentions']}  "
          f"entities {s['truncated_entities']}  dropped labels {s.get('dropped_labels', 0)}")
    print(f"{seconds:.2f} s  {s['docs_per_s']} docs/s  cache {features.cache_path or 'off'}")
    return s


def cli(argv: Optional[List[str]] = None) -> None:
    """`python prepro.py`: main, with bad input (a ValidationError, a bad label map, a missing or unreadable file)
    reported as one message on stderr and exit status 2, no traceback (utils.cli)."""
    from utils import UserError, cli as run_cli

    def checked_main() -> None:
        try:
            main(argv)
        except OSError as e:
            where = f"{e.filename}: " if e.filename is not None else ""
            raise UserError(f"{where}{e.strerror or e}") from e
        except ValueError as e:  # the label map's checks
            raise UserError(str(e)) from e

    run_cli(checked_main)


if __name__ == "__main__":
    cli()
