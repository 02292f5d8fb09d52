"""The rules a DocRED file must follow, each implemented once; problems name the file, document (index and title),
field and value.

`CorpusValidator` runs over the documents of one file as they are parsed: the rules of each document
(`validate_document`: title, sentences, mentions, labels and their evidence) and of the file (unique titles).
`check_not_empty` refuses a file without documents. Labels with h == t and duplicate labels are not errors: they
are dropped and reported as warnings.
"""
from __future__ import annotations

import os
from collections import Counter
from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from utils import UserError

MAX_LISTED_PROBLEMS = 20
MENTION_KEYS = ("name", "pos", "sent_id")
LABEL_KEYS = ("h", "t", "r")

Report = Callable[[str, str, Any], bool]  # bad(field, message, value) records a problem and returns False
# the kept labels of a document: (h, t, relation id) [n, 3] and each one's evidence sentence ids
Labels = Tuple[np.ndarray, List[List[int]]]


class ValidationError(UserError):
    """A file of DocRED-form documents with problems (DocRED JSON, or a biomedical file as read); the message lists
    them (file, document index and title, field, value)."""

    def __init__(self, path: str | os.PathLike, problems: List[str]):
        self.path = str(path)
        self.problems = list(problems)
        listed = "\n  ".join(self.problems[:MAX_LISTED_PROBLEMS])
        more = len(self.problems) - MAX_LISTED_PROBLEMS
        tail = f"\n  ... and {more} more problem(s)" if more > 0 else ""
        super().__init__(f"{self.path}: {len(self.problems)} problem(s) in its documents:\n  {listed}{tail}")


def short(value: Any, limit: int = 80) -> str:
    """repr(value), cut to `limit` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit] + "..."


INTS = (int, np.integer)  # NumPy integers come from documents built in code; `isinstance(x, INTS)` is inlined in
# the hot rules below, each with `type(x) is not bool`, because a call per value would cost a third of the time


def _is_unicode(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # JSON escapes can smuggle in lone surrogates
        return False
    return True


# ----------------------------------------------------------------------------- document rules


def check_sents(sents: Any, bad: Report) -> Optional[List[int]]:
    """Sentence lengths, or None after reporting why `sents` is unusable (not lists of valid Unicode strings)."""
    if not isinstance(sents, list) or not sents:
        bad("sents", "must be a non-empty list of sentences", sents)
        return None
    usable = True
    for s_i, sent in enumerate(sents):
        try:  # join raises TypeError on a non-string word; its text serves the Unicode check
            text = "".join(sent) if type(sent) is list else None
        except TypeError:
            text = None
        if text is None:
            usable = bad(f"sents[{s_i}]", "a sentence must be a list of strings", sent)
        elif not _is_unicode(text):
            for w_i, word in enumerate(sent):
                if not _is_unicode(word):
                    usable = bad(f"sents[{s_i}][{w_i}]", "not valid Unicode (a lone surrogate)", word)
    if not usable:
        return None
    lengths = [len(s) for s in sents]
    if sum(lengths) == 0:
        bad("sents", "the document has no words", sents)
        return None
    return lengths


def _bad_shape(obj: Any, keys: Tuple[str, ...], what: str, field: str, bad: Report) -> None:
    """Report that `obj` is not an object, or the first of `keys` it lacks."""
    if not isinstance(obj, dict):
        bad(field, f"{what} must be an object with keys {', '.join(keys)}", obj)
    else:
        bad(f"{field}.{next(k for k in keys if k not in obj)}", "missing key", sorted(obj))


def check_mention(m: Any, sent_lens: List[int], e_i: int, m_i: int, bad: Report) -> None:
    """Report every problem of mention `vertexSet[e_i][m_i]`: keys, types, sentence id and span in its sentence."""
    try:  # only a JSON object takes string keys
        name, pos, sent_id = m["name"], m["pos"], m["sent_id"]
    except (KeyError, TypeError):
        return _bad_shape(m, MENTION_KEYS, "a mention", f"vertexSet[{e_i}][{m_i}]", bad)
    if type(name) is not str:
        bad(f"vertexSet[{e_i}][{m_i}].name", "must be a string", name)
    kind = m.get("type", "")
    if type(kind) is not str:
        bad(f"vertexSet[{e_i}][{m_i}].type", "must be a string", kind)
    if not isinstance(sent_id, INTS) or type(sent_id) is bool:
        bad(f"vertexSet[{e_i}][{m_i}].sent_id", "must be an integer", sent_id)
    elif not 0 <= sent_id < len(sent_lens):
        bad(f"vertexSet[{e_i}][{m_i}].sent_id", f"out of range: the document has {len(sent_lens)} sentences",
            sent_id)
    elif not (isinstance(pos, (list, tuple)) and len(pos) == 2 and isinstance(pos[0], INTS)
              and isinstance(pos[1], INTS) and type(pos[0]) is not bool and type(pos[1]) is not bool):
        bad(f"vertexSet[{e_i}][{m_i}].pos", "must be a list [start, end) of two integers", pos)
    elif not 0 <= pos[0] < pos[1] <= sent_lens[sent_id]:
        bad(f"vertexSet[{e_i}][{m_i}].pos",
            f"not a span 0 <= start < end <= {sent_lens[sent_id]} (length of sentence {sent_id})", pos)


def check_entities(entities: Any, sent_lens: List[int], bad: Report) -> None:
    """Report every problem of `vertexSet`: a list of entities, each a non-empty list of mentions."""
    if not isinstance(entities, list):
        bad("vertexSet", "must be a list of entities", entities)
        return
    for e_i, ent in enumerate(entities):
        if not isinstance(ent, list) or not ent:
            bad(f"vertexSet[{e_i}]", "an entity must be a non-empty list of mentions", ent)
            continue
        for m_i, m in enumerate(ent):
            check_mention(m, sent_lens, e_i, m_i, bad)


def _check_evidence(evidence: Any, field: str, n_sents: int, bad: Report) -> bool:
    """Whether `evidence` is a list of sentence ids in [0, n_sents); report the first bad one otherwise."""
    if type(evidence) is not list:
        return bad(field, f"must be a list of sentence ids in [0, {n_sents})", evidence)
    for j, s in enumerate(evidence):
        if not (isinstance(s, INTS) and type(s) is not bool and 0 <= s < n_sents):
            return bad(f"{field}[{j}]", f"must be a sentence id in [0, {n_sents})", s)
    return True


def check_label(lab: Any, l_i: int, n_ent: int, n_sents: int, rel2id: Dict[str, int], bad: Report,
                warn: Callable[[str], None], kept: Dict[Tuple[int, int, int], List[int]],
                unknown: Optional[Counter] = None) -> None:
    """Check `labels[l_i]` and add it to `kept` ((h, t, relation id) -> evidence), or report why it is not kept;
    with `unknown`, a relation outside the label map is counted there and left out instead of being a problem."""
    try:
        h, t, r = lab["h"], lab["t"], lab["r"]
    except (KeyError, TypeError):
        return _bad_shape(lab, LABEL_KEYS, "a label", f"labels[{l_i}]", bad)
    ok = True
    if not (isinstance(h, INTS) and type(h) is not bool and 0 <= h < n_ent):
        ok = bad(f"labels[{l_i}].h", f"must be an entity index in [0, {n_ent})", h)
    if not (isinstance(t, INTS) and type(t) is not bool and 0 <= t < n_ent):
        ok = bad(f"labels[{l_i}].t", f"must be an entity index in [0, {n_ent})", t)
    rel = rel2id.get(r) if type(r) is str else None
    skipped = rel is None and unknown is not None and type(r) is str
    if rel is None and not skipped:
        ok = bad(f"labels[{l_i}].r", f"relation not in the label map ({len(rel2id)} classes)", r)
    elif rel == 0:
        ok = bad(f"labels[{l_i}].r", "the none class cannot be a positive label", r)
    evidence = lab.get("evidence", [])
    if (type(evidence) is not list or evidence) and not _check_evidence(evidence, f"labels[{l_i}].evidence",
                                                                         n_sents, bad):
        ok = False
    if not ok:
        return
    if skipped:
        unknown[r] += 1
        return
    key = (int(h), int(t), rel)  # int(): NumPy integers from a non-JSON source
    if h == t:
        warn(f"labels[{l_i}]: h == t == {h}; label dropped")
    elif key in kept:
        warn(f"labels[{l_i}]: duplicate label {short(lab)}; dropped")
    else:
        kept[key] = evidence


def check_labels(raw: Any, n_ent: int, n_sents: int, rel2id: Dict[str, int], bad: Report,
                 warn: Callable[[str], None], unknown: Optional[Counter] = None) -> Labels:
    """Kept labels [n, 3] of (h, t, relation id) with their evidence; h == t and duplicates are dropped with a
    warning (a duplicate keeps the first label's evidence)."""
    kept: Dict[Tuple[int, int, int], List[int]] = {}  # insertion-ordered
    if not isinstance(raw, list):
        bad("labels", "must be a list", raw)
    else:
        for l_i, lab in enumerate(raw):
            check_label(lab, l_i, n_ent, n_sents, rel2id, bad, warn, kept, unknown)
    return np.asarray(list(kept), dtype=np.int64).reshape(-1, 3), list(kept.values())


def no_labels() -> Labels:
    return np.zeros((0, 3), dtype=np.int64), []


def validate_document(doc: Any, index: int, rel2id: Dict[str, int],
                      unknown: Optional[Counter] = None) -> Tuple[List[str], List[str], Labels]:
    """Check one document; return (problems, warnings, kept labels with their evidence). With `unknown`, labels
    of relations outside the label map are counted there and left out (check_label)."""
    problems: List[str] = []
    warns: List[str] = []
    title = doc.get("title") if isinstance(doc, dict) else None
    where = f"document {index} (title {title!r})"

    def bad(field: str, msg: str, value: Any) -> bool:
        problems.append(f"{where}: field {field}: {msg} (got {short(value)})")
        return False

    if not isinstance(doc, dict):
        bad("<document>", "a document must be a JSON object", type(doc).__name__)
        return problems, warns, no_labels()
    missing = [key for key in ("title", "sents", "vertexSet") if key not in doc]
    for key in missing:
        bad(key, "missing key", sorted(doc))
    if missing:
        return problems, warns, no_labels()
    if not isinstance(title, str) or not _is_unicode(title):
        bad("title", "must be a string of valid Unicode", title)
    sent_lens = check_sents(doc["sents"], bad)
    if sent_lens is None:
        return problems, warns, no_labels()
    check_entities(doc["vertexSet"], sent_lens, bad)
    labels = no_labels()
    if doc.get("labels") is not None and isinstance(doc["vertexSet"], list):
        labels = check_labels(doc["labels"], len(doc["vertexSet"]), len(sent_lens), rel2id, bad,
                              lambda msg: warns.append(f"{where}: field {msg}"), unknown)
    return problems, warns, labels


# ----------------------------------------------------------------------------- file rules


class CorpusValidator:
    """The rules of one file over its documents in order: each document's, and titles unique across the file."""

    def __init__(self, rel2id: Dict[str, int], skip_unknown_relations: bool = False):
        self.rel2id = rel2id
        # labels of relations outside the label map: left out and counted here, or (None) problems
        self.unknown: Optional[Counter] = Counter() if skip_unknown_relations else None
        self.problems: List[str] = []
        self.warnings: List[str] = []  # labels dropped (h == t, duplicates)
        self.first_with_title: Dict[str, int] = {}

    def check(self, doc: Any, index: int) -> Labels:
        """Check document `index`, recording its problems and warnings; return its kept labels and evidence."""
        problems, warns, labels = validate_document(doc, index, self.rel2id, self.unknown)
        title = doc.get("title") if isinstance(doc, dict) else None
        if isinstance(title, str):
            first = self.first_with_title.setdefault(title, index)
            if first != index:
                problems.append(f"document {index} (title {title!r}): field title: the same title as document "
                                f"{first}; titles must be unique (predictions and scores are keyed by title)")
        self.problems += problems
        self.warnings += warns
        return labels


def check_documents(docs: Iterable[Any], source: str | os.PathLike, labels: bool = True) -> int:
    """Check DocRED documents held in memory by every rule, labels of any relation id (`labels=False`: labels left
    out, as for prediction); ValidationError naming `source`, each document and field; returns how many."""
    checker = CorpusValidator({"Na": 0}, skip_unknown_relations=True)
    n = 0
    for n, doc in enumerate(docs, 1):
        checker.check({k: v for k, v in doc.items() if k != "labels"} if not labels and isinstance(doc, dict)
                      else doc, n - 1)
    if checker.problems:
        raise ValidationError(source, checker.problems)
    return n


def check_not_empty(path: str | os.PathLike, n_documents: int) -> None:
    """Refuse a file without documents: nothing could be trained, tuned or scored on it."""
    if n_documents == 0:
        raise ValidationError(path, ["no documents: the file is empty or holds an empty list []; a DocRED file "
                                     "must hold at least one document"])
