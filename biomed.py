"""Biomedical corpora (CDR, GDA) to DocRED-form documents: PubTator files and EoG's `.data` files.

Both readers return the same document form (the DocRED fields prepro takes, see ARCHITECTURE.md):
    title      the PMID
    sents      tokens per sentence
    vertexSet  entities = identifier clusters (one entity per MeSH/Entrez identifier), in the order of their first
               mention; each mention {name, pos [start, end) in its sentence, sent_id, type, id}
    labels     [{h, t, r ("CID" or "GDA"), evidence: []}]
    excluded_pairs  [[h, t], ...] only from `.data` files: the pairs EoG's hypernym filter marked `not_include`
                    (ATLOP leaves them out of the candidates)

PubTator (`PMID|t|title`, `PMID|a|abstract`, mention lines `PMID<TAB>start<TAB>end<TAB>text<TAB>type<TAB>ids[<TAB>
individual texts]` with character offsets into title + " " + abstract, relation lines `PMID<TAB>CID<TAB>id1<TAB>id2`,
a blank line between documents). Title and abstract are tokenized and split into sentences by spaCy separately (the
title is never joined to the abstract's first sentence, as EoG's GENIA pipeline keeps it apart). A composite
mention ("renal and hepatic failure", `D058186|D017093`) is a mention of each of its identifiers, with the whole
span; a mention whose only identifier is `-1` is ungrounded and left out of the entities (counted and reported,
as EoG leaves such entities out of every pair). A mention boundary inside a spaCy token splits that token there; a
mention across a spaCy sentence boundary joins the two sentences; both are counted and reported.

`.data` (EoG's `process.py`, the files ATLOP's `read_cdr`/`read_gda` read), one document per line, tab-separated:
    PMID, text (sentences joined by "|", tokens by " "), then 17 fields per candidate pair:
    relation ("1:CID:2", "1:NR:2", or "not_include"), direction (L2R/R2L), CROSS/NON-CROSS, the closest mention
    spans of the two arguments ("a-b" twice), then for argument 1 and argument 2 each: identifiers ("|"-joined),
    mention texts ("|"-joined), type, mention start word ids (":"-joined, counted over the whole document), end word
    ids (exclusive), sentence ids. Argument 1 has the first type of the pair (Chemical, Gene): it is the head.
Only entities of some pair are written to `.data`, so `keep_paired` makes a PubTator document its `.data` twin.

Files are UTF-8 (a leading byte-order mark is ignored; a bad byte is a UserError naming its line, PMID and offset);
relation names are the benchmarks' (CID, GDA). Bad input raises `BioFormatError` (a UserError): the file, document
(index and PMID), line and field.
"""
from __future__ import annotations

import bisect
import itertools
import logging
import re
from dataclasses import dataclass
from typing import Any, Callable, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np

import prepro
import utils
from utils import UserError

logger = logging.getLogger(__name__)

MAX_LISTED = 20  # problems listed in one error message
PAIR_FIELDS = 17  # fields per candidate pair in a .data line
TITLE_LINE = re.compile(r"^([^|\t]+)\|([ta])\|(.*)$")
LEADING_PMID = re.compile(rb"(\w+)[|\t]")  # a PubTator or .data line's PMID, in bytes that may not decode
SPACY_MAX_LENGTH = 1_000_000  # spaCy's default nlp.max_length: a longer text stops it with error E088


@dataclass(frozen=True)
class BioDataset:
    """One benchmark: its relation id, the entity types of its candidate pairs (head, tail) and the relation's name
    (which model folders record, so that predictions read it instead of the id)."""
    name: str
    relation: str
    head_type: str
    tail_type: str
    relation_name: str

    @property
    def rel2id(self) -> Dict[str, int]:
        return {"Na": 0, self.relation: 1}

    @property
    def pair_types(self) -> List[List[str]]:
        """The candidate pairs' [[head type, tail type]], as `DocRESettings.pair_types` records them."""
        return [[self.head_type, self.tail_type]]


DATASETS = {"cdr": BioDataset("cdr", "CID", "Chemical", "Disease", "chemical-induced disease"),
            "gda": BioDataset("gda", "GDA", "Gene", "Disease", "gene-disease association")}
RELATIONS = tuple(d.relation for d in DATASETS.values())  # the relation names a file may carry


class BioFormatError(UserError):
    """A PubTator or .data file with problems; the message lists them (file, document, line, field)."""

    def __init__(self, path: str, kind: str, problems: List[str]):
        self.path, self.problems = str(path), list(problems)
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more problem(s)" if len(problems) > MAX_LISTED else ""
        super().__init__(f"{path}: {len(problems)} problem(s) in this {kind} file:\n  {listed}{more}")


@dataclass
class Mention:
    """One PubTator mention line, character offsets into title + " " + abstract."""
    start: int
    end: int
    text: str
    type: str
    ids: List[str]  # grounded identifiers, "-1" removed, each once
    line: int


@dataclass
class Abstract:
    """One PubTator document as read, before tokenization."""
    pmid: str
    index: int
    line: int
    title: Optional[str] = None
    abstract: Optional[str] = None
    mentions: Optional[List[Mention]] = None
    relations: Optional[List[Tuple[str, str, str, int]]] = None  # (relation, id1, id2, line)
    ungrounded: int = 0

    @property
    def text(self) -> str:
        return f"{self.title} {self.abstract}"

    def where(self, line: int) -> str:
        return f"document {self.index} (PMID {self.pmid}), line {line}"


# ----------------------------------------------------------------------------- format


def text_lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line number, line without its end) of a UTF-8 file, a leading byte-order mark dropped; UserError for a
    file that cannot be read or does not decode."""
    try:
        with open(path, encoding="utf-8-sig") as f:
            for n, raw in enumerate(f, 1):
                yield n, raw.rstrip("\n").rstrip("\r")
    except OSError as e:
        raise UserError(f"{path}: cannot read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise UserError(utils.utf8_problem(path, pmid_at)) from None


def pmid_at(data: bytes, offset: int) -> str:
    """` (PMID p)` of the line holding byte `offset` of a PubTator or .data file (its leading field), else ""."""
    pmid = LEADING_PMID.match(data, data.rfind(b"\n", 0, offset) + 1)
    return f" (PMID {pmid.group(1).decode()})" if pmid else ""


def detect_format(path: str) -> str:
    """"pubtator" or "data", from the first non-empty line of the file."""
    first = next((line for _, line in text_lines(path) if line.strip()), "")
    if TITLE_LINE.match(first):
        return "pubtator"
    fields = first.split("\t")
    if len(fields) >= 2 and (len(fields) - 2) % PAIR_FIELDS == 0:
        return "data"
    raise UserError(f"{path}: neither a PubTator file (first line `PMID|t|title`) nor an EoG .data file (PMID, "
                    f"text, then {PAIR_FIELDS} fields per pair); first line: {first[:80]!r}")


def looks_like_pubtator(path: str) -> bool:
    """Whether a text file starts as a PubTator file does: a `PMID|t|title` line, then `PMID|a|` of the same PMID
    (plain text with such lines is unlikely; `predict.py` tells its `.txt` inputs apart by this)."""
    try:
        first = list(itertools.islice((line for _, line in text_lines(path) if line.strip()), 2))
    except UserError:
        return False  # the text reader reports it
    m = [TITLE_LINE.match(line) for line in first]
    return len(m) == 2 and all(m) and m[0].group(1) == m[1].group(1) and (m[0].group(2), m[1].group(2)) == ("t", "a")


def read_corpus(path: str, nlp_loader: Callable[[], Any], log: bool = True, drop_unmatched: bool = False
                ) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """Documents of a PubTator or .data file (told apart by content), and the reader's counts."""
    if detect_format(path) == "pubtator":
        return read_pubtator(path, nlp_loader(), log, drop_unmatched)
    return read_data(path, log)


# ----------------------------------------------------------------------------- PubTator


def _parse_mention(fields: List[str], doc: Abstract, n: int, problems: List[str]) -> None:
    """Add a mention line's mention to `doc`, or record why it is bad."""
    where = doc.where(n)
    if doc.title is None or doc.abstract is None:
        problems.append(f"{where}: field abstract: a mention line before the title and abstract lines")
        return
    try:
        start, end = int(fields[1]), int(fields[2])
    except ValueError:
        problems.append(f"{where}: field offsets: not integers (got {fields[1]!r}, {fields[2]!r})")
        return
    text = doc.text
    if not 0 <= start < end <= len(text):
        problems.append(f"{where}: field offsets: [{start}, {end}) is not a span of the text "
                        f"(title + ' ' + abstract, {len(text)} characters)")
        return
    if text[start:end] != fields[3]:
        problems.append(f"{where}: field text: {fields[3]!r} differs from the text at its offsets "
                        f"{text[start:end]!r}")
        return
    if not fields[3].strip():  # it would reach the model as an empty span of no token
        problems.append(f"{where}: field text: the mention covers only whitespace")
        return
    ids = list(dict.fromkeys(i.strip() for i in fields[5].split("|") if i.strip() not in ("", "-1")))
    if not ids:
        doc.ungrounded += 1
        return
    doc.mentions.append(Mention(start, end, fields[3], fields[4], ids, n))


def _parse_text(doc: Abstract, kind: str, body: str, n: int, problems: List[str]) -> None:
    """Set the title (`kind` "t") or abstract ("a") of `doc` from its line, recording what is wrong with it."""
    field = "title" if kind == "t" else "abstract"
    if len(body) > SPACY_MAX_LENGTH:  # refused before spaCy stops on it
        problems.append(f"{doc.where(n)}: field {field}: {len(body):,} characters, more than spaCy's limit of "
                        f"{SPACY_MAX_LENGTH:,} (its max_length)")
    if kind == "t":
        if doc.title is not None or doc.abstract is not None:
            problems.append(f"{doc.where(n)}: field title: a second title line, or one after the abstract")
        doc.title = body
        return
    if doc.title is None:
        problems.append(f"{doc.where(n)}: field title: the abstract line comes before a title")
        doc.title = ""
    doc.abstract = body


def parse_pubtator(path: str, drop_unmatched: bool = False) -> Tuple[List[Abstract], int]:
    """The abstracts of a PubTator file, checked line by line (BioFormatError lists every problem), and how many
    relations naming an identifier without a mention were dropped (`drop_unmatched`; otherwise they are problems:
    the sample set has one, PMID 2385256's D008278 for the D008274 of its mentions)."""
    docs: List[Abstract] = []
    dropped = 0
    problems: List[str] = []
    current: Optional[Abstract] = None
    for n, line in text_lines(path):
        if not line.strip():
            current = None
            continue
        m = TITLE_LINE.match(line)
        if m:
            pmid, kind, body = m.groups()
            if current is None or current.pmid != pmid:
                current = Abstract(pmid, len(docs), n, mentions=[], relations=[])
                docs.append(current)
            _parse_text(current, kind, body, n, problems)
            continue
        fields = line.split("\t")
        if current is None:
            problems.append(f"line {n}: field title: an annotation line outside a document (no `PMID|t|` line "
                            f"before it)")
            continue
        if fields[0] != current.pmid:
            problems.append(f"{current.where(n)}: field PMID: {fields[0]!r} in a document of PMID {current.pmid}")
        elif len(fields) in (6, 7):
            _parse_mention(fields, current, n, problems)
        elif len(fields) == 4 and fields[1] not in RELATIONS:
            problems.append(f"{current.where(n)}: field relation: {fields[1]!r} is not a relation of CDR or GDA "
                            f"({', '.join(RELATIONS)})")
        elif len(fields) == 4:
            current.relations.append((fields[1], fields[2], fields[3], n))
        else:
            problems.append(f"{current.where(n)}: field columns: {len(fields)} tab-separated columns (a mention "
                            f"line has 6 or 7, a relation line 4)")
    seen: Dict[str, int] = {}
    for d in docs:
        if d.abstract is None:
            problems.append(f"{d.where(d.line)}: field abstract: no `{d.pmid}|a|` line")
        first = seen.setdefault(d.pmid, d.index)
        if first != d.index:
            problems.append(f"{d.where(d.line)}: field PMID: the same PMID as document {first}")
        known = {i for m in d.mentions for i in m.ids}
        kept = []
        for rel, a, b, n in d.relations:
            missing = [arg for arg in (a, b) if arg not in known]
            if missing and drop_unmatched:
                dropped += 1
                logger.warning("%s: %s: relation %s %s -> %s dropped: no mention has identifier %s", path,
                               d.where(n), rel, a, b, " or ".join(missing))
            elif missing:
                problems.append(f"{d.where(n)}: field relation: {rel} names identifier {missing[0]!r}, which no "
                                f"mention of the document has (--drop_unmatched_relations leaves such relations out)")
            else:
                kept.append((rel, a, b, n))
        d.relations = kept
    if problems:
        raise BioFormatError(path, "PubTator", problems)
    return docs, dropped


def _tokens(nlp: Any, doc: Abstract) -> Tuple[List[Tuple[int, int]], List[int]]:
    """Character spans of the non-space spaCy tokens of title and abstract, and each token's sentence number."""
    spans: List[Tuple[int, int]] = []
    sents: List[int] = []
    n_sent = 0
    for offset, part in ((0, doc.title), (len(doc.title) + 1, doc.abstract)):
        splitters = ("tok2vec", "parser", "senter", "sentencizer")
        with nlp.select_pipes(enable=[p for p in splitters if p in nlp.pipe_names]):
            sdoc = nlp(part)
        for sent in sdoc.sents:
            toks = [(offset + t.idx, offset + t.idx + len(t.text)) for t in sent if not t.is_space]
            if toks:
                spans += toks
                sents += [n_sent] * len(toks)
                n_sent += 1
    return spans, sents


def _split_at(spans: List[Tuple[int, int]], sents: List[int], cuts: Sequence[int]
              ) -> Tuple[List[Tuple[int, int]], List[int], int]:
    """Tokens split at every cut strictly inside them; returns the new spans, their sentences, tokens split."""
    out, out_sents, n_split = [], [], 0
    for (a, b), s in zip(spans, sents):
        inner = cuts[bisect.bisect_right(cuts, a):bisect.bisect_left(cuts, b)]
        n_split += bool(inner)
        bounds = [a, *inner, b]
        out += list(zip(bounds[:-1], bounds[1:]))
        out_sents += [s] * (len(bounds) - 1)
    return out, out_sents, n_split


def _merge_sentences(sents: List[int], token_spans: List[Tuple[int, int]]) -> Tuple[List[int], int]:
    """Sentence numbers after joining the sentences each mention's tokens [i, j] span; returns how many joins."""
    parent = list(range(max(sents, default=-1) + 1))
    joins = 0
    for i, j in token_spans:
        for s in range(sents[i], sents[j]):
            if parent[s + 1] != parent[s]:
                joins += 1
            parent[s + 1] = parent[s]
    renumber = {p: k for k, p in enumerate(dict.fromkeys(parent))}
    return [renumber[parent[s]] for s in sents], joins


def _document(nlp: Any, doc: Abstract, counts: Dict[str, int]) -> Dict[str, Any]:
    """One abstract to the DocRED form: spaCy tokens split at mention boundaries, entities by identifier."""
    spans, sents = _tokens(nlp, doc)
    cuts = sorted({x for m in doc.mentions for x in (m.start, m.end)})
    inside = {x for a, b in spans for x in cuts[bisect.bisect_right(cuts, a):bisect.bisect_left(cuts, b)]}
    counts["mentions_off_token_boundaries"] += sum(m.start in inside or m.end in inside for m in doc.mentions)
    spans, sents, n_split = _split_at(spans, sents, cuts)
    starts = [a for a, _ in spans]
    ends = [b for _, b in spans]
    # [first, last] token each mention overlaps (after the split: exactly its tokens)
    token_spans = [(bisect.bisect_right(ends, m.start), bisect.bisect_left(starts, m.end) - 1) for m in doc.mentions]
    sents, joins = _merge_sentences(sents, token_spans)
    counts["tokens_split"] += n_split
    counts["sentences_joined"] += joins
    counts["ungrounded_mentions"] += doc.ungrounded
    text = doc.text
    first_of_sent = {s: k for k, s in reversed(list(enumerate(sents)))}
    words = [[] for _ in range(len(first_of_sent))]
    for (a, b), s in zip(spans, sents):
        words[s].append(text[a:b])
    entities: Dict[str, Dict[Tuple[int, int, int], Dict[str, Any]]] = {}
    for m, (i, j) in zip(doc.mentions, token_spans):
        s = sents[i]
        pos = [i - first_of_sent[s], j + 1 - first_of_sent[s]]
        for ident in m.ids:
            entities.setdefault(ident, {}).setdefault((s, *pos), {"name": m.text, "pos": pos, "sent_id": s,
                                                                   "type": m.type, "id": ident})
    return _assemble(doc.pmid, words, entities, [(r, a, b) for r, a, b, _ in doc.relations])


def _assemble(title: str, words: List[List[str]], entities: Dict[str, Dict[Tuple[int, int, int], Dict[str, Any]]],
              relations: Iterable[Tuple[str, str, str]], excluded: Iterable[Tuple[str, str]] = ()) -> Dict[str, Any]:
    """The DocRED-form document: entities in the order of their first mention, mentions in text order."""
    order = sorted(entities, key=lambda e: (min(entities[e]), e))
    index = {e: k for k, e in enumerate(order)}
    labels = [{"h": index[a], "t": index[b], "r": r, "evidence": []} for r, a, b in dict.fromkeys(relations)]
    doc = {"title": title, "sents": words, "vertexSet": [[entities[e][k] for k in sorted(entities[e])] for e in order],
           "labels": labels}
    pairs = [[index[a], index[b]] for a, b in dict.fromkeys(excluded)]
    if pairs:
        doc["excluded_pairs"] = pairs
    return doc


def read_pubtator(path: str, nlp: Any, log: bool = True, drop_unmatched: bool = False
                  ) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """The documents of a PubTator file, and the counts of what alignment changed (reported in the log)."""
    abstracts, dropped = parse_pubtator(path, drop_unmatched)
    docs, counts = abstract_documents(abstracts, nlp)
    counts = {"documents": len(abstracts), "dropped_relations": dropped, **counts}
    if log:
        _report(path, counts)
    return docs, counts


def abstract_documents(abstracts: Sequence[Abstract], nlp: Any) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """The DocRED-form documents of parsed abstracts, and the counts of what aligning them to tokens changed."""
    counts = {"mentions_off_token_boundaries": 0, "tokens_split": 0, "sentences_joined": 0, "ungrounded_mentions": 0}
    docs = [_document(nlp, a, counts) for a in abstracts]
    counts["relations"] = sum(len(d["labels"]) for d in docs)
    return docs, counts


def _report(path: str, counts: Dict[str, int]) -> None:
    """Log what a reader read, and warn of what alignment changed."""
    logger.info("%s: %s", path, ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in counts.items()))
    changed = {k: counts.get(k, 0) for k in ("mentions_off_token_boundaries", "tokens_split", "sentences_joined",
                                             "ungrounded_mentions", "name_mismatches")}
    if any(changed.values()):
        logger.warning("%s: %d mention(s) with a boundary inside a spaCy token, %d token(s) split there, %d sentence "
                       "boundary(ies) inside a mention removed (sentences joined), %d ungrounded mention(s) "
                       "(identifier -1) left out of the entities, %d .data mention name(s) differ from their tokens",
                       path, *changed.values())


# ----------------------------------------------------------------------------- EoG .data


def _argument(fields: Sequence[str], sent_start: np.ndarray, where: str, problems: List[str]
              ) -> Optional[Tuple[str, str, List[Tuple[int, int, int, str]]]]:
    """(identifier, type, mentions (sentence, start, end in sentence, name)) of one pair argument's six fields."""
    ident, names, etype, starts, ends, sent_ids = fields
    try:
        s, e, k = ([int(x) for x in v.split(":")] for v in (starts, ends, sent_ids))
    except ValueError:
        problems.append(f"{where}: field mention offsets: not ':'-joined integers ({starts!r}, {ends!r}, "
                        f"{sent_ids!r})")
        return None
    names_l = names.split("|")
    if not len(s) == len(e) == len(k) == len(names_l):
        problems.append(f"{where}: field mentions of {ident!r}: {len(names_l)} names, {len(s)} starts, {len(e)} ends, "
                        f"{len(k)} sentence ids")
        return None
    mentions = []
    n_words = int(sent_start[-1])
    for a, b, sid, name in zip(s, e, k, names_l):
        if not (0 <= a < b <= n_words and 0 <= sid < len(sent_start) - 1
                and sent_start[sid] <= a and b <= sent_start[sid + 1]):
            problems.append(f"{where}: field mention offsets of {ident!r}: words [{a}, {b}) are not inside sentence "
                            f"{sid} (the text has {n_words} words, {len(sent_start) - 1} sentences)")
            return None
        mentions.append((sid, a - int(sent_start[sid]), b - int(sent_start[sid]), name))
    return ident, etype, mentions


def _data_document(line: str, index: int, n: int, problems: List[str], counts: Dict[str, int]
                   ) -> Optional[Dict[str, Any]]:
    """One .data line to the DocRED form, or None after recording its problems."""
    fields = line.split("\t")
    pmid = fields[0]
    where = f"document {index} (PMID {pmid}), line {n}"
    if len(fields) < 2 or (len(fields) - 2) % PAIR_FIELDS:
        problems.append(f"{where}: field pairs: {len(fields) - 2} fields after PMID and text, not a multiple of "
                        f"{PAIR_FIELDS}")
        return None
    words = [s.split(" ") for s in fields[1].split("|")]
    sent_start = np.concatenate([[0], np.cumsum([len(s) for s in words])])  # [n_sents + 1]
    flat = [w for s in words for w in s]
    entities: Dict[str, Dict[Tuple[int, int, int], Dict[str, Any]]] = {}
    relations, excluded = [], []
    for p in range(2, len(fields), PAIR_FIELDS):
        chunk = fields[p:p + PAIR_FIELDS]
        args = [_argument(chunk[5:11], sent_start, f"{where}, pair {(p - 2) // PAIR_FIELDS}", problems),
                _argument(chunk[11:17], sent_start, f"{where}, pair {(p - 2) // PAIR_FIELDS}", problems)]
        if None in args:
            continue
        for ident, etype, mentions in args:
            if ident in entities:
                continue
            entities[ident] = {}
            for sid, a, b, name in mentions:
                start = int(sent_start[sid]) + a
                if "".join(flat[start:start + b - a]) != name.replace(" ", ""):
                    counts["name_mismatches"] += 1
                entities[ident].setdefault((sid, a, b), {"name": name, "pos": [a, b], "sent_id": sid, "type": etype,
                                                         "id": ident})
        rel = chunk[0]
        if rel == "not_include":
            excluded.append((args[0][0], args[1][0]))
        elif not (rel.startswith("1:") and rel.endswith(":2")) or rel[2:-2] not in ("NR", *RELATIONS):
            problems.append(f"{where}: field relation: {rel!r} is not 1:<relation>:2 (relation NR, "
                            f"{', '.join(RELATIONS)}) or not_include")
        elif rel != "1:NR:2":
            relations.append((rel[2:-2], args[0][0], args[1][0]))
    return _assemble(pmid, words, entities, relations, excluded)


def read_data(path: str, log: bool = True) -> Tuple[List[Dict[str, Any]], Dict[str, int]]:
    """The documents of an EoG .data file (ATLOP's CDR and GDA input), and its counts."""
    problems: List[str] = []
    counts = {"documents": 0, "name_mismatches": 0}
    docs = []
    for n, line in text_lines(path):
        if line.strip():
            docs.append(_data_document(line, len(docs), n, problems, counts))
    if problems:
        raise BioFormatError(path, "EoG .data", problems)
    counts.update(documents=len(docs), relations=sum(len(d["labels"]) for d in docs))
    if log:
        _report(path, counts)
    return docs, counts


# ----------------------------------------------------------------------------- candidate pairs


def typed_pairs(doc: Dict[str, Any], dataset: BioDataset) -> List[Tuple[int, int]]:
    """The candidate (head, tail) pairs: a head-type entity with a tail-type one, less the excluded pairs."""
    return prepro.typed_pairs(doc, dataset.pair_types)


def pair_filter(dataset: BioDataset) -> prepro.PairFilter:
    """prepro's `pair_filter` for a dataset: each document's typed candidate pairs (what a model trained on it
    applies by itself, from `DocRESettings.pair_types`)."""
    return prepro.type_pair_filter(dataset.pair_types)


def keep_paired(doc: Dict[str, Any], dataset: BioDataset) -> Dict[str, Any]:
    """The document with only the entities of some candidate, excluded or labelled pair (what a .data file holds;
    a label outside the candidate pairs stays, for prepro's pair filter to report)."""
    pairs = typed_pairs(doc, dataset) + [tuple(p) for p in doc.get("excluded_pairs", [])] + \
        [(lab["h"], lab["t"]) for lab in doc.get("labels", [])]
    keep = sorted({e for p in pairs for e in p})
    new = {old: k for k, old in enumerate(keep)}
    out = {**doc, "vertexSet": [doc["vertexSet"][e] for e in keep],
           "labels": [{**lab, "h": new[lab["h"]], "t": new[lab["t"]]} for lab in doc.get("labels", [])]}
    if "excluded_pairs" in doc:
        out["excluded_pairs"] = [[new[h], new[t]] for h, t in doc["excluded_pairs"]]
    return out


def is_intra(doc: Dict[str, Any], h: int, t: int) -> bool:
    """Whether some mention of h and some mention of t share a sentence (EoG's NON-CROSS)."""
    ents = doc["vertexSet"]
    return bool({m["sent_id"] for m in ents[h]} & {m["sent_id"] for m in ents[t]})


# ----------------------------------------------------------------------------- scores


def pair_f1(pred: np.ndarray, gold: np.ndarray) -> Dict[str, float]:
    """ATLOP's train_bio.py scores (percent) of boolean relation predictions `pred` [P] against `gold` [P]:
    p = tp / (tp + fp + 1e-5), r = tp / (tp + fn + 1e-5), f1 = 2pr / (p + r + 1e-5)."""
    tp, fp, fn = int((pred & gold).sum()), int((pred & ~gold).sum()), int((~pred & gold).sum())
    p, r = tp / (tp + fp + 1e-5), tp / (tp + fn + 1e-5)
    return {"precision": 100 * p, "recall": 100 * r, "f1": 100 * 2 * p * r / (p + r + 1e-5),
            "n_pred": tp + fp, "n_gold": tp + fn, "n_correct": tp}


def pair_scores(pred: np.ndarray, gold: np.ndarray, intra: np.ndarray) -> Dict[str, float]:
    """F1, P, R over all candidate pairs, and F1 of the intra- and inter-sentence pairs (`intra` [P] bool)."""
    scores = pair_f1(pred, gold)
    for name, part in (("intra", intra), ("inter", ~intra)):
        sub = pair_f1(pred[part], gold[part])
        scores.update({f"{name}_f1": sub["f1"], f"{name}_precision": sub["precision"],
                       f"{name}_recall": sub["recall"], f"{name}_n_gold": sub["n_gold"]})
    return scores


def candidate_table(docs: Sequence[Dict[str, Any]], dataset: BioDataset
                    ) -> Tuple[List[Tuple[int, int, int]], np.ndarray, np.ndarray]:
    """Every candidate pair of the documents as (document index, head, tail) [P], whether it is labelled [P] and
    whether it is intra-sentence [P]: what a pair F1 is counted over. A label of another relation is a UserError."""
    pairs, gold, intra = [], [], []
    for i, d in enumerate(docs):
        other = sorted({lab["r"] for lab in d["labels"]} - {dataset.relation})
        if other:
            raise UserError(f"document {i} (PMID {d['title']}): field labels: relation {other[0]!r}, not "
                            f"{dataset.name}'s {dataset.relation}")
        positive = {(lab["h"], lab["t"]) for lab in d["labels"]}
        for h, t in typed_pairs(d, dataset):
            pairs.append((i, h, t))
            gold.append((h, t) in positive)
            intra.append(is_intra(d, h, t))
    return pairs, np.array(gold, dtype=bool), np.array(intra, dtype=bool)


def dataset_of(pair_types: Sequence[Sequence[str]]) -> BioDataset:
    """The benchmark whose candidate pairs a model's `pair_types` are."""
    for dataset in DATASETS.values():
        if dataset.pair_types == [list(p) for p in pair_types]:
            return dataset
    raise UserError(f"no biomedical dataset has the candidate pairs {list(pair_types)} (known: "
                    f"{', '.join(f'{d.name} {d.pair_types}' for d in DATASETS.values())})")


def text_blind_scores(docs: Sequence[Dict[str, Any]], dataset: BioDataset) -> Dict[str, Dict[str, float]]:
    """Scores of two rules that never read the text, over the candidate pairs: predict every pair, and predict the
    pairs with a head and a tail mention in one sentence (the bar a model must clear on a small sample)."""
    _, gold, intra = candidate_table(docs, dataset)  # [P], [P]
    return {"every_pair": pair_scores(np.ones_like(gold), gold, intra),
            "same_sentence": pair_scores(intra, gold, intra)}
