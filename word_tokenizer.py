"""`WordTokenizer`: DocRED's word lists to token ids with the tokenizer's own special tokens, each distinct word
tokenized once per batch, and the word of every token (prepro's first step).
"""
from __future__ import annotations

import hashlib
import json
from itertools import chain
from typing import Any, List, Optional, Tuple

import numpy as np


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

    @classmethod
    def of(cls, tokenizer: Any) -> "WordTokenizer":
        """`tokenizer` itself when it is a WordTokenizer already, else a new one: building one copies the fast
        tokenizer's backend through JSON (about 80 ms for BERT's), so callers that predict often keep one."""
        return tokenizer if isinstance(tokenizer, cls) else cls(tokenizer)

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
