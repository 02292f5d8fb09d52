"""How well the raw-text path recovers DocRED's entities (and, with a model, its relations) from plain text.

    OMP_NUM_THREADS=1 python scripts/raw_text_eval.py --data ../shared/data/redocred/dev_revised.json

Each gold document's sentences become plain text (`text2doc.join_sents`: tokens joined by single spaces, sentences
too), which goes through the raw-text path (spaCy, DocRED types, mention grouping). Matching is by strings:
- a mention's string is the text it covers, case-folded with runs of whitespace made one space; an entity's strings
  are those of its mentions;
- (a) entity recall: a gold entity is *found* when some predicted entity has a mention whose string is one of the
  gold entity's strings; the figure is found gold entities / all gold entities, over all documents;
- alignment (for relations): predicted entities in order each take the not yet taken gold entity sharing the most
  strings with it (the lowest index on ties), so the map is one-to-one;
- (b) relation counts: a predicted relation (h, t, r) becomes (gold of h, gold of t, r), or counts as a false
  positive when h or t has no gold entity; TP, FP, FN compare the sets of such facts with the gold (h, t, r).
NER speed is documents per second of the conversion (spaCy plus grouping), with the pipeline already loaded.

With `--model` (a trained model folder) it also runs the model on both paths (the raw-text one and the gold
entities, i.e. test mode's predictions) and reports (b) relation P/R/F1 matched by entity names, (c) the official F1
on gold entities, and documents per second of each path (conversion included for raw text; model loaded, and every
path run once on a few documents before any is timed; `--repeats N` times each path N times and keeps the fastest:
the first pass of a process is slower, and on a shared machine one timing is noise). A model
trained with --end_to_end finds its own entities at the mention threshold tuned on dev and stored with it (0.5 for
one trained before that); `--mention_threshold` overrides it.

    OMP_NUM_THREADS=1 python scripts/raw_text_eval.py --data dev.json --skip 400 --model runs/<run>
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Set, Tuple

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import entities  # noqa: E402
import evaluation_e2e  # noqa: E402
import predict  # noqa: E402
import text2doc  # noqa: E402
import utils  # noqa: E402


def string_key(text: str) -> str:
    """A mention string for matching: case-folded, runs of whitespace made one space."""
    return " ".join(text.casefold().split())


def entity_strings(out: Dict[str, Any]) -> List[Set[str]]:
    """The strings of each entity of an output object."""
    return [{string_key(m["text"]) for m in ent["mentions"]} for ent in out["entities"]]


def entities_found(gold: Dict[str, Any], pred: Dict[str, Any]) -> Tuple[int, int]:
    """(gold entities found, gold entities) of one document, as defined in the module docstring."""
    predicted = set().union(*entity_strings(pred))
    gold_strings = entity_strings(gold)
    return sum(bool(s & predicted) for s in gold_strings), len(gold_strings)


def align_entities(gold: Dict[str, Any], pred: Dict[str, Any]) -> Dict[int, int]:
    """One-to-one map predicted entity index -> gold entity index by shared strings (see the module docstring)."""
    gold_strings, taken, align = entity_strings(gold), set(), {}
    for p_i, strings in enumerate(entity_strings(pred)):
        shared = [(len(strings & g), -g_i) for g_i, g in enumerate(gold_strings) if g_i not in taken and strings & g]
        if shared:
            align[p_i] = -max(shared)[1]
            taken.add(align[p_i])
    return align


def relation_counts(gold: Dict[str, Any], pred: Dict[str, Any]) -> Tuple[int, int, int]:
    """(TP, FP, FN) of a predicted output object's relations against the gold's, entities aligned by name."""
    align = align_entities(gold, pred)
    facts = {(align.get(r["h_idx"], ("unaligned", r["h_idx"])), align.get(r["t_idx"], ("unaligned", r["t_idx"])),
              r["r"]) for r in pred["relations"]}
    truth = {(r["h_idx"], r["t_idx"], r["r"]) for r in gold["relations"]}
    return len(facts & truth), len(facts - truth), len(truth - facts)


def gold_output(doc: Dict[str, Any]) -> Dict[str, Any]:
    """The output object of a gold DocRED document, its labels as relations of score 1."""
    labels = doc.get("labels") or []
    rels = [predict.Relation(lab["h"], lab["t"], lab["r"], 1.0, lab.get("evidence", [])) for lab in labels]
    return predict.assemble_output(text2doc.with_char_offsets(doc), rels, {lab["r"]: lab["r"] for lab in labels})


def plain_items(docs: Sequence[Dict[str, Any]]) -> List[Tuple[str, str, None, str]]:
    """(title, plain text, no user entities, where) of each gold document."""
    return [(d["title"], text2doc.join_sents(d["sents"])[0], None, f"document {i}") for i, d in enumerate(docs)]


def read_docs(path: str, skip: int = 0, limit: Optional[int] = None) -> List[Dict[str, Any]]:
    """Documents skip .. skip+limit of a gold DocRED file (checked: evaluation_e2e.read_gold); none is an error."""
    docs = evaluation_e2e.read_gold(path, "--data")
    kept = docs[skip:skip + limit] if limit is not None else docs[skip:]
    if not kept:
        raise utils.UserError(f"--data {path}: --skip {skip} leaves none of its {len(docs)} documents")
    return kept


def measure(path: str, spacy_model: str = text2doc.DEFAULT_SPACY_MODEL, limit: Optional[int] = None,
            skip: int = 0) -> Dict[str, Any]:
    """Entity recall (a), its one-to-one variant and type agreement, and the NER speed on a DocRED file."""
    docs = read_docs(path, skip, limit)
    nlp = text2doc.load_spacy(spacy_model)
    items = plain_items(docs)
    start = time.perf_counter()
    converted = text2doc.convert_texts(nlp, items)
    seconds = time.perf_counter() - start
    found = total = aligned = same_type = n_pred = 0
    for doc, conv in zip(docs, converted):
        gold, pred = gold_output(doc), predict.assemble_output(conv, [], {})
        f, t = entities_found(gold, pred)
        align = align_entities(gold, pred)
        found, total, aligned, n_pred = found + f, total + t, aligned + len(align), n_pred + len(pred["entities"])
        same_type += sum(pred["entities"][p]["type"] == gold["entities"][g]["type"] for p, g in align.items())
    return {"documents": len(docs), "gold_entities": total, "predicted_entities": n_pred,
            "entity_recall": found / total, "aligned_recall": aligned / total,
            "aligned_type_agreement": same_type / max(aligned, 1), "ner_seconds": seconds,
            "ner_docs_per_s": len(docs) / seconds, "spacy_model": nlp.meta.get("name"),
            "spacy_version": nlp.meta.get("version")}


def prf(counts: Counter) -> Dict[str, float]:
    """Precision, recall, F1 (%) of summed (tp, fp, fn)."""
    tp, fp, fn = counts["tp"], counts["fp"], counts["fn"]
    p, r = tp / max(tp + fp, 1), tp / max(tp + fn, 1)
    return {"precision": 100 * p, "recall": 100 * r, "f1": 100 * (2 * p * r / (p + r) if p + r else 0.0)}


def timed(run: Callable[[], Any], repeats: int = 1) -> Tuple[Any, float]:
    """(the first run's result, the fastest of `repeats` runs in seconds)."""
    result, best = None, float("inf")
    for i in range(repeats):
        start = time.perf_counter()
        out = run()
        best = min(best, time.perf_counter() - start)
        result = out if i == 0 else result
    return result, best


def measure_model(path: str, model: str, spacy_model: str = text2doc.DEFAULT_SPACY_MODEL,
                  limit: Optional[int] = None, skip: int = 0, batch_size: int = 4,
                  mention_threshold: Optional[float] = None, max_seq_length: Optional[int] = None,
                  repeats: int = 1) -> Dict[str, Any]:
    """(b) relation scores by entity names from raw text, (c) official F1 on gold entities, and both speeds; the
    model's own entities at `mention_threshold` (None: the threshold stored with the model); documents read whole,
    as predict.py reads them, or up to `max_seq_length` tokens."""
    import evaluation

    docs = read_docs(path, skip, limit)
    pipe = predict.DocREPipeline.from_pretrained(model, max_seq_length=max_seq_length, batch_size=batch_size)
    pipe.model_bundle = entities.at_mention_threshold(pipe.model_bundle, mention_threshold)
    nlp = text2doc.load_spacy(spacy_model)
    own_nlp = predict.spacy_for(spacy_model, ner=False) if pipe.has_heads else None
    warm = docs[:2]  # each path once, untimed
    with_entities(pipe, "given", lambda: pipe(warm))
    for parser, source in ((nlp, "spacy"), (own_nlp, "model")):
        if parser is not None:
            from_text(pipe, parser, warm, source)
    # (c): the gold entities, whatever the model could find itself
    on_gold, gold_seconds = timed(lambda: with_entities(pipe, "given", lambda: pipe(docs)), repeats)
    on_text, text_seconds = timed(lambda: from_text(pipe, nlp, docs, "spacy"), repeats)
    by_name, gold_by_name = Counter(), Counter()
    for doc, text_out, gold_out in zip(docs, on_text, on_gold):
        gold = gold_output(doc)
        by_name.update(dict(zip(("tp", "fp", "fn"), relation_counts(gold, text_out))))
        gold_by_name.update(dict(zip(("tp", "fp", "fn"), relation_counts(gold, gold_out))))
    preds = [{"title": o["title"], "h_idx": r["h_idx"], "t_idx": r["t_idx"], "r": r["r"]}
             for o in on_gold for r in o["relations"]]
    official = evaluation.official_evaluate(preds, docs)
    result = {"raw_text_relations_by_name": prf(by_name), "gold_entities_relations_by_name": prf(gold_by_name),
              "gold_entities_official": {k: official[k] for k in ("precision", "recall", "f1")},
              "raw_text_docs_per_s": len(docs) / text_seconds, "gold_entities_docs_per_s": len(docs) / gold_seconds,
              "raw_text_relations": sum(len(o["relations"]) for o in on_text),
              "gold_entities_relations": len(preds)}
    if pipe.has_heads:  # issue #36: both raw-text paths side by side, with the end-to-end scores
        result["mention_threshold"] = entities.mention_threshold(pipe.model_bundle.decision)
        result["paths"] = {"model": text_path(pipe, own_nlp, docs, "model", repeats),
                           "spacy": text_path(pipe, nlp, docs, "spacy", repeats)}
    return result


def from_text(pipe: Any, nlp: Any, docs: Sequence[Dict[str, Any]], source: str) -> List[Dict[str, Any]]:
    """The pipeline's outputs of the documents' plain text, split by `nlp`, with the entities of `source`."""
    return with_entities(pipe, source, lambda: pipe.predict_documents(text2doc.convert_texts(nlp, plain_items(docs))))


def with_entities(pipe: Any, source: str, run: Callable[[], Any]) -> Any:
    """`run()` with the pipeline's entity source set to `source` ("given", "spacy", "model"), then restored."""
    before, pipe.entities = pipe.entities, source
    try:
        return run()
    finally:
        pipe.entities = before


def text_path(pipe: Any, nlp: Any, docs: Sequence[Dict[str, Any]], entities: str,
              repeats: int = 1) -> Dict[str, Any]:
    """One raw-text path (`entities` "model" or "spacy"): relations by name, entity recall (a), the end-to-end
    scores of evaluation_e2e, documents per second (conversion included; the fastest of `repeats`)."""
    outs, seconds = timed(lambda: from_text(pipe, nlp, docs, entities), repeats)
    counts, found, total = Counter(), 0, 0
    for doc, out in zip(docs, outs):
        gold = gold_output(doc)
        counts.update(dict(zip(("tp", "fp", "fn"), relation_counts(gold, out))))
        f, t = entities_found(gold, out)
        found, total = found + f, total + t
    return {"relations_by_name": prf(counts), "entity_recall": found / max(total, 1), "docs_per_s": len(docs) / seconds,
            "end_to_end": evaluation_e2e.end_to_end_scores(evaluation_e2e.gold_outputs(docs), outs)}


def main(argv: Optional[List[str]] = None) -> int:
    """The command line: the figures as JSON on stdout; bad input is one line on stderr and status 2."""
    parser = argparse.ArgumentParser(allow_abbrev=False, description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data/redocred/dev_revised.json", help="a DocRED JSON file")
    parser.add_argument("--spacy_model", default=text2doc.DEFAULT_SPACY_MODEL)
    parser.add_argument("--limit", type=utils.COUNT, default=None, help="the first N documents only (after --skip)")
    parser.add_argument("--skip", type=utils.COUNT_OR_ZERO, default=0,
                        help="leave out the first N documents (e.g. training ones)")
    parser.add_argument("--model", default=None, help="a trained model folder: also measure relations (b), (c)")
    parser.add_argument("--mention_threshold", type=utils.FRACTION, default=None,
                        help="end to end: a span is a mention above this probability (default: the threshold tuned "
                             "on dev and stored with the model; 0.5 for a model without one)")
    parser.add_argument("--max_seq_length", type=utils.SEQ_LENGTH, default=None,
                        help="read at most this many tokens of each document (default: whole documents, as predict.py)")
    parser.add_argument("--repeats", type=utils.COUNT, default=1,
                        help="time each path this many times and report the fastest (default 1)")
    args = parser.parse_args(argv)

    def run() -> None:
        result = measure(args.data, args.spacy_model, args.limit, args.skip)
        if args.model:
            result.update(measure_model(args.data, args.model, args.spacy_model, args.limit, args.skip,
                                        mention_threshold=args.mention_threshold,
                                        max_seq_length=args.max_seq_length, repeats=args.repeats))
        print(json.dumps(result, indent=1))
    return utils.guarded(run, expected=(ValueError, FileNotFoundError))


if __name__ == "__main__":
    sys.exit(main())
