"""DocRED documents to entity-pair features: `features_from_documents` (documents in memory) and `read_docred` (a
JSON file, read by json_stream, its features cached on disk by feature_cache) validate every document with
validation.py's rules, then featurize the valid ones through the same code.

One feature per document (see ARCHITECTURE.md, "feature"):
    title, input_ids (with the tokenizer's own special tokens), entity_pos (per entity: (start, end) token spans of
    its kept mentions, start = the start marker), mention_sent_ids, sent_pos [n_sents, 2] int32 (token span
    [start, end) of each sentence), hts [n_pairs, 2], labels [n_pos, 2] = (pair index into hts, relation id >= 1),
    evidence (per row of labels, its evidence sentence ids), n_truncated_mentions, n_read_words (the words read
    whole, with their markers: all of them unless the document was truncated).

sent_pos is in input_ids coordinates: a sentence's span holds the markers of its mentions and starts after the
leading special tokens. Every sentence keeps its row (so sentence ids, mention_sent_ids and evidence agree): one
cut by truncation at max_seq_length ends at the cut, one wholly past it gets the empty span [c, c), c the index of
the trailing special tokens; so does a sentence whose words yield no token.

Features are held column-wise in flat NumPy arrays (feature_store; in memory, or memory-mapped from the cache), so
100k documents fit in a few hundred MB; `DocREFeatures[i]` assembles the dict of one document on access.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import time
from itertools import chain
from pathlib import Path
from typing import (TYPE_CHECKING, Any, Callable, Dict, Iterable, Iterator, List, NamedTuple, Optional, Sequence,
                    Tuple)

import numpy as np

from feature_cache import Build, cache_key, cached_features
from feature_store import COLUMNS, RAGGED, ColumnSink, DocREFeatures, compute_stats, pair_index
from json_stream import file_sha256, iter_documents, read_text
from utils import COUNT_OR_ZERO, read_json
from validation import CorpusValidator, Labels, ValidationError, check_not_empty
from word_tokenizer import WordTokenizer

if TYPE_CHECKING:
    from settings import DocRESettings

logger = logging.getLogger(__name__)

CHUNK_DOCS = 256  # documents tokenized per batch call


# ----------------------------------------------------------------------------- label map


def build_rel2id(rel_info_file: str | os.PathLike) -> Dict[str, int]:
    """Label map from a rel_info.json: Na -> 0, then the relation ids in the file's order."""
    rel_info = read_json(rel_info_file, "the relation file")
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
        return _check_rel2id(read_json(rel2id_file, "the label map"), str(rel2id_file))
    if rel_info_file is None and data_dir is not None and (Path(data_dir) / "rel_info.json").exists():
        rel_info_file = str(Path(data_dir) / "rel_info.json")
    if rel_info_file is not None:
        return build_rel2id(rel_info_file)
    default = Path(__file__).resolve().parent / "meta" / "rel2id.json"
    logger.info("label map: DocRED's, %s (no rel_info.json in --data_dir %s, and no --rel_info or --rel2id)", default,
                data_dir)
    with open(default, encoding="utf-8") as f:
        return _check_rel2id(json.load(f), str(default))


def check_num_class(rel2id: Dict[str, int], num_class: Optional[int]) -> int:
    """Return the number of classes of the label map; raise if `--num_class` says otherwise."""
    if num_class is not None and num_class != len(rel2id):
        raise ValueError(f"--num_class {num_class} does not match the label map, which has {len(rel2id)} classes "
                         f"(Na + {len(rel2id) - 1} relations); drop --num_class or pass the matching --rel2id")
    return len(rel2id)


# ----------------------------------------------------------------------------- features


class MarkedWords(NamedTuple):
    """A document's words with markers inserted as words of their own (`mark_words`); slots index `words`."""
    words: List[str]
    first_slot: np.ndarray  # [M] first slot of each mention (its start marker, if any)
    last_slot: np.ndarray  # [M] last slot of each mention (its end marker, if any)
    sent_ids: np.ndarray  # [M] sentence id of each mention
    counts: np.ndarray  # [n_entities] mentions per entity
    sent_slot: np.ndarray  # [n_sents + 1] first slot of each sentence, then the number of slots
    word_slot: np.ndarray  # [n_words + 1] first slot of each word (its start marker, if any), then the number of slots


def mark_words(doc: Dict[str, Any], marker: Optional[str]) -> MarkedWords:
    """The document's words with markers inserted as words of their own.

    A start marker goes before every word that starts a mention and an end marker after every word that ends one
    (once per word, however many mentions share it, as in ATLOP); a word's markers belong to its sentence.
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
        slots = np.arange(len(words) + 1)
        return MarkedWords(words, first_word, last_word, sent_ids, counts, sent_start, slots)
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
    return MarkedWords(marked.tolist(), slot[first_word], (slot + width - 1)[last_word], sent_ids, counts,
                       bound[sent_start], bound)


def _mention_spans(wid: np.ndarray, first_slot: np.ndarray, last_slot: np.ndarray,
                   marked: bool) -> Tuple[np.ndarray, np.ndarray]:
    """Content-token spans [start, end) of mentions given their first and last word slots."""
    # with markers: the last token of the start-marker word, i.e. "*" even when a tokenizer splits it ("▁", "*")
    start = np.searchsorted(wid, first_slot, side="right" if marked else "left") - int(marked)  # [M]
    end = np.maximum(np.searchsorted(wid, last_slot, side="right"), start + 1)  # [M]
    return start, end


def _featurize_chunk(docs: List[Dict[str, Any]], labels: List[Labels], enc: WordTokenizer, max_len: int,
                     marker: Optional[str], sink: ColumnSink) -> None:
    """Tokenize a chunk of valid documents and append their feature columns to `sink`."""
    marked = [mark_words(doc, marker) for doc in docs]
    encoded = enc.encode([m[0] for m in marked])
    budget = max_len - enc.n_prefix - enc.n_suffix  # content tokens that fit
    cols: Dict[str, List[Any]] = {k: [] for k in COLUMNS}
    for (_, first, last, sent_ids, counts, sent_slot, word_slot), (content, wid), (lab, evidence) in zip(
            marked, encoded, labels):
        start, end = _mention_spans(wid, first, last, marker is not None)
        kept = end <= budget  # [M] the whole mention, markers included, survives truncation
        # the words read whole with their markers: those before the word of the first token left out
        n_read = len(word_slot) - 1 if len(content) <= budget else \
            int(np.searchsorted(word_slot, wid[budget], side="right")) - 1
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
        cols["doc_n_read_words"].append(n_read)
    sink.add(**{k: np.concatenate(v) if k in RAGGED else np.asarray(v) for k, v in cols.items()})


# ----------------------------------------------------------------------------- validating and building


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


def _build(source: str, documents: Iterable[Any], enc: WordTokenizer, settings: DocRESettings, sink: ColumnSink,
           show_progress: bool, skip_unknown: bool = False) -> Tuple[List[str], Dict[str, Any]]:
    """Validate every document and featurize the valid ones chunk by chunk; raise ValidationError on problems."""
    validator = CorpusValidator(settings.rel2id, skip_unknown)
    max_len, marker = settings.max_seq_length, settings.entity_marker
    titles: List[str] = []
    chunk: List[Dict[str, Any]] = []
    chunk_labels: List[Labels] = []
    progress = None
    if show_progress:
        from tqdm import tqdm

        progress = tqdm(desc=f"reading {Path(source).name}", unit="doc", mininterval=2.0)
    with _gc_paused():
        for i, doc in enumerate(documents):
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
        raise ValidationError(source, validator.problems)
    dropped = validator.warnings
    if dropped:
        shown = "; ".join(dropped[:5]) + (f"; ... and {len(dropped) - 5} more" if len(dropped) > 5 else "")
        logger.warning("%s: dropped %d label(s) (h == t or duplicates): %s", source, len(dropped), shown)
    return titles, {"dropped_labels": len(dropped), "unknown_labels": dict(sorted((validator.unknown or {}).items()))}


def _warn_truncation(source: str, features: DocREFeatures, shown: int = 3) -> None:
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
                   source, stats["truncated_documents"], stats["documents"], stats["max_seq_length"], named, more,
                   stats["truncated_mentions"], stats["truncated_entities"])


def _report(source: str, features: DocREFeatures) -> None:
    """Log the documents read, and warn of labels left out and of truncation."""
    logger.info("%s: %d documents, %d without entities (no pairs)", source, len(features),
                features.stats["documents_without_entities"])
    unknown = features.stats.get("unknown_labels") or {}
    if unknown:
        logger.warning("%s: %d label(s) of %d relation(s) not in the label map (%s) are left out of the features",
                       source, sum(unknown.values()), len(unknown), ", ".join(f"{r} x{n}" for r, n in unknown.items()))
    _warn_truncation(source, features)


def _word_tokenizer(tokenizer: Any, settings: DocRESettings) -> WordTokenizer:
    """The tokenizer's WordTokenizer, after checking the settings' marker and length against it."""
    enc = WordTokenizer.of(tokenizer)
    enc.check_marker(settings.entity_marker)
    if settings.max_seq_length <= enc.n_prefix + enc.n_suffix:
        raise ValueError(f"max_seq_length={settings.max_seq_length} leaves no room for text after the special tokens")
    return enc


def _in_memory(source: str, build: Build, max_len: int) -> DocREFeatures:
    """The features `build` makes, held in memory."""
    sink = ColumnSink()
    titles, extra = build(sink)
    cols = sink.close()
    return DocREFeatures(cols, titles, {**compute_stats(cols, max_len), **extra}, path=source)


PairFilter = Callable[[Dict[str, Any]], Iterable[Tuple[int, int]]]  # a document -> its candidate (h, t) pairs


def entity_types(doc: Dict[str, Any]) -> List[set]:
    """The mention types of each entity of `doc`."""
    return [{m.get("type", "") for m in ent} for ent in doc["vertexSet"]]


def typed_pairs(doc: Dict[str, Any], pair_types: Sequence[Sequence[str]]) -> List[Tuple[int, int]]:
    """The (h, t) entity pairs of `doc` whose head has a mention of type A and tail one of type B for some [A, B]
    of `pair_types`, less the document's `excluded_pairs` (the one rule of typed candidate pairs)."""
    types = entity_types(doc)
    excluded = {tuple(p) for p in doc.get("excluded_pairs", [])}
    return [(h, t) for h, th in enumerate(types) for t, tt in enumerate(types)
            if h != t and (h, t) not in excluded and any(a in th and b in tt for a, b in pair_types)]


def type_pair_filter(pair_types: Sequence[Sequence[str]]) -> Optional[PairFilter]:
    """The pair filter keeping `typed_pairs` (None, every pair, when `pair_types` is empty)."""
    return (lambda doc: typed_pairs(doc, pair_types)) if pair_types else None


class CandidatePairs(Sequence):
    """Features restricted to each document's candidate pairs (a `pair_filter`): `hts` [n_kept, 2] in (h, t) order
    and `labels` re-indexed into it; everything else, and the corpus attributes, are the wrapped features'."""

    def __init__(self, base: DocREFeatures, hts: List[np.ndarray], label_pairs: List[np.ndarray]):
        self.base, self.hts, self.label_pairs = base, hts, label_pairs
        self.titles, self.cols, self.path, self.cache_path = base.titles, base.cols, base.path, base.cache_path
        n_pairs = sum(len(h) for h in hts)
        positive = sum(len(np.unique(p)) for p in label_pairs)
        self.stats = {**base.stats, "pairs": n_pairs, "positive_pairs": positive, "negative_pairs": n_pairs - positive}

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        f = self.base[i]
        i = i + len(self) if i < 0 else i
        f["hts"] = self.hts[i].copy()  # [n_kept, 2]
        f["labels"] = np.stack([self.label_pairs[i], f["labels"][:, 1]], axis=1)  # [n_pos, 2]
        return f


def _restrict_pairs(features: DocREFeatures, docs: Sequence[Any], pair_filter: PairFilter,
                    source: str) -> CandidatePairs:
    """Keep each document's candidate pairs; a label on another pair, or a pair that names no entity pair, is a
    problem (ValidationError naming the document)."""
    hts, label_pairs, problems = [], [], []
    for i, doc in enumerate(docs):
        n = int(features.cols["doc_n_entities"][i])
        kept = np.asarray(sorted(set(map(tuple, pair_filter(doc)))), dtype=np.int64).reshape(-1, 2)  # [k, 2]
        where = f"document {i} (title {features.titles[i]!r})"
        if ((kept < 0) | (kept >= n)).any() or (kept[:, 0] == kept[:, 1]).any():
            problems.append(f"{where}: field vertexSet: the pair filter gave pairs that are not two entities of "
                            f"the document's {n}")
            continue
        lookup = np.full(n * (n - 1), -1, dtype=np.int64)  # position in pair_index(n) -> kept row
        lookup[kept[:, 0] * (n - 1) + kept[:, 1] - (kept[:, 1] > kept[:, 0])] = np.arange(len(kept))
        rows = lookup[features[i]["labels"][:, 0]]  # [n_pos]
        if (rows < 0).any():
            full = pair_index(n)[features[i]["labels"][rows < 0, 0]]
            problems.append(f"{where}: field labels: relation(s) on pair(s) {full.tolist()[:5]} outside the "
                            f"candidate pairs")
        hts.append(kept)
        label_pairs.append(rows)
    if problems:
        raise ValidationError(source, problems)
    return CandidatePairs(features, hts, label_pairs)


MAX_ENTITIES = 250  # DocRED-style documents have a few dozen (Re-DocRED dev: at most 36)


def add_max_entities_arg(parser: Any) -> None:
    """--max_entities, as every command takes it (0: no limit)."""
    parser.add_argument("--max_entities", type=COUNT_OR_ZERO, default=MAX_ENTITIES,
                        help=f"a document with more entities is an error naming it (default {MAX_ENTITIES}, 0: no "
                             f"limit; its E x (E - 1) pairs cost memory and time in proportion)")


def entity_cap_problem(n_entities: int, max_entities: Optional[int]) -> Optional[str]:
    """The words for a document of `n_entities` entities over the cap, or None within it (None: no cap)."""
    if max_entities is None or n_entities <= max_entities:
        return None
    return (f"{n_entities} entities, more than --max_entities {max_entities} ({n_entities * (n_entities - 1):,} "
            f"entity pairs, whose memory grows with their number)")


def check_max_entities(source: str, features: DocREFeatures, max_entities: Optional[int]) -> None:
    """ValidationError naming each document with more than `max_entities` entities (None: no limit)."""
    counts = features.cols["doc_n_entities"]  # [N]
    problems = [(i, entity_cap_problem(int(n), max_entities)) for i, n in enumerate(counts)]
    problems = [(i, p) for i, p in problems if p]
    if problems:
        raise ValidationError(source, [
            f"document {i} (title {features.titles[i]!r}): field vertexSet: {p}: check the document, or raise "
            f"--max_entities if it is meant" for i, p in problems[:10]])


def features_from_documents(docs: Iterable[Any], tokenizer: Any, settings: DocRESettings, *,
                            skip_unknown_relations: bool = False, source: str = "the documents",
                            show_progress: bool = False, pair_filter: Optional[PairFilter] = None,
                            max_entities: Optional[int] = None, report: bool = True) -> DocREFeatures:
    """Validated features of DocRED documents held in memory (dicts with title, sents, vertexSet and optional
    labels; other keys are ignored), one per document, with no file and no cache.

    Every rule of validation.py applies, as to a file: problems raise one ValidationError naming `source`, the
    document index and title and the field. An empty list gives empty features. Labels of relations outside the
    label map are problems, or with `skip_unknown_relations` left out and counted (see read_docred).
    With `pair_filter` (default: the typed pairs of `settings.pair_types`, if any), a document's pairs are only
    those it returns (`CandidatePairs`), not every ordered pair. A document with more than `max_entities` entities
    is a problem (None: no limit). `report=False` leaves out the log lines of what was read, truncated or left out
    (predict.py reports truncation against the user's own file instead).
    """
    if isinstance(docs, (str, bytes, dict)):
        raise ValidationError(source, [f"expected a list of documents, got {type(docs).__name__}"])
    enc = _word_tokenizer(tokenizer, settings)
    pair_filter = pair_filter or type_pair_filter(settings.pair_types)
    if pair_filter is not None:
        docs = list(docs)  # read again by the filter

    def build(sink: ColumnSink) -> Tuple[List[str], Dict[str, Any]]:
        return _build(source, docs, enc, settings, sink, show_progress, skip_unknown_relations)

    features = _in_memory(source, build, settings.max_seq_length)
    check_max_entities(source, features, max_entities)
    if pair_filter is not None:
        features = _restrict_pairs(features, docs, pair_filter, source)
    if report:
        _report(source, features)
    return features


def read_docred(path: str | os.PathLike, tokenizer: Any, settings: DocRESettings,
                cache_dir: Optional[str | os.PathLike] = None, show_progress: bool = False, allow_empty: bool = False,
                skip_unknown_relations: bool = False, pair_filter: Optional[PairFilter] = None,
                max_entities: Optional[int] = None) -> DocREFeatures:
    """Validated features of a DocRED file, one per document (as features_from_documents makes them from its
    documents); memory-mapped from `cache_dir` when given.

    An existing cache is read from `cache_dir` even when the folder is read-only; a new one is built where
    `feature_cache.resolve_cache_dir` says. A file without documents raises ValidationError unless `allow_empty`.
    Labels of relations outside `settings.rel2id` are problems, or with `skip_unknown_relations` (scoring a model on
    a file with relations it was not trained on) left out of the features, counted in `stats["unknown_labels"]`
    and warned of. `pair_filter` (default: `settings.pair_types`' typed pairs, if any) keeps only each document's
    candidate pairs, as in features_from_documents (the cache holds every pair; the filter applies after it).
    """
    path = str(path)
    enc = _word_tokenizer(tokenizer, settings)
    pair_filter = pair_filter or type_pair_filter(settings.pair_types)

    def build(sink: ColumnSink) -> Tuple[List[str], Dict[str, Any]]:  # reads the file only when there is no cache
        return _build(path, iter_documents(path, read_text(path)), enc, settings, sink, show_progress,
                      skip_unknown_relations)

    features = None
    if cache_dir is not None:
        key = cache_key(file_sha256(path), enc, settings.rel2id, settings.max_seq_length, settings.entity_marker,
                        skip_unknown_relations)
        features = cached_features(cache_dir, f"{Path(path).stem}-{key[:16]}", key, path, build,
                                   settings.max_seq_length)
    if features is None:
        features = _in_memory(path, build, settings.max_seq_length)
    if not allow_empty:
        check_not_empty(path, len(features))
    check_max_entities(path, features, max_entities)
    if pair_filter is not None:
        features = _restrict_pairs(features, iter_documents(path, read_text(path)), pair_filter, path)
    _report(path, features)
    return features


# ----------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(allow_abbrev=False,
                                     description="Preprocess a DocRED file into cached features and print figures, "
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
    add_max_entities_arg(parser)
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

    from settings import DocRESettings

    rel2id = load_rel2id(args.data_dir, args.rel2id, args.rel_info)
    check_num_class(rel2id, args.num_class)
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(args.model_name_or_path))
    off = args.no_cache or (args.cache_dir or "").lower() == "none"
    cache_dir = None if off else (args.cache_dir or os.path.join(args.data_dir, ".cache"))
    settings = DocRESettings(rel2id=rel2id, max_seq_length=args.max_seq_length,
                             entity_marker=None if args.no_entity_marker else "*")
    start = time.perf_counter()
    features = read_docred(os.path.join(args.data_dir, args.file), tokenizer, settings, cache_dir=cache_dir,
                           max_entities=args.max_entities or None,
                           show_progress=True)
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
