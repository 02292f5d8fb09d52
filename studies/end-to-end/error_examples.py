"""One held-out document per kind of end-to-end error, for issue #36's closing note.

Reads the gold DocRED file and `predict.py`'s output objects for the same documents (text made by
`text2doc.join_sents` from the gold sentences, as `scripts/raw_text_eval.py` makes it), and prints, for each kind,
the first document that shows it with the entities and relations involved:

    python studies/end-to-end/error_examples.py --gold ../shared/data/redocred/dev_revised.json --skip 400 \
        --pred model_path_outputs.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Dict, FrozenSet, Iterator, List, Optional, Sequence, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import evaluation_e2e  # noqa: E402
import text2doc  # noqa: E402

Span = Tuple[int, int]
KINDS = ("missed entity", "mention boundary", "split cluster", "merged clusters", "wrong type", "missed relation",
         "wrong relation")


def clusters(out: Dict[str, Any]) -> List[FrozenSet[Span]]:
    """Each entity's set of mention character spans."""
    return [frozenset((m["char_start"], m["char_end"]) for m in e["mentions"]) for e in out["entities"]]


def show(cluster: FrozenSet[Span], text: str) -> str:
    """{mention | mention} of a cluster, in text order."""
    return "{" + " | ".join(text[a:b] for a, b in sorted(cluster)) + "}"


def errors(gold: Dict[str, Any], pred: Dict[str, Any], text: str, names: Dict[str, str]) -> Iterator[Tuple[str, str]]:
    """(kind, description) of every error of one document."""
    gc, pc = clusters(gold), clusters(pred)
    p_spans = {s for c in pc for s in c}
    for c in gc:
        if not c & p_spans:
            near = [s for s in p_spans for g in c if s[0] < g[1] and g[0] < s[1]]
            if near:
                yield "mention boundary", (f"gold {show(c, text)}: predicted {show(frozenset(near), text)} "
                                           f"overlaps it with other boundaries")
            else:
                yield "missed entity", f"gold {show(c, text)} ({gold['entities'][gc.index(c)]['type']}): no mention found"
        hit = [p for p in pc if p & c]
        if len(hit) > 1 and not any(p == c for p in pc):
            yield "split cluster", f"gold {show(c, text)} predicted as " + ", ".join(show(p, text) for p in hit)
    for i, p in enumerate(pc):
        parts = [g for g in gc if g & p]
        if len(parts) > 1:
            yield "merged clusters", f"predicted {show(p, text)} joins " + ", ".join(show(g, text) for g in parts)
        elif parts and parts[0] == p:
            gt, pt = gold["entities"][gc.index(p)]["type"], pred["entities"][i]["type"]
            if gt != pt:
                yield "wrong type", f"{show(p, text)} typed {pt}, gold {gt}"
    yield from relation_errors(gold, pred, gc, pc, text, names)


def relation_errors(gold: Dict[str, Any], pred: Dict[str, Any], gc: List[FrozenSet[Span]],
                    pc: List[FrozenSet[Span]], text: str, names: Dict[str, str]) -> Iterator[Tuple[str, str]]:
    """Missed gold relations between entities the model found exactly, and predicted relations not in the gold."""
    g_rel = {(gc[r["h_idx"]], gc[r["t_idx"]], r["r"]) for r in gold["relations"]}
    p_rel = {(pc[r["h_idx"]], pc[r["t_idx"]], r["r"]) for r in pred["relations"]}
    found = set(pc)
    for h, t, r in sorted(g_rel - p_rel, key=lambda x: (min(x[0]), min(x[1]), x[2])):
        if h in found and t in found:
            yield "missed relation", f"({show(h, text)}, {names.get(r, r)}, {show(t, text)}) not predicted"
    for h, t, r in sorted(p_rel - g_rel, key=lambda x: (min(x[0]), min(x[1]), x[2])):
        if h in set(gc) and t in set(gc):
            yield "wrong relation", f"({show(h, text)}, {names.get(r, r)}, {show(t, text)}) not in the gold"


def first_of_each(golds: Sequence[Dict[str, Any]], preds: Sequence[Dict[str, Any]], texts: Dict[str, str],
                  names: Dict[str, str]) -> Dict[str, str]:
    """{kind: markdown line} of the first document showing each kind."""
    by_title = {p["title"]: p for p in preds}
    out: Dict[str, str] = {}
    for g in golds:
        p = by_title.get(g["title"], {"entities": [], "relations": []})
        head = (f"document {g['title']!r}: {len(p['entities'])} predicted / {len(g['entities'])} gold entities, "
                f"{len(p['relations'])} / {len(g['relations'])} relations")
        for kind, what in errors(g, p, texts[g["title"]], names):
            out.setdefault(kind, f"- **{kind}** ({head}): {what}")
        if len(out) == len(KINDS):
            break
    return out


def main(argv: Optional[Sequence[str]] = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--gold", required=True)
    ap.add_argument("--skip", type=int, default=0)
    ap.add_argument("--pred", required=True, help="predict.py's JSON output for the same documents")
    ap.add_argument("--rel_info", default=None, help="relation names (default: next to --gold's data, if any)")
    a = ap.parse_args(argv)
    docs = json.load(open(a.gold))[a.skip:]
    names = json.load(open(a.rel_info)) if a.rel_info else {}
    texts = {d["title"]: text2doc.join_sents(d["sents"])[0] for d in docs}
    found = first_of_each(evaluation_e2e.gold_outputs(docs), json.load(open(a.pred)), texts, names)
    print("\n".join(found[k] for k in KINDS if k in found))


if __name__ == "__main__":
    main()
