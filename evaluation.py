"""Official DocRED scores, Codalab submission files and error analysis, as pure functions plus a CLI.

Importing this module needs neither torch nor a model: predictions may be torch tensors or numpy arrays.

    python evaluation.py --pred dev_pred.json --truth dev.json --train_annotated train_annotated.json --per_relation
    python evaluation.py --check_submission result.json --truth test.json --rel_info rel_info.json --codalab_zip result.zip
"""
from __future__ import annotations

import argparse
import functools
import hashlib
import json
import logging
import os
import sys
import zipfile
from collections import Counter
from pathlib import Path
from typing import Any, Dict, FrozenSet, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np

from utils import UserError, atomic_path, atomic_write_json, check_distinct, check_writable, guarded, read_json

SUBMISSION_FIELDS = ("title", "h_idx", "t_idx", "r")
OPTIONAL_FIELDS = ("evidence",)
Fact = Tuple[str, str, str]  # (head mention name, tail mention name, relation id)
PathOrDocs = Union[str, os.PathLike, List[Dict[str, Any]]]


# ----------------------------------------------------------------------------- reading


def _as_list(obj: PathOrDocs, what: str) -> Tuple[List[Any], str]:
    """A JSON list given directly or as a path, and a name for it in error messages."""
    if isinstance(obj, (str, os.PathLike)):
        obj, name = read_json(obj, what), f"{what} {obj}"
    else:
        name = what
    if not isinstance(obj, list):
        raise ValueError(f"{name} must be a JSON list, got {type(obj).__name__}")
    return obj, name


# ----------------------------------------------------------------------------- predictions


def _to_numpy_mask(preds: Any) -> np.ndarray:
    """Boolean [P, K+1] array of the non-zero entries of a tensor or array."""
    mask = preds != 0
    if hasattr(mask, "detach"):  # a torch tensor, on any device
        mask = mask.detach().cpu()
    mask = np.asarray(mask, dtype=bool)
    if mask.ndim != 2:
        raise ValueError(f"preds must be 2-D [n_pairs, num_class], got shape {tuple(mask.shape)}")
    return mask


class Relation(NamedTuple):
    """One predicted fact of a document: head and tail entity indices into its vertexSet, relation id, score (the
    decision's margin, higher = more confident; 0 when unknown), evidence sentence ids ([] without evidence)."""
    h_idx: int
    t_idx: int
    r: str
    score: float
    evidence: List[int]


def predicted_facts(preds: Any, features: Sequence[Mapping[str, Any]], id2rel: Mapping[int, str],
                    scores: Any = None, evidence: Optional[np.ndarray] = None) -> List[List[Relation]]:
    """Per feature, the facts of multi-hot pair predictions `preds` [P, K+1] (column 0, Na, ignored), rows in the
    features' `hts` order; `scores` [P, K] gives each fact's score, `evidence` (bool [P, S]) its sentences."""
    mask = _to_numpy_mask(preds)  # [P, K+1]
    hts = [np.asarray(f["hts"], dtype=np.int64).reshape(-1, 2) for f in features]
    n_pairs = np.array([len(h) for h in hts], dtype=np.int64)
    if mask.shape[0] != n_pairs.sum():
        raise ValueError(f"preds has {mask.shape[0]} rows but the features have {int(n_pairs.sum())} pairs")
    all_hts = np.concatenate(hts) if hts else np.zeros((0, 2), dtype=np.int64)  # [P, 2]
    pair_doc = np.repeat(np.arange(len(features)), n_pairs)  # [P]
    rows, cols = np.nonzero(mask[:, 1:])
    missing = sorted(set((np.unique(cols) + 1).tolist()) - set(id2rel))
    if missing:
        raise ValueError(f"relation ids {missing} are predicted but absent from id2rel")
    values = (np.asarray(scores.detach().cpu() if hasattr(scores, "detach") else scores)[rows, cols].tolist()
              if scores is not None else [0.0] * len(rows))
    sents = ([np.flatnonzero(evidence[row]).tolist() for row in rows.tolist()] if evidence is not None
             else [[] for _ in range(len(rows))])
    out: List[List[Relation]] = [[] for _ in features]
    docs = pair_doc[rows].tolist()
    for d, fact in zip(docs, map(Relation, all_hts[rows, 0].tolist(), all_hts[rows, 1].tolist(),
                                 [id2rel[c + 1] for c in cols.tolist()], values, sents)):
        out[d].append(fact)
    return out


def facts_of_outputs(logits: Any, features: Sequence[Mapping[str, Any]], decision: Any, loss_fn: Any,
                     id2rel: Mapping[int, str], sent_attn: Any = None, evidence_threshold: Optional[float] = None
                     ) -> List[List[Relation]]:
    """The one rule from a DocRED model's outputs to facts: the pairs and relations `decision` (losses.Decision)
    predicts from `logits` [P, K+1], scored by its margins, with the sentences whose attention `sent_attn` [P, S]
    passes `evidence_threshold` as evidence (none without them)."""
    evidence = None
    if sent_attn is not None and evidence_threshold is not None:
        from losses import evidence_sentences

        evidence = evidence_sentences(sent_attn, evidence_threshold).numpy()  # [P, S]
    return predicted_facts(decision.labels(loss_fn, logits), features, id2rel, decision.margins(logits), evidence)


def official_records(facts: Sequence[Sequence[Relation]], features: Sequence[Mapping[str, Any]],
                     with_evidence: bool = False) -> List[Dict[str, Any]]:
    """Official records {title, h_idx, t_idx, r} (+ "evidence") of per-feature facts, in order; a fact repeated
    under a repeated title is kept once (the first)."""
    titles = [f["title"] for f in features]
    if with_evidence:
        out = [{"title": t, "h_idx": rel.h_idx, "t_idx": rel.t_idx, "r": rel.r, "evidence": list(rel.evidence)}
               for t, doc_facts in zip(titles, facts) for rel in doc_facts]
    else:
        out = [{"title": t, "h_idx": rel.h_idx, "t_idx": rel.t_idx, "r": rel.r}
               for t, doc_facts in zip(titles, facts) for rel in doc_facts]
    if len(set(titles)) == len(titles):
        return out  # a fact appears once per document, so only repeated titles can repeat one
    seen: set = set()
    kept = []
    for record in out:
        key = (record["title"], record["h_idx"], record["t_idx"], record["r"])
        if key not in seen:
            seen.add(key)
            kept.append(record)
    return kept


def to_official(preds: Any, features: Sequence[Mapping[str, Any]], id2rel: Mapping[int, str],
                evidence: Optional[np.ndarray] = None) -> List[Dict[str, Any]]:
    """Multi-hot pair predictions [P, K+1] -> official records {title, h_idx, t_idx, r}, without Na or duplicates;
    with `evidence` (bool [P, S], a pair's evidence sentences) each record also gets its "evidence" list."""
    return official_records(predicted_facts(preds, features, id2rel, evidence=evidence), features,
                            evidence is not None)


def _pred_key(item: Any, i: int) -> Tuple[Any, str, int, int]:
    """(title, r, h_idx, t_idx) of a prediction, or a ValueError naming the item."""
    if not isinstance(item, Mapping):
        raise ValueError(f"prediction {i} must be an object, got {type(item).__name__}")
    try:
        return item["title"], item["r"], item["h_idx"], item["t_idx"]
    except KeyError as e:
        raise ValueError(f"prediction {i} has no field {e.args[0]!r}") from None


def dedup_predictions(pred: Iterable[Mapping[str, Any]]) -> List[Mapping[str, Any]]:
    """Predictions with repeated (title, h_idx, t_idx, r) kept once (the first), in input order."""
    seen: Dict[Any, Mapping[str, Any]] = {}
    for i, item in enumerate(pred):
        seen.setdefault(_pred_key(item, i), item)
    return list(seen.values())


# ----------------------------------------------------------------------------- gold facts


def gold_facts(truth: Sequence[Mapping[str, Any]]) -> Tuple[Dict[Tuple[Any, str, int, int], set], int]:
    """Gold relations keyed (title, r, h, t) -> evidence set, and the total count of gold evidence sentences."""
    std: Dict[Tuple[Any, str, int, int], set] = {}
    n_evidence = 0
    for d, doc in enumerate(truth):
        for j, lab in enumerate(doc.get("labels", [])):
            try:
                std[(doc["title"], lab["r"], lab["h"], lab["t"])] = set(lab.get("evidence", []))
            except KeyError as e:
                raise ValueError(f"truth document {d} ({doc.get('title')!r}) label {j} has no field {e.args[0]!r}") from None
            n_evidence += len(lab.get("evidence", []))
    return std, n_evidence


def _vertex_sets(truth: Sequence[Mapping[str, Any]]) -> Dict[Any, List[List[Mapping[str, Any]]]]:
    """Title -> vertexSet of each truth document (the last one wins for a repeated title, as officially)."""
    for d, doc in enumerate(truth):
        if not isinstance(doc, Mapping) or "title" not in doc or "vertexSet" not in doc:
            raise ValueError(f"truth document {d} must be an object with 'title' and 'vertexSet'")
    return {doc["title"]: doc["vertexSet"] for doc in truth}


def facts_of(docs: Iterable[Mapping[str, Any]]) -> FrozenSet[Fact]:
    """Every (head mention name, tail mention name, r) of the labelled relations in `docs`."""
    facts = set()
    for doc in docs:
        names = [[m["name"] for m in ent] for ent in doc["vertexSet"]]
        for lab in doc.get("labels", []):
            facts.update((n1, n2, lab["r"]) for n1 in names[lab["h"]] for n2 in names[lab["t"]])
    return frozenset(facts)


def _file_sha1(path: str) -> str:
    """Hex SHA-1 of a file's bytes."""
    h = hashlib.sha1()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 22), b""):
            h.update(block)
    return h.hexdigest()


def _cached_facts(cache_file: Path) -> Optional[FrozenSet[Fact]]:
    """The facts a fact cache file holds, or None, with a warning, when it cannot be read or is not a list of
    [head name, tail name, relation] strings (it is then rebuilt, never trusted)."""
    try:
        stored = read_json(cache_file, "fact cache")
    except ValueError as e:
        why = str(e.__cause__ or e)
    else:
        if isinstance(stored, list) and all(isinstance(x, list) and len(x) == 3 and all(isinstance(v, str) for v in x)
                                            for x in stored):
            return frozenset(tuple(x) for x in stored)
        why = "not a list of [head name, tail name, relation] triples"
    logging.getLogger(__name__).warning("fact cache %s is damaged (%s); rebuilding it", cache_file, why)
    return None


@functools.lru_cache(maxsize=4)
def _facts_of_file(path: str, mtime_ns: int, size: int, cache_dir: Optional[str]) -> FrozenSet[Fact]:
    """Facts of a training file, memoised per (path, mtime, size) and stored on disk by content hash."""
    cache_file = None
    if cache_dir is not None:
        cache_file = Path(cache_dir) / f"facts-{Path(path).stem}-{_file_sha1(path)[:16]}.json"
        cached = _cached_facts(cache_file) if cache_file.exists() else None
        if cached is not None:
            return cached
    from evaluation_e2e import read_gold

    facts = facts_of(read_gold(path, "training file"))
    if cache_file is not None:
        atomic_write_json(cache_file, sorted(facts))
    return facts


def train_facts(source: PathOrDocs, fact_cache_dir: Optional[Union[str, os.PathLike]] = None) -> FrozenSet[Fact]:
    """The fact set of a training corpus (path or list of docs); files are read once per process."""
    if not isinstance(source, (str, os.PathLike)):
        return facts_of(source)
    path = os.path.abspath(source)
    try:
        st = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"training file {source} does not exist") from None
    return _facts_of_file(path, st.st_mtime_ns, st.st_size, None if fact_cache_dir is None else str(fact_cache_dir))


# ----------------------------------------------------------------------------- scores


def _ratio(num: float, den: float) -> float:
    """num / den, or 0 where the official scorer would divide by zero."""
    return num / den if den else 0.0


def _f1(p: float, r: float) -> float:
    """Harmonic mean, 0 when both are 0."""
    return 2.0 * p * r / (p + r) if p + r else 0.0


def prf(n_correct: int, n_pred: int, n_gold: int) -> Dict[str, float]:
    """Precision, recall and F1 in percent from counts."""
    p, r = _ratio(n_correct, n_pred), _ratio(n_correct, n_gold)
    return {"precision": 100.0 * p, "recall": 100.0 * r, "f1": 100.0 * _f1(p, r)}


def _in_train(vertex_set: Sequence[Sequence[Mapping[str, Any]]], h: int, t: int, r: str, facts: FrozenSet[Fact]) -> bool:
    """Whether any (head mention name, tail mention name, r) of the pair is a training fact."""
    return any((m1["name"], m2["name"], r) in facts for m1 in vertex_set[h] for m2 in vertex_set[t])


def official_evaluate(
    pred: PathOrDocs,
    truth: PathOrDocs,
    train_annotated: Optional[PathOrDocs] = None,
    train_distant: Optional[PathOrDocs] = None,
    fact_cache_dir: Optional[Union[str, os.PathLike]] = None,
) -> Dict[str, float]:
    """The DocRED Codalab scorer's P, R, F1, Ign F1 (percent) on deduplicated predictions, evidence scores too.

    Keys: precision, recall, f1, ign_f1 (None without `train_annotated`: nothing to ignore), ign_f1_distant
    (with `train_distant`), evi_precision/evi_recall/evi_f1 (when predictions carry "evidence"), n_pred, n_gold,
    n_correct.
    """
    pred = dedup_predictions(_as_list(pred, "prediction file")[0])
    truth, _ = _as_list(truth, "truth file")
    vertex_sets = _vertex_sets(truth)
    std, n_gold_evidence = gold_facts(truth)
    ignore = {} if train_annotated is None else {"ign_f1": train_facts(train_annotated, fact_cache_dir)}
    if train_distant is not None:
        ignore["ign_f1_distant"] = train_facts(train_distant, fact_cache_dir)
    n_correct = n_correct_evidence = n_pred_evidence = 0
    in_train = Counter()
    for item in pred:
        key = (item["title"], item["r"], item["h_idx"], item["t_idx"])
        if item["title"] not in vertex_sets:
            continue  # counts in the precision denominator only, as in the official scorer
        evidence = set(item.get("evidence", []))
        n_pred_evidence += len(evidence)
        if key not in std:
            continue
        n_correct += 1
        n_correct_evidence += len(std[key] & evidence)
        for name, facts in ignore.items():
            in_train[name] += _in_train(vertex_sets[key[0]], key[2], key[3], key[1], facts)
    scores = prf(n_correct, len(pred), len(std))
    recall = _ratio(n_correct, len(std))
    scores["ign_f1"] = None  # without the annotated training file, not 0 and not F1
    for name in ignore:
        p_ign = _ratio(n_correct - in_train[name], len(pred) - in_train[name])
        scores[name] = 100.0 * _f1(p_ign, recall)
    if any("evidence" in item for item in pred):
        evi = prf(n_correct_evidence, n_pred_evidence, n_gold_evidence)
        scores.update({f"evi_{k}": v for k, v in evi.items()})
    scores.update(n_pred=len(pred), n_gold=len(std), n_correct=n_correct)
    return scores


# ----------------------------------------------------------------------------- analysis


def _is_intra(vertex_set: Sequence[Sequence[Mapping[str, Any]]], h: int, t: int) -> bool:
    """Whether some head mention and some tail mention share a sentence."""
    return bool({m["sent_id"] for m in vertex_set[h]} & {m["sent_id"] for m in vertex_set[t]})


def _bucket(n: int) -> str:
    """Name of the bucket for a pair with n gold relations."""
    return str(n) if n < 4 else "4+"


def _categories(key: Tuple[Any, str, int, int], vertex_sets: Mapping[str, Any], n_rel_of_pair: Counter) -> Dict[str, str]:
    """The row a fact (title, r, h, t) falls in for each analysis table."""
    title, r, h, t = key
    if title not in vertex_sets:
        return {"per_relation": r}
    n_ent = len(vertex_sets[title])
    if not (isinstance(h, int) and isinstance(t, int) and 0 <= h < n_ent and 0 <= t < n_ent):
        raise ValueError(f"prediction ({title!r}, h_idx={h!r}, t_idx={t!r}) is out of range: the document has "
                         f"{n_ent} entities")
    return {"per_relation": r, "sentence": "intra" if _is_intra(vertex_sets[title], h, t) else "inter",
            "n_relations": _bucket(n_rel_of_pair[(title, h, t)])}


def _prf_table(gold: Counter, pred: Counter, correct: Counter) -> Dict[str, Dict[str, Any]]:
    """Rows {support, n_pred, n_correct, P, R, F1} per category, most supported first."""
    names = sorted(set(gold) | set(pred), key=lambda k: (-gold[k], str(k)))
    return {k: {"support": gold[k], "n_pred": pred[k], "n_correct": correct[k], **prf(correct[k], pred[k], gold[k])}
            for k in names}


def score_by_category(
    pred: PathOrDocs, truth: PathOrDocs, rel_info: Optional[Mapping[str, str]] = None
) -> Dict[str, Any]:
    """P/R/F1 per relation, for intra- vs inter-sentence pairs, and by the number of gold relations of a pair.

    Predictions for titles absent from the truth count against precision per relation only.
    """
    pred = dedup_predictions(_as_list(pred, "prediction file")[0])
    truth, _ = _as_list(truth, "truth file")
    vertex_sets = _vertex_sets(truth)
    std, _ = gold_facts(truth)
    n_rel_of_pair = Counter((title, h, t) for title, _, h, t in std)
    tables = ("per_relation", "sentence", "n_relations")
    counts = {kind: {table: Counter() for table in tables} for kind in ("gold", "pred", "correct")}
    pred_keys = [_pred_key(item, i) for i, item in enumerate(pred)]
    for kind, keys in (("gold", std), ("pred", pred_keys), ("correct", [k for k in pred_keys if k in std])):
        for key in keys:
            for table, row in _categories(key, vertex_sets, n_rel_of_pair).items():
                counts[kind][table][row] += 1
    out = {table: _prf_table(counts["gold"][table], counts["pred"][table], counts["correct"][table])
           for table in tables}
    for r, row in out["per_relation"].items():
        row["name"] = (rel_info or {}).get(r, r)
    out["n_relations"] = dict(sorted(out["n_relations"].items()))
    return out


# ----------------------------------------------------------------------------- Codalab


def _check_item(item: Any, i: int, doc_of: Mapping[str, Mapping[str, Any]], rel_ids: Optional[set],
                rel_source: str = "the label map") -> None:
    """Raise ValueError naming item i and the field if it is not a valid official record (`rel_source`: where the
    known relation ids come from)."""
    where = f"item {i}"
    if not isinstance(item, dict):
        raise ValueError(f"{where} must be an object, got {type(item).__name__}")
    missing = [k for k in SUBMISSION_FIELDS if k not in item]
    extra = [k for k in item if k not in SUBMISSION_FIELDS + OPTIONAL_FIELDS]
    if missing or extra:
        raise ValueError(f"{where} has missing fields {missing} / unexpected fields {extra}; "
                         f"expected {list(SUBMISSION_FIELDS)} (+ optional 'evidence')")
    for field, kind in (("title", str), ("r", str), ("h_idx", int), ("t_idx", int)):
        if not isinstance(item[field], kind) or isinstance(item[field], bool):
            raise ValueError(f"{where} field {field!r} must be {kind.__name__}, got {item[field]!r}")
    title = item["title"]
    where = f"item {i} (title {title!r})"
    if title not in doc_of:
        raise ValueError(f"{where} field 'title': no document with this title in the truth file")
    n_ent = len(doc_of[title]["vertexSet"])
    for field in ("h_idx", "t_idx"):
        if not 0 <= item[field] < n_ent:
            raise ValueError(f"{where} field {field!r} = {item[field]} is out of range: the document has {n_ent} entities")
    if item["h_idx"] == item["t_idx"]:
        raise ValueError(f"{where} fields 'h_idx' and 't_idx' are both {item['h_idx']}: a pair needs two entities")
    if rel_ids is not None and item["r"] not in rel_ids:
        raise ValueError(f"{where} field 'r' = {item['r']!r} is not a known relation id (not in {rel_source})")
    if rel_ids is None and not (item["r"].startswith("P") and item["r"][1:].isdigit()):
        raise ValueError(f"{where} field 'r' = {item['r']!r} is not a Wikidata property id like 'P17'")
    if "evidence" in item:
        evi, n_sent = item["evidence"], len(doc_of[title]["sents"])
        if not isinstance(evi, list) or not all(isinstance(s, int) and not isinstance(s, bool) and 0 <= s < n_sent
                                                for s in evi):
            raise ValueError(f"{where} field 'evidence' must be a list of sentence ids in [0, {n_sent}), got {evi!r}")


def check_predictions(pred: PathOrDocs, truth: PathOrDocs, rel_ids: Optional[Iterable[str]] = None,
                      shown: int = 5, rel_source: str = "the label map") -> None:
    """Raise ValueError when predictions name titles, entity indices or relations the truth (or label map) lacks,
    or the truth has no labels to score against; the first `shown` problems are named."""
    items, name = _as_list(pred, "prediction file")
    docs, truth_name = _as_list(truth, "truth file")
    if not any(isinstance(d, dict) and d.get("labels") for d in docs):
        raise ValueError(f"{truth_name} has no labels in any document: score against a labelled file "
                         f"(dev, or Re-DocRED's test)")
    doc_of = {doc["title"]: doc for doc in docs}
    rel_set = None if rel_ids is None else {r for r in rel_ids if r != "Na"}
    problems = []
    for i, item in enumerate(items):
        try:
            _check_item(item, i, doc_of, rel_set, rel_source)
        except ValueError as e:
            problems.append(str(e))
    if problems:
        more = f" (and {len(problems) - shown} more)" if len(problems) > shown else ""
        raise ValueError(f"{name}: {len(problems)} of {len(items)} predictions do not fit {truth_name}{more}: "
                         + "; ".join(problems[:shown]))


def check_submission(pred: PathOrDocs, test_docs: PathOrDocs, rel_ids: Optional[Iterable[str]] = None,
                     rel_source: str = "the label map") -> None:
    """Raise ValueError on the first malformed record of a Codalab submission (naming item and field)."""
    items, name = _as_list(pred, "submission")
    docs, _ = _as_list(test_docs, "truth file")
    doc_of = {doc["title"]: doc for doc in docs}
    rel_set = None if rel_ids is None else {r for r in rel_ids if r != "Na"}
    first: Dict[Tuple[Any, ...], int] = {}
    try:
        for i, item in enumerate(items):
            _check_item(item, i, doc_of, rel_set, rel_source)
            key = tuple(item[k] for k in SUBMISSION_FIELDS)
            if key in first:
                raise ValueError(f"item {i} repeats item {first[key]} (same title, h_idx, t_idx, r); "
                                 "the Codalab scorer would count it twice against precision")
            first[key] = i
    except ValueError as e:
        raise ValueError(f"{name}: {e}") from None


def write_codalab_zip(result: PathOrDocs, out_zip: Union[str, os.PathLike]) -> Path:
    """Write `out_zip` holding result.json at its root, the form the DocRED Codalab competition accepts."""
    check_writable(out_zip, "--codalab_zip", example="result.zip")
    items, _ = _as_list(result, "submission")
    with atomic_path(out_zip) as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("result.json", json.dumps(items, ensure_ascii=False))
    return Path(out_zip)


# ----------------------------------------------------------------------------- CLI


def format_scores(scores: Mapping[str, float]) -> str:
    """Human-readable lines of the headline scores (percent, 2 decimals)."""
    names = [("precision", "P"), ("recall", "R"), ("f1", "F1"), ("ign_f1", "Ign F1"), ("ign_f1_distant", "Ign F1 (distant)"),
             ("evi_precision", "Evi P"), ("evi_recall", "Evi R"), ("evi_f1", "Evi F1")]
    lines = [f"{label:<17}{scores[k]:6.2f}" if scores[k] is not None else f"{label:<17}   n/a"
             for k, label in names if k in scores]
    lines.append(f"{'n_pred/gold/ok':<17}{scores['n_pred']}/{scores['n_gold']}/{scores['n_correct']}")
    return "\n".join(lines)


def format_categories(cats: Mapping[str, Any]) -> str:
    """Tables of per-relation, intra/inter-sentence and by-#relations scores."""
    def block(title: str, rows: Mapping[str, Mapping[str, Any]], label=lambda k, row: k) -> List[str]:
        out = ["", title, f"{'':<48}{'support':>8}{'n_pred':>8}{'P':>8}{'R':>8}{'F1':>8}"]
        for k, row in rows.items():
            out.append(f"{label(k, row)[:48]:<48}{row['support']:>8}{row['n_pred']:>8}"
                       f"{row['precision']:>8.2f}{row['recall']:>8.2f}{row['f1']:>8.2f}")
        return out

    lines = block("per relation", cats["per_relation"], lambda k, row: f"{k} {row['name']}" if row["name"] != k else k)
    lines += block("intra- vs inter-sentence pairs", cats["sentence"])
    lines += block("by number of gold relations of the pair (0 = pairs with none)", cats["n_relations"])
    return "\n".join(lines)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--pred", help="predictions (official format JSON list) to score")
    p.add_argument("--truth", required=True, help="gold DocRED/Re-DocRED file (dev, or test for --check_submission)")
    p.add_argument("--train_annotated", help="annotated training file, for Ign F1")
    p.add_argument("--train_distant", help="distantly supervised training file, for Ign F1 (distant)")
    p.add_argument("--rel_info", help="rel_info.json (P-id -> name): names in tables, known ids for checks")
    p.add_argument("--fact_cache_dir", help="folder to cache the training fact sets in")
    p.add_argument("--per_relation", action="store_true", help="also print per-relation, intra/inter and #relation tables")
    p.add_argument("--json", action="store_true", help="print one JSON object with unrounded percentages")
    p.add_argument("--end_to_end", action="store_true",
                   help="--pred is predict.py's output (its own entities and relations): score mentions, "
                        "coreference, entities and relations in JEREX's senses (evaluation_e2e.py)")
    p.add_argument("--check_submission", metavar="RESULT_JSON", help="validate a Codalab submission against --truth")
    p.add_argument("--codalab_zip", metavar="OUT_ZIP", help="write OUT_ZIP with result.json (from --check_submission "
                   "or --pred) at its root")
    args = p.parse_args(argv)
    if not (args.pred or args.check_submission):
        p.error("give --pred to score or --check_submission to validate")
    return args


def read_rel_info(path: str) -> Dict[str, str]:
    """The {relation id: name} object of a --rel_info file; anything else is a UserError naming the file."""
    info = read_json(path, "--rel_info file")
    wanted = 'a non-empty JSON object {relation id: name}, e.g. {"P17": "country"}'
    if not isinstance(info, dict) or not info:
        got = "an empty object" if info == {} else f"a JSON {type(info).__name__}"
        raise UserError(f"--rel_info file {path}: must be {wanted}; got {got}")
    for rel, name in info.items():
        if not isinstance(name, str):
            raise UserError(f"--rel_info file {path}: entry {rel!r}: the name must be a string, got "
                            f"{json.dumps(name)[:80]}; the file must be {wanted}")
    return info


def check_truth(path: str) -> None:
    """Raise ValidationError (naming document and field) unless the truth file passes --end_to_end's checks
    (evaluation_e2e.read_gold) and holds a document: an empty one leaves nothing to score or submit against."""
    from evaluation_e2e import read_gold
    from validation import check_not_empty

    check_not_empty(path, len(read_gold(path)))


OFFICIAL_ONLY_FLAGS = ("per_relation", "train_annotated", "train_distant", "fact_cache_dir")


def check_flags(args: argparse.Namespace) -> None:
    """Refuse flags that the run would ignore, or could not honour, naming them."""
    if args.end_to_end and args.codalab_zip:
        raise UserError("--codalab_zip writes official records (title, h_idx, t_idx, r), but --end_to_end's --pred is "
                        "predict.py's output: zip a result.json with --check_submission, without --end_to_end")
    unused = [f"--{name}" for name in OFFICIAL_ONLY_FLAGS if getattr(args, name)]
    if args.end_to_end and args.rel_info and not args.check_submission:
        unused.append("--rel_info")
    if unused and (args.end_to_end or not args.pred):
        why = "--end_to_end scores predict.py's output instead" if args.end_to_end else "this run has no --pred"
        raise UserError(f"{', '.join(unused)}: flag(s) for scoring official records (--pred without --end_to_end), "
                        f"and {why}; leave them out")
    if args.fact_cache_dir and not (args.train_annotated or args.train_distant):
        raise UserError("--fact_cache_dir keeps the facts of --train_annotated or --train_distant, and neither is "
                        "given; leave it out")


def run(args: argparse.Namespace) -> None:
    """Score, check or zip predictions as the flags say."""
    check_flags(args)
    inputs = {"--truth": args.truth, "--pred": args.pred, "--check_submission": args.check_submission,
              "--train_annotated": args.train_annotated, "--train_distant": args.train_distant}
    for flag, path in inputs.items():  # the zip must not replace an input (inputs may repeat)
        check_distinct({flag: path, "--codalab_zip": args.codalab_zip})
    if args.codalab_zip:
        check_writable(args.codalab_zip, "--codalab_zip", example="result.zip")
    if args.fact_cache_dir:
        check_writable(args.fact_cache_dir, "--fact_cache_dir", folder=True)
    if args.check_submission or not args.end_to_end:
        check_truth(args.truth)
    rel_info = read_rel_info(args.rel_info) if args.rel_info else None
    rel_ids = None if rel_info is None else list(rel_info)
    known = dict(rel_ids=rel_ids, rel_source=f"--rel_info file {args.rel_info}")
    if args.check_submission:
        check_submission(args.check_submission, args.truth, **known)
        print(f"{args.check_submission}: valid submission")
    elif args.codalab_zip:
        check_submission(args.pred, args.truth, **known)  # the zip holds --pred as it is
    if args.pred and args.end_to_end:
        import evaluation_e2e

        scores = evaluation_e2e.score_files(args.truth, args.pred)
        print(json.dumps(scores) if args.json else evaluation_e2e.format_scores(scores))
    elif args.pred:
        check_predictions(args.pred, args.truth, **known)
        if not args.train_annotated:
            print("note: no --train_annotated, so Ign F1 is not computed", file=sys.stderr)
        scores = official_evaluate(args.pred, args.truth, args.train_annotated, args.train_distant,
                                   args.fact_cache_dir)
        cats = score_by_category(args.pred, args.truth, rel_info) if args.per_relation else None
        if args.json:
            print(json.dumps({**scores, **({"categories": cats} if cats else {})}))
        else:
            print(format_scores(scores))
            if cats:
                print(format_categories(cats))
    if args.codalab_zip:
        print(f"wrote {write_codalab_zip(args.check_submission or args.pred, args.codalab_zip)}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """The command line; an expected failure prints one message and returns 2 (utils.guarded)."""
    args = parse_args(argv)
    return guarded(lambda: run(args), expected=(ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
