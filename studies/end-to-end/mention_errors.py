"""Where the mention head's errors come from: counts by kind and by the casing of the span's first and last words.

Reads the gold DocRED file and `predict.py`'s output objects for the same documents (text from
`text2doc.join_sents` of the gold sentences, as `scripts/raw_text_eval.py` makes it), compares mention character
spans, and prints

- predicted mentions: exact, overlapping a gold mention (boundary), or overlapping none (spurious);
- gold mentions: found, overlapped by a prediction (boundary), or missed;
- boundary pairs: the prediction inside the gold span (shorter), around it (longer), or crossing it;
- gold and spurious mentions by shape (`entities.word_shapes` of the first and last words: U capitalised or all
  capitals, l lower case, d digit, o other), the question behind the rich span head.

    python studies/end-to-end/mention_errors.py --gold ../shared/data/redocred/dev_revised.json --skip 400 \
        --pred model_path_outputs.json
"""
from __future__ import annotations

import argparse
import collections
import json
import os
import sys
from typing import Any, Dict, List, Sequence, Set, Tuple

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
import entities  # noqa: E402
import evaluation_e2e  # noqa: E402

Span = Tuple[int, int]
SHAPE_LETTER = "olUUd"  # entities.word_shapes ids 0..4


def spans_of(out: Dict[str, Any]) -> Set[Span]:
    """The mention character spans of an output object."""
    return {(m["char_start"], m["char_end"]) for e in out["entities"] for m in e["mentions"]}


def overlaps(a: Span, b: Span) -> bool:
    return a[0] < b[1] and b[0] < a[1]


def shape_of(text: str, span: Span) -> str:
    """Casing letters of a span's first and last words (split on spaces, as join_sents joins words)."""
    words = text[span[0]:span[1]].split(" ")
    return "".join(SHAPE_LETTER[s] for s in entities.word_shapes([words[0], words[-1]]))


def count(gold: Sequence[Dict[str, Any]], pred: Sequence[Dict[str, Any]]) -> Dict[str, collections.Counter]:
    """The counts of the module docstring, documents aligned by title."""
    by_title = {g["title"]: g for g in evaluation_e2e.gold_outputs(gold)}
    c: Dict[str, collections.Counter] = {k: collections.Counter() for k in ("pred", "gold", "boundary", "gold_shape",
                                                                            "spurious_shape")}
    for p in pred:
        g, text = by_title[p["title"]], p["text"]
        gs, ps = spans_of(g), spans_of(p)
        for s in ps:
            kind = "exact" if s in gs else "boundary" if any(overlaps(s, b) for b in gs) else "spurious"
            c["pred"][kind] += 1
            if kind == "spurious":
                c["spurious_shape"][shape_of(text, s)] += 1
        for s in gs:
            c["gold"]["found" if s in ps else "boundary" if any(overlaps(s, b) for b in ps) else "missed"] += 1
            c["gold_shape"][shape_of(text, s)] += 1
        for s in ps - gs:
            for b in gs - ps:
                if overlaps(s, b):
                    inside, around = b[0] <= s[0] and s[1] <= b[1], s[0] <= b[0] and b[1] <= s[1]
                    c["boundary"]["shorter" if inside else "longer" if around else "crossing"] += 1
    return c


def main(argv: List[str] | None = None) -> Dict[str, collections.Counter]:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--gold", required=True, help="DocRED JSON with the gold entities")
    p.add_argument("--skip", type=int, default=0, help="documents of --gold before the scored ones")
    p.add_argument("--pred", required=True, help="predict.py's output JSON for the same documents")
    args = p.parse_args(argv)
    with open(args.gold, encoding="utf-8") as f:
        gold = json.load(f)[args.skip:]
    with open(args.pred, encoding="utf-8") as f:
        pred = json.load(f)
    c = count(gold, pred)
    for name, counter in c.items():
        print(f"{name}: " + ", ".join(f"{k} {v}" for k, v in counter.most_common()))
    return c


if __name__ == "__main__":
    main()
