"""End-to-end scores (issue #36) of predicted entities and relations against gold DocRED documents, in JEREX's
definitions (Eberts & Ulges, EACL 2021; their `jerex/evaluation/joint_evaluator.py`):

- mention: a predicted mention is correct when its character span equals a gold mention's;
- coreference: an entity cluster (the set of its mentions' spans) is correct when it equals a gold cluster exactly
  (singletons included; a cluster split in two or merged with another scores nothing);
- entity: cluster and type both exact;
- relation, relaxed (JEREX's "without entity type"): head cluster, tail cluster and relation all exact;
- relation, strict (JEREX's "with entity type", the figure their paper reports): as relaxed, and both entities'
  types exact too.

Each is micro precision, recall and F1 over the documents, each document's predictions and gold taken as sets.
Documents are output objects (`predict.py`'s format: entities with mentions' `char_start`/`char_end` and a `type`,
relations `h_idx`, `t_idx`, `r`); predictions are aligned to the gold by title, and spans are characters of the text
`text2doc.join_sents` makes from the gold sentences, so any system that writes that format is measured alike.

    python evaluation_e2e.py --gold dev.json --pred predictions.json
    python evaluation.py --end_to_end --truth dev.json --pred predictions.json [--json]   # the same scores
"""
from __future__ import annotations

import argparse
import sys
from typing import Any, Dict, FrozenSet, List, Sequence, Set, Tuple

import utils

LEVELS = ("mention", "coref", "entity", "relation_relaxed", "relation_strict")
Span = Tuple[int, int]


def doc_sets(out: Dict[str, Any]) -> Dict[str, Set[Any]]:
    """The five sets of one output object, one per level of `LEVELS`."""
    clusters: List[FrozenSet[Span]] = [frozenset((m["char_start"], m["char_end"]) for m in ent["mentions"])
                                       for ent in out["entities"]]
    types = [ent.get("type") for ent in out["entities"]]
    rels = [(r["h_idx"], r["t_idx"], r["r"]) for r in out.get("relations", [])]
    return {"mention": {s for c in clusters for s in c}, "coref": set(clusters),
            "entity": set(zip(clusters, types)),
            "relation_relaxed": {(clusters[h], clusters[t], r) for h, t, r in rels},
            "relation_strict": {((clusters[h], types[h]), (clusters[t], types[t]), r) for h, t, r in rels}}


def prf(tp: int, n_pred: int, n_gold: int) -> Dict[str, float]:
    """Precision, recall and F1 in percent (0 where undefined)."""
    p = 100.0 * tp / n_pred if n_pred else 0.0
    r = 100.0 * tp / n_gold if n_gold else 0.0
    return {"precision": p, "recall": r, "f1": 2 * p * r / (p + r) if p + r else 0.0}


def end_to_end_scores(gold: Sequence[Dict[str, Any]], pred: Sequence[Dict[str, Any]]) -> Dict[str, Dict[str, float]]:
    """{level: {precision, recall, f1, tp, n_pred, n_gold}} of predicted output objects against gold ones, aligned by
    title (a gold document without a prediction predicts nothing; a predicted title not in the gold is an error)."""
    by_title = {g["title"]: g for g in gold}
    extra = sorted({p["title"] for p in pred} - set(by_title))
    if extra:
        raise ValueError(f"{len(extra)} predicted document(s) have no gold document of that title, e.g. {extra[0]!r}")
    preds = {p["title"]: doc_sets(p) for p in pred}
    counts = {k: [0, 0, 0] for k in LEVELS}
    for title, g in by_title.items():
        gs = doc_sets(g)
        ps = preds.get(title, {k: set() for k in LEVELS})
        for k in LEVELS:
            c = counts[k]
            c[0], c[1], c[2] = c[0] + len(gs[k] & ps[k]), c[1] + len(ps[k]), c[2] + len(gs[k])
    return {k: {**prf(*c), "tp": c[0], "n_pred": c[1], "n_gold": c[2]} for k, c in counts.items()}


def gold_outputs(docs: Sequence[Dict[str, Any]]) -> List[Dict[str, Any]]:
    """Output objects of gold DocRED documents (char spans of `text2doc.join_sents`; an entity's type: its first
    mention's)."""
    import text2doc

    out = []
    for doc in docs:
        conv = text2doc.with_char_offsets(doc)
        ents = [{"type": ent[0].get("type"), "mentions": [{"char_start": m["char_start"], "char_end": m["char_end"]}
                                                          for m in ent]} for ent in conv["vertexSet"]]
        rels = [{"h_idx": r["h"], "t_idx": r["t"], "r": r["r"]} for r in doc.get("labels") or []]
        out.append({"title": doc["title"], "entities": ents, "relations": rels})
    return out


def _int_in(value: Any, low: int, high: int) -> bool:
    """Whether `value` is an integer (a JSON number, not a boolean) in [low, high)."""
    return type(value) is int and low <= value < high


def _entity_problems(ent: Any, e: int, n_chars: int) -> List[str]:
    """What is wrong with entity `e` of an output object: its mentions (a non-empty list of character spans of a
    text of `n_chars`), its type (a string or null)."""
    mentions = ent.get("mentions") if isinstance(ent, dict) else None
    problems = []
    if not isinstance(mentions, list) or not mentions:
        problems.append(f"field entities[{e}].mentions: must be a non-empty list of mentions (got {mentions!r:.80})")
    for k, m in enumerate(mentions if isinstance(mentions, list) else []):
        start, end = (m.get("char_start"), m.get("char_end")) if isinstance(m, dict) else (None, None)
        if not (_int_in(start, 0, n_chars) and _int_in(end, start + 1, n_chars + 1)):
            problems.append(f"field entities[{e}].mentions[{k}]: needs integers 0 <= char_start < char_end <= "
                            f"{n_chars}, the length of the gold document's text (got {m!r:.80})")
            break
    kind = ent.get("type") if isinstance(ent, dict) else None
    if kind is not None and not isinstance(kind, str):
        problems.append(f"field entities[{e}].type: must be a string (got {kind!r})")
    return problems


def _relation_problems(rel: Any, k: int, n_ents: int) -> List[str]:
    """What is wrong with relation `k` of an output object: its entity indices, its relation id (a string)."""
    if not isinstance(rel, dict) or "r" not in rel:
        return [f"field relations[{k}]: must be an object with h_idx, t_idx and r (got {rel!r:.80})"]
    bad = [f for f in ("h_idx", "t_idx") if not _int_in(rel.get(f), 0, n_ents)]
    if bad:
        return [f"field relations[{k}].{bad[0]}: must be an entity index in [0, {n_ents}) (got {rel.get(bad[0])!r})"]
    if not isinstance(rel["r"], str):
        return [f"field relations[{k}].r: must be a string (got {rel['r']!r})"]
    return []


def output_problems(out: Any, i: int, text_lengths: Dict[str, int]) -> List[str]:
    """What keeps output object `i` from being scored against gold documents whose texts have `text_lengths` (by
    title): its title, entities' mention spans and types, relations' entity indices and ids (each problem names the
    field)."""
    if not isinstance(out, dict):
        return [f"item {i}: an output object must be a JSON object (got {type(out).__name__})"]
    where = f"item {i} (title {out.get('title')!r})"
    if not isinstance(out.get("title"), str):
        return [f"{where}: field title: missing or not a string"]
    if out["title"] not in text_lengths:
        return [f"{where}: field title: no gold document has this title"]
    ents, rels = out.get("entities"), out.get("relations", [])
    if not isinstance(ents, list) or not isinstance(rels, list):
        return [f"{where}: field {'entities' if not isinstance(ents, list) else 'relations'}: must be a list"]
    problems = [p for e, ent in enumerate(ents) for p in _entity_problems(ent, e, text_lengths[out["title"]])]
    problems += [p for k, rel in enumerate(rels) for p in _relation_problems(rel, k, len(ents))]
    return [f"{where}: {p}" for p in problems]


def repeated_titles(pred: Sequence[Dict[str, Any]]) -> List[str]:
    """One problem per output object whose title an earlier one already has (the scores are keyed by title)."""
    first: Dict[str, int] = {}
    problems = []
    for i, out in enumerate(pred):
        j = first.setdefault(out["title"], i)
        if j != i:
            problems.append(f"item {i} (title {out['title']!r}): field title: the same title as item {j}; "
                            f"titles must be unique")
    return problems


def read_gold(path: str, what: str = "truth file") -> List[Dict[str, Any]]:
    """The documents of a gold DocRED file, checked by the validator's rules (any relation ids; labels' entity
    indices and evidence checked); a bad file is a ValidationError naming document and field, one that holds no list a
    UserError."""
    from validation import check_documents

    gold = utils.read_json(path, what)
    if not isinstance(gold, list):
        kind = "object" if isinstance(gold, dict) else type(gold).__name__
        raise utils.UserError(f"{what} {path}: must be a JSON list of DocRED documents, got a JSON {kind}")
    check_documents(gold, path)
    return gold


def score_files(gold_path: str, pred_path: str) -> Dict[str, Dict[str, float]]:
    """`end_to_end_scores` of predict.py's output JSON against a gold DocRED file, both checked first (a bad
    document or output object is named, with its field)."""
    import text2doc

    gold = read_gold(gold_path)
    pred = utils.read_json(pred_path, "prediction file")
    if not isinstance(pred, list):
        raise utils.UserError(f"prediction file {pred_path}: must hold a JSON list of output objects (predict.py's "
                              f"format), got {type(pred).__name__}")
    lengths = {doc["title"]: len(text2doc.join_sents(doc["sents"])[0]) for doc in gold}
    problems = [p for i, out in enumerate(pred) for p in output_problems(out, i, lengths)] or repeated_titles(pred)
    if problems:
        raise utils.UserError(f"prediction file {pred_path}: {len(problems)} problem(s)"
                              f"{', the first 5' if len(problems) > 5 else ''}: " + "; ".join(problems[:5]))
    return end_to_end_scores(gold_outputs(gold), pred)


def format_scores(scores: Dict[str, Dict[str, float]]) -> str:
    """One line per level: P, R, F1 and the counts."""
    return "\n".join(f"{k:18s} P {s['precision']:6.2f}  R {s['recall']:6.2f}  F1 {s['f1']:6.2f}  "
                     f"({s['tp']} of {s['n_pred']} predicted, {s['n_gold']} gold)" for k, s in scores.items())


def main(argv: Sequence[str] | None = None) -> int:
    """The command line; a bad or missing file prints one line and returns 2 (utils.guarded)."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n\n")[0])
    parser.add_argument("--gold", required=True, help="DocRED JSON with the gold entities and labels")
    parser.add_argument("--pred", required=True, help="predict.py's output JSON (a list of output objects)")
    args = parser.parse_args(argv)
    return utils.guarded(lambda: print(format_scores(score_files(args.gold, args.pred))),
                         expected=(ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
