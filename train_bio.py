"""Train and evaluate ATLOP on the biomedical benchmarks CDR (chemical-induced disease) and GDA (gene-disease).

This file is the biomedical task (ATLOP's name): its flags, data, scores and files. The model's hooks are
docre_task.DocRETask's, shared with train.py; the readers are biomed.py's (PubTator or EoG's `.data`, told apart by
content, both to DocRED-form documents); features come from the DocRED path with the settings' `pair_types`, so
each abstract's candidates are its chemical->disease (CDR) or gene->disease (GDA) entity pairs, one relation plus "no
relation"; the model folder records the rule, so predict.py scores the same pairs.
Scores are ATLOP's (F1 over candidate pairs), plus intra- and inter-sentence F1; best.pt is chosen by dev F1.

    python train_bio.py --data_dir dataset/cdr --model_name_or_path allenai/scibert_scivocab_cased --loss atl
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np

import biomed
import prepro
import text2doc
import utils
from docre_task import DocRETask, add_model_args
from engine.rundir import RunDirectory
from engine.runner import run
from engine.task import Outputs, Split, Task, add_split_args
from losses import Decision
from utils import UserError

logger = logging.getLogger(__name__)


def dataset_name(dataset: Optional[str], data_dir: str) -> str:
    """--dataset, else as ATLOP decides: gda when --data_dir names it, cdr otherwise."""
    return dataset or ("gda" if "gda" in os.path.basename(os.path.normpath(data_dir)).lower() else "cdr")


class Bio(DocRETask, Task):
    """CDR or GDA: PubTator or .data abstracts, typed candidate pairs, ATLOP's pair F1 (+ intra/inter)."""
    unit = "abstracts"

    def __init__(self, dataset: str = "cdr"):
        self.dataset = biomed.DATASETS[dataset]
        self.name = dataset  # written into args.json, checked in checkpoints
        self._nlp: Any = None
        self.counts: Dict[str, Dict[str, int]] = {}
        self._gold: Dict[str, Tuple[np.ndarray, np.ndarray]] = {}

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("biomedical (CDR, GDA)")
        add_split_args(g, "./dataset/cdr", "train_filter.data", "dev_filter.data", "test_filter.data")
        g.add_argument("--dataset", default=None, choices=sorted(biomed.DATASETS),
                       help="cdr (Chemical->Disease, CID) or gda (Gene->Disease, GDA); default: gda when --data_dir "
                            "is named gda, else cdr (ATLOP's rule)")
        g.add_argument("--num_class", type=utils.COUNT, default=None, help="checked: 2 (the relation and no relation)")
        add_model_args(g)
        g.add_argument("--select_metric", default="f1", choices=["f1", "intra_f1", "inter_f1"],
                       help="dev score that picks best.pt (ATLOP: f1)")
        g.add_argument("--spacy_model", default=text2doc.DEFAULT_SPACY_MODEL,
                       help="spaCy pipeline that tokenizes and splits PubTator text (not used for .data files)")
        g.add_argument("--drop_unmatched_relations", action="store_true",
                       help="leave out (and report) PubTator relations naming an identifier no mention has, "
                            "instead of refusing the file (the CDR sample set has one)")
        g.add_argument("--transformer_type", default=None, help="accepted for ATLOP's scripts and ignored")
        parser.set_defaults(top_k=1, learning_rate=2e-5)  # ATLOP's train_bio.py defaults

    def setup(self, args: argparse.Namespace, mode: str, tokenizer: Any, meta: Optional[Dict[str, Any]] = None,
              source: str = "") -> None:
        """Check --dataset, --num_class and the checkpoint's label map; fix the settings."""
        super().setup(args, mode, tokenizer, meta, source)
        args.dataset = dataset_name(args.dataset, args.data_dir)
        if args.dataset != self.name:
            raise UserError(f"--dataset {args.dataset} but this task was started for {self.name}")
        rel2id = self.dataset.rel2id
        if args.num_class is not None and args.num_class != len(rel2id):
            raise UserError(f"--num_class {args.num_class}: {self.name} has {len(rel2id)} classes (no relation and "
                            f"{self.dataset.relation})")
        saved = (meta or {}).get("rel2id")
        if saved is not None and saved != rel2id:
            raise UserError(f"--load_path {source} was trained with the label map {saved}, not {self.name}'s {rel2id}")
        self.configure(rel2id, {self.dataset.relation: self.dataset.relation_name})
        self.settings = self.settings.replace(pair_types=self.dataset.pair_types)  # the candidates, in the model

    def nlp(self) -> Any:
        """The spaCy pipeline, loaded on first use (only PubTator input needs it)."""
        if self._nlp is None:
            self._nlp = text2doc.load_spacy(self.args.spacy_model)
        return self._nlp

    def summary(self) -> Dict[str, Any]:
        return {**super().summary(), "dataset": self.name, "reader": self.counts}

    # -- data
    def documents(self, path: str, split: str) -> List[Dict[str, Any]]:
        """The split's DocRED-form documents, with only the entities of candidate pairs (as in .data files)."""
        docs, counts = biomed.read_corpus(path, self.nlp, drop_unmatched=self.args.drop_unmatched_relations)
        self.counts[split] = counts
        return [biomed.keep_paired(d, self.dataset) for d in docs]

    def read(self, split: str) -> Optional[Split]:
        a = self.args
        path = utils.data_path(a.data_dir, {"train": a.train_file, "dev": a.dev_file, "test": a.test_file}[split])
        if path is None:
            return None
        if split == "dev" and self.mode == "test" and not os.path.exists(path):
            logger.info("no dev file (%s): test mode predicts the test file only", path)
            return None
        why = utils.not_a_file(path)
        if why:
            raise UserError(f"--{split}_file {path}{why}")
        docs = self.documents(path, split)
        if not docs:
            raise UserError(f"--{split}_file {path}: no documents")
        features = prepro.features_from_documents(docs, self.tokenizer, self.settings, source=path,  # typed pairs
                                                  max_entities=a.max_entities or None)
        if split == "dev" and self.mode == "train" and not any(d["labels"] for d in docs):
            raise UserError(f"--dev_file {path} has no {self.dataset.relation} relation in any document: training "
                            f"needs a labelled dev set to select the best checkpoint")
        if split == "train" and not any(d["labels"] for d in docs):  # nothing to learn from: it trained, silently
            raise UserError(f"--train_file {path} has no {self.dataset.relation} relation between a "
                            f"{self.dataset.head_type} and a {self.dataset.tail_type} in any document: nothing to learn")
        return Split(split, features, docs, source=path)

    # -- scores and files
    def gold(self, split: Split) -> Tuple[np.ndarray, np.ndarray]:
        """(gold relation [P] bool, intra-sentence [P] bool) of the split's candidate pairs, in feature order."""
        if split.name not in self._gold:
            pairs, gold, intra = biomed.candidate_table(split.gold, self.dataset)  # the features' pairs, in order
            hts = [(i, h, t) for i, f in enumerate(split.features) for h, t in f["hts"].tolist()]
            if pairs != hts:
                raise RuntimeError(f"{split.source}: the features' candidate pairs are not the documents' typed pairs")
            self._gold[split.name] = (gold, intra)
        return self._gold[split.name]

    def score(self, outputs: Outputs, split: Split, loss_fn: Any, decision: Decision) -> Dict[str, Any]:
        pred = decision.labels(loss_fn, outputs.logits)[:, 1].bool().numpy()  # [P]
        return biomed.pair_scores(pred, *self.gold(split))

    def write(self, run: RunDirectory, split: Split, outputs: Outputs, loss_fn: Any,
              decision: Decision) -> Dict[str, Any]:
        """<split>_pred.json (PMID, entity indices and identifiers, relation, score) + <split>_scores.json."""
        records = []
        for doc, facts in zip(split.gold, self.facts(outputs, split, loss_fn, decision)):
            ents = doc["vertexSet"]
            records += [{"title": doc["title"], "h_idx": r.h_idx, "t_idx": r.t_idx, "h_id": ents[r.h_idx][0]["id"],
                         "t_id": ents[r.t_idx][0]["id"], "r": r.r, "score": round(float(r.score), 4)} for r in facts]
        run.write_json(f"{split.name}_pred.json", records)
        labelled = any(d["labels"] for d in split.gold)
        scores = self.score(outputs, split, loss_fn, decision) if labelled else {}
        if labelled:
            run.write_json(f"{split.name}_scores.json", {**scores, **decision.report()})
        return scores


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train on CDR or GDA (unless only --load_path is given), then predict and score dev and test."""
    pre = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    pre.add_argument("--dataset", default=None)
    pre.add_argument("--data_dir", default="./dataset/cdr")
    known, _ = pre.parse_known_args(argv)
    name = dataset_name(known.dataset, known.data_dir)
    return run(Bio(name if name in biomed.DATASETS else "cdr"), argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    utils.cli(main)
