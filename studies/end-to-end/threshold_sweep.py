"""Diagnostic: the model path's end-to-end scores at several mention thresholds (tuned on the scored docs: optimistic)."""
import json, sys, time
ROOT = __import__("pathlib").Path(__file__).resolve().parents[2]; sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]
import torch; torch.set_num_threads(1)
import entities, predict, text2doc, evaluation_e2e, raw_text_eval as rte
docs = json.load(open("/work/shared/data/redocred/dev_revised.json"))[400:]
pipe = predict.DocREPipeline.from_pretrained("/tmp/e2e/rd-e2e")
nlp = predict.spacy_for(text2doc.DEFAULT_SPACY_MODEL, "model")
conv = text2doc.convert_texts(nlp, rte.plain_items(docs))
gold = evaluation_e2e.gold_outputs(docs)
res = {}
stored = pipe.model_bundle
for th in (0.5, 0.4, 0.3, 0.2):  # the threshold as a value of the decision (what --mention_threshold does)
    pipe.model_bundle = entities.at_mention_threshold(stored, th)
    outs = pipe.predict_documents(conv)
    s = evaluation_e2e.end_to_end_scores(gold, outs)
    found = sum(rte.entities_found(rte.gold_output(d), o)[0] for d, o in zip(docs, outs)) / sum(len(d["vertexSet"]) for d in docs)
    from collections import Counter
    c = Counter()
    for d, o in zip(docs, outs): c.update(dict(zip(("tp", "fp", "fn"), rte.relation_counts(rte.gold_output(d), o))))
    res[th] = {"found": found, "rel_by_name": rte.prf(c)["f1"], **{k: round(v["f1"], 2) for k, v in s.items()}}
    print(th, res[th], flush=True)
    if th == 0.5:
        json.dump(outs, open("/tmp/e2e/model_path_outputs.json", "w"))
json.dump(res, open("/tmp/e2e/threshold_sweep.json", "w"), indent=1)
