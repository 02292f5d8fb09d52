"""Diagnostic: the model path's end-to-end scores at several mention thresholds (tuned on the scored docs: optimistic).

python studies/end-to-end/threshold_sweep.py --model RUN/model --out sweep.json --thresholds 0.5 0.4 0.3 0.2
"""
import argparse
import json
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import torch  # noqa: E402

import entities  # noqa: E402
import evaluation_e2e  # noqa: E402
import predict  # noqa: E402
import raw_text_eval as rte  # noqa: E402
import text2doc  # noqa: E402


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="a model folder trained with --end_to_end")
    p.add_argument("--data", default=str(ROOT.parent / "shared/data/redocred/dev_revised.json"))
    p.add_argument("--skip", type=int, default=400, help="documents of --data before the scored ones")
    p.add_argument("--thresholds", type=float, nargs="+", default=[0.5, 0.4, 0.3, 0.2])
    p.add_argument("--out", required=True, help="JSON of the scores by threshold")
    a = p.parse_args()
    torch.set_num_threads(1)
    docs = json.load(open(a.data))[a.skip:]
    pipe = predict.DocREPipeline.from_pretrained(a.model)
    conv = text2doc.convert_texts(predict.spacy_for(text2doc.DEFAULT_SPACY_MODEL, ner=False), rte.plain_items(docs))
    gold = evaluation_e2e.gold_outputs(docs)
    n_gold = sum(len(d["vertexSet"]) for d in docs)
    stored, res = pipe.model_bundle, {}
    for th in a.thresholds:  # the threshold as a value of the decision (what --mention_threshold does)
        pipe.model_bundle = entities.at_mention_threshold(stored, th)
        outs = pipe.predict_documents(conv)
        s = evaluation_e2e.end_to_end_scores(gold, outs)
        found = sum(rte.entities_found(rte.gold_output(d), o)[0] for d, o in zip(docs, outs)) / n_gold
        c: Counter = Counter()
        for d, o in zip(docs, outs):
            c.update(dict(zip(("tp", "fp", "fn"), rte.relation_counts(rte.gold_output(d), o))))
        res[th] = {"found": round(found, 4), "rel_by_name": round(rte.prf(c)["f1"], 2),
                   "mention_p": round(s["mention"]["precision"], 2), "mention_r": round(s["mention"]["recall"], 2),
                   **{k: round(v["f1"], 2) for k, v in s.items()}}
        print(th, res[th], flush=True)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    main()
