"""Diagnostic: do two mention heads err on the same spans? Mention F1 and gold entities found of each model, and of
the mean of their span log-odds, at several thresholds (the held-out documents themselves: optimistic).

The question behind `--span_head rich+bio` (studies/end-to-end, "Both heads"): if averaging two models of the same
head gains little and averaging a span model with a BIO model gains much, the two heads are complementary, and one
encoder with both heads should keep most of the gain at the cost of one tagging layer.

    OMP_NUM_THREADS=1 python studies/end-to-end/head_ensemble.py --models RICH_RUN/model BIO_RUN/model \
        --out ensemble.json

Found and mention F1 are `scripts/raw_text_eval.py`'s and `evaluation_e2e`'s: text from `text2doc.join_sents` of the
gold sentences, split by the model path's spaCy pipeline, mentions compared on character spans, entities found by
string. Only the mention decision is measured (no coreference, types or relations).
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any, Dict, List, Sequence, Tuple

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import numpy as np  # noqa: E402
import torch  # noqa: E402

import entities  # noqa: E402
import evaluation_e2e  # noqa: E402
import predict  # noqa: E402
import prepro  # noqa: E402
import raw_text_eval as rte  # noqa: E402
import text2doc  # noqa: E402
from collate import DocRECollator  # noqa: E402

Span = Tuple[int, int]


def span_log_odds(model_dir: str, conv: Sequence[Dict[str, Any]]) -> List[Dict[str, np.ndarray]]:
    """Per converted document: its candidate spans [C, 2] (words), their mention log-odds [C] under the model, and
    each word's character span [W, 2] in the text."""
    bundle = predict.DocREPipeline.from_pretrained(model_dir).model_bundle
    model, settings = bundle.pretrained.model, bundle.settings
    enc = prepro.WordTokenizer.of(bundle.tokenizer)
    plain = [{"title": d["title"], "sents": d["sents"], "vertexSet": []} for d in conv]
    feats = entities.document_features(plain, enc, settings)
    collate = entities.EntityCollator(DocRECollator(settings.num_class, enc.tokenizer.pad_token_id or 0),
                                      settings.max_span_width)
    model.eval()
    out = []
    with torch.no_grad():
        for i, doc in enumerate(conv):
            batch = {k: v for k, v in collate([feats[i]]).items() if k != "labels"}
            hidden = model.encode_states(batch["input_ids"], batch["attention_mask"]).hidden
            words = np.array([o for row in entities.token_offsets(doc) for o in row], dtype=np.int64).reshape(-1, 2)
            out.append({"spans": batch["e2e_span_word"].numpy(), "words": words,
                        "logit": model.entity_heads.mention_logits(hidden, batch).numpy()})
    return out


def decoded_spans(doc: Dict[str, np.ndarray], logit: np.ndarray, threshold: float) -> List[Span]:
    """Character spans that `entities.decode_batch` keeps at `threshold` (probability, then greedy decoding)."""
    prob = torch.sigmoid(torch.from_numpy(logit)).numpy()
    k = np.flatnonzero(prob > threshold)
    kept = doc["spans"][k[entities.non_overlapping(doc["spans"][k], prob[k])]]
    return [(int(doc["words"][a, 0]), int(doc["words"][b - 1, 1])) for a, b in kept]


def scores(golds: Sequence[Dict[str, Any]], scored: Sequence[Dict[str, np.ndarray]], logits: Sequence[np.ndarray],
           threshold: float) -> Dict[str, float]:
    """Mention P/R/F1 (`evaluation_e2e`) and the share of gold entities found (`raw_text_eval.entities_found`), in
    percent, of the spans decoded at `threshold`, each its own entity, against gold output objects."""
    preds = [{"title": g["title"], "entities": [{"mentions": [{"char_start": a, "char_end": b, "text": g["text"][a:b]}]}
                                                for a, b in decoded_spans(d, logit, threshold)]}
             for g, d, logit in zip(golds, scored, logits)]
    mention = evaluation_e2e.end_to_end_scores(golds, preds)["mention"]
    counts = [rte.entities_found(g, p) for g, p in zip(golds, preds)]  # (found, gold entities) per document
    found, total = sum(f for f, _ in counts), sum(t for _, t in counts)
    return {"mention_p": round(mention["precision"], 2), "mention_r": round(mention["recall"], 2),
            "mention_f1": round(mention["f1"], 2), "found": round(100 * found / max(total, 1), 2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", nargs=2, required=True, help="two model folders trained with --end_to_end")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/redocred/dev_revised.json"))
    p.add_argument("--skip", type=int, default=400, help="documents of --data before the scored ones")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    p.add_argument("--out", required=True, help="JSON of the scores by model and threshold")
    a = p.parse_args()
    torch.set_num_threads(1)
    docs = json.load(open(a.data))[a.skip:]
    conv = text2doc.convert_texts(predict.spacy_for(text2doc.DEFAULT_SPACY_MODEL, ner=False), rte.plain_items(docs))
    first, second = (span_log_odds(m, conv) for m in a.models)
    if any(len(x["spans"]) != len(y["spans"]) or (x["spans"] != y["spans"]).any() for x, y in zip(first, second)):
        raise SystemExit("the two models propose different candidate spans (different --max_span_width?)")
    runs = {a.models[0]: [d["logit"] for d in first], a.models[1]: [d["logit"] for d in second],
            "mean of the log-odds": [(x["logit"] + y["logit"]) / 2 for x, y in zip(first, second)]}
    golds = [rte.gold_output(d) for d in docs]
    res = {name: {str(t): scores(golds, first, logits, t) for t in a.thresholds} for name, logits in runs.items()}
    for name, by_t in res.items():
        best = max(by_t, key=lambda t: by_t[t]["mention_f1"])
        print(f"{name}: best mention F1 at {best}: {by_t[best]}")
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
