"""Train, evaluate and predict document-level relation extraction on DocRED (ATLOP's head; BCE, ATL or NCRL).

This file is the DocRED task: its flags, data, decision and files. The loop, checkpoints, run directory and DDP
are the engine's (engine/), shared with dialogre.py and goemotions.py; the model's hooks (flags, settings, batches,
loss terms, outputs, checkpoint meta) are docre_task.DocRETask's, shared with train_bio.py. The DocRED path itself
(documents -> features -> model -> facts) is the library's, one `DocRESettings` value fixing it:
prepro.read_docred -> collate.DocRECollator -> DocREModel.from_settings -> evaluation.facts_of_outputs.

    python train.py --data_dir dataset/docred --model_name_or_path roberta-large --loss ncrl --shift 0.05
"""
from __future__ import annotations

import argparse
import logging
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

import e2e_tuning
import entities
import evaluation
import feature_cache
import prepro
import utils
from docre_task import MODEL_SETTINGS, DocRETask, add_model_args
from engine.distributed import rank_zero_first, world_info
from engine.rundir import RunDirectory
from engine.runner import run
from engine.task import Outputs, Split, Task, add_split_args
from losses import Decision
from utils import UserError

logger = logging.getLogger(__name__)


class DocRED(DocRETask, Task):
    """Everything DocRED-specific: label map, features, gold files, decisions, scores and the official files."""
    name = "docred"
    unit = "documents"
    model_settings = MODEL_SETTINGS + ("end_to_end", "max_span_width", "span_head")
    loss_settings = ("mention_weight", "coref_weight", "type_weight", "mention_pos_weight")  # --end_to_end's

    @classmethod
    def add_args(cls, parser: argparse.ArgumentParser) -> None:
        g = parser.add_argument_group("docred")
        add_split_args(g, "./dataset/docred", "train_annotated.json", "dev.json", "test.json")
        g.add_argument("--ign_train_file", default="train_annotated.json",
                       help="the human-annotated training set whose facts Ign F1 leaves out, as the official "
                            "scorer does (not --train_file: in distant pretraining that is the distant set)")
        g.add_argument("--train_distant", default=None,
                       help="distant training file: also report the official 'ignore distant' F1 (ign_f1_distant)")
        g.add_argument("--rel_info", default=None, help="rel_info.json (default <data_dir>/rel_info.json)")
        g.add_argument("--rel2id", default=None, help="label map JSON (default: built from rel_info.json)")
        g.add_argument("--num_class", type=utils.COUNT, default=None,
                       help="checked against the label map (97 on DocRED)")
        add_model_args(g)
        g.add_argument("--select_metric", default="ign_f1", choices=["f1", "ign_f1"],
                       help="dev score that picks best.pt (ATLOP and the NCRL authors: f1, which the paper "
                            "scripts pass); ign_f1 falls back to f1 when --ign_train_file is absent")
        g.add_argument("--cache_dir", default=None, help="feature cache (default <data_dir>/.cache; 'none' to disable)")
        g.add_argument("--transformer_type", default=None, help="accepted for ATLOP's scripts and ignored: special "
                                                                  "tokens come from the tokenizer")
        entities.add_args(g)

    # -- set-up: the label map and the settings, once
    def setup(self, args: argparse.Namespace, mode: str, tokenizer: Any, meta: Optional[Dict[str, Any]] = None,
              source: str = "") -> None:
        """Check --data_dir, fix the label map (test mode: the checkpoint's, unless --rel2id or --rel_info is given)
        and the model's settings, the feature cache, the collator and the metric that picks best.pt."""
        super().setup(args, mode, tokenizer, meta, source)
        if mode == "train" and not os.path.isdir(args.data_dir):  # test mode may name its files with their paths
            names = [n for n in (args.train_file, args.dev_file, args.test_file) if n and not os.path.dirname(n)]
            raise UserError(f"--data_dir {args.data_dir}: no such folder (it should hold the DocRED files: "
                            f"{', '.join(names + ['rel_info.json'])})")
        saved = (meta or {}).get("rel2id")
        adopt = mode == "test" and saved is not None and args.rel2id is None and args.rel_info is None
        rel2id = dict(saved) if adopt else self.load_rel2id()
        if adopt and args.num_class is not None and args.num_class != len(rel2id):
            raise UserError(f"--load_path {source} was trained with a label map of {len(rel2id)} classes, but this "
                            f"run passes --num_class {args.num_class}: drop the flag (test mode takes the map from "
                            f"the checkpoint)")
        if saved is not None and saved != rel2id:
            diff = sorted(set(saved.items()) ^ set(rel2id.items()))[:5]
            raise UserError(f"--load_path {source} was trained with a label map of {len(saved)} classes, but this "
                            f"run's map has {len(rel2id)} (first differences: {diff}); pass its --rel2id.")
        self.configure(rel2id, self.relation_names(rel2id))
        off = args.cache_dir is not None and args.cache_dir.lower() == "none"
        default = os.path.join(args.data_dir, ".cache") if os.path.isdir(args.data_dir) else None  # no folder made
        self.cache = None if off else feature_cache.resolve_cache_dir(args.cache_dir or default)
        try:  # --end_to_end: entity heads (entities.py); off, the settings are unchanged
            self.settings = entities.task_settings(self.settings, args, meta, self.path(args.train_file))
        except ValueError as e:
            raise UserError(str(e)) from e
        if self.settings.end_to_end:
            self.collator = entities.EntityCollator(self.collator, self.settings.max_span_width)
        if self.ign_file() is None:
            logger.warning("Ign F1 is not computed (null in every score): the annotated training file "
                           "--ign_train_file %s is absent", self.path(args.ign_train_file))
            if mode == "train" and args.select_metric == "ign_f1":
                logger.warning("the best checkpoint is chosen by dev F1: --select_metric ign_f1 needs the annotated "
                               "training file (--ign_train_file %s), which is absent", args.ign_train_file)
                self.metric = "f1"
        dev, ign = self.path(args.dev_file), self.ign_file()
        if mode == "train" and self.metric == "ign_f1" and ign and dev and utils.same_file(dev, ign):
            logger.warning("the best checkpoint is chosen by dev F1: --dev_file is --ign_train_file, so every dev fact "
                           "is a training fact and Ign F1 is 0 by construction")
            self.metric = "f1"
        self.check_fact_files()

    def check_fact_files(self) -> None:
        """Read the Ign F1 training files now, not at the first evaluation after the training; only rank 0 scores,
        so only it reads them (once a process), and a bad one is refused on every rank."""
        a = self.args
        train = self.path(a.train_file) if self.mode == "train" else None  # validated when read, before training
        with rank_zero_first():
            if world_info()[0] != 0:
                return
            for flag, path in (("--ign_train_file", self.ign_file()), ("--train_distant", self.path(a.train_distant))):
                if path is not None and not (train and utils.same_file(path, train)):
                    try:
                        evaluation.train_facts(path)
                    except (OSError, ValueError) as e:
                        raise UserError(f"{flag}: {e}") from e

    def load_rel2id(self) -> Dict[str, int]:
        """The label map of --rel2id, --rel_info or <data_dir>/rel_info.json, checked against --num_class."""
        a = self.args
        try:
            rel2id = prepro.load_rel2id(a.data_dir, rel2id_file=a.rel2id, rel_info_file=a.rel_info)
            prepro.check_num_class(rel2id, a.num_class)
        except OSError as e:
            raise UserError(f"label map: cannot read {e.filename} ({e.strerror}); pass --rel_info or --rel2id") from e
        except ValueError as e:
            raise UserError(str(e)) from e
        return rel2id

    def relation_names(self, rel2id: Dict[str, int]) -> Dict[str, str]:
        """{relation id: name} of rel_info.json (--rel_info or <data_dir>/rel_info.json), empty when absent."""
        path = self.args.rel_info or os.path.join(self.args.data_dir, "rel_info.json")
        if not os.path.isfile(path):
            return {}
        names = utils.read_json(path, "--rel_info")
        return {r: str(names[r]) for r in rel2id if r in names} if isinstance(names, dict) else {}

    def path(self, name: Optional[str]) -> Optional[str]:
        return utils.data_path(self.args.data_dir, name)

    def ign_file(self) -> Optional[str]:
        """--ign_train_file when it exists; without it Ign F1 is None."""
        path = self.path(self.args.ign_train_file)
        return path if path and os.path.exists(path) else None

    # -- data
    def read(self, split: str) -> Optional[Split]:
        a = self.args
        path = self.path({"train": a.train_file, "dev": a.dev_file, "test": a.test_file}[split])
        if path is None:
            return None
        test_mode = self.mode == "test"
        if split == "dev" and test_mode and a.dev_file == "dev.json" and not os.path.exists(path):
            logger.info("no dev file (%s): test mode predicts the test file only", path)
            return None
        why = utils.not_a_file(path)
        if why:
            raise UserError(f"--{split}_file {path}{why}" + (f" (--data_dir {a.data_dir} does not exist)"
                                                            if not os.path.isdir(a.data_dir) else ""))
        if split == "train":
            dev = self.path(a.dev_file)
            if dev and utils.same_file(path, dev):
                logger.warning("--train_file and --dev_file are the same file (%s): dev scores will be optimistic",
                               path)
        with rank_zero_first():  # rank 0 builds the cache first
            # test mode: labels of relations the model does not know are left out of the features and count as
            # misses in the scores, which compare with the file's own labels
            features = prepro.read_docred(path, self.tokenizer, self.settings, cache_dir=self.cache,
                                          show_progress=world_info()[0] == 0 and not a.no_progress,
                                          skip_unknown_relations=test_mode,
                                          max_entities=a.max_entities or None)
        docs = utils.read_json(path, f"--{split}_file") if split != "train" else None
        if split == "dev" and not test_mode and not any(d.get("labels") for d in docs):
            raise UserError(f"--dev_file {path} has no labels in any document: training needs a labelled dev set "
                            f"to select the best checkpoint")
        if self.settings.end_to_end:  # each document's words, gold mentions, clusters and types
            raw = docs if docs is not None else utils.read_json(path, f"--{split}_file")
            features = entities.JoinedFeatures(features, entities.entity_fields(raw, self.tokenizer, self.settings))
        return Split(split, features, docs, source=path)

    def training_loss(self, model: nn.Module, batch: Dict[str, torch.Tensor], labels: torch.Tensor, loss_fn: Any,
                      autocast) -> List[Tuple[torch.Tensor, int]]:
        """With --end_to_end, the relation loss and the entity heads' losses; else the shared terms."""
        if self.settings.end_to_end:
            return entities.joint_loss(model, batch, labels, loss_fn, autocast, entities.loss_weights(self.args))
        return super().training_loss(model, batch, labels, loss_fn, autocast)

    def clip_groups(self, model: nn.Module) -> List[List[nn.Parameter]]:
        """With --end_to_end, the entity heads apart from the rest: their gradient (the new span scorer's, about
        3x the relation head's at the start) would otherwise shrink every relation step under the shared clip."""
        if not self.settings.end_to_end:
            return super().clip_groups(model)
        heads = {id(p) for p in model.entity_heads.parameters()}
        return [[p for p in model.parameters() if id(p) not in heads], list(model.entity_heads.parameters())]

    # -- decisions and scores
    def tune_with_model(self, model: nn.Module, split: Split, loss_fn: Any,
                        decision: Decision) -> Tuple[Decision, Dict[str, Any]]:
        """With --end_to_end, the mention threshold tuned on the entity heads' predictions on `split` (e2e_tuning),
        and the end-to-end scores at it; else nothing."""
        if not self.settings.end_to_end:
            return decision, {}
        dtype = utils.amp_dtype(next(model.parameters()).device, self.args.amp)
        return e2e_tuning.tune(model, split, self.collate, self.settings, decision, loss_fn,
                               self.args.test_batch_size, dtype)

    def predictions(self, outputs: Outputs, split: Split, loss_fn: Any, decision: Decision) -> List[dict]:
        """The official-format facts of `outputs` under `decision`, with their evidence sentences when on."""
        facts = self.facts(outputs, split, loss_fn, decision)
        return evaluation.official_records(facts, split.features, with_evidence=outputs.evidence is not None)

    def score(self, outputs: Outputs, split: Split, loss_fn: Any, decision: Decision) -> Dict[str, Any]:
        return self._score_preds(self.predictions(outputs, split, loss_fn, decision), split)

    def _score_preds(self, preds: List[dict], split: Split) -> Dict[str, Any]:
        return evaluation.official_evaluate(preds, split.gold, train_annotated=self.ign_file(),
                                            train_distant=self.path(self.args.train_distant))

    def write(self, run: RunDirectory, split: Split, outputs: Outputs, loss_fn: Any,
              decision: Decision) -> Dict[str, Any]:
        """dev_pred.json + dev_scores.json; result.json + result.zip (+ test_scores.json when labelled)."""
        preds = self.predictions(outputs, split, loss_fn, decision)
        labelled = any(d.get("labels") for d in split.gold)
        scores = self._score_preds(preds, split) if labelled else {}
        if split.name == "dev":
            run.write_json("dev_pred.json", preds)
            run.write_json("dev_scores.json", {**scores, **decision.report()})
            return scores
        evaluation.check_submission(preds, split.gold, set(self.settings.rel2id) - {"Na"})
        run.write_json("result.json", preds)
        if run.is_main:
            evaluation.write_codalab_zip(run.file("result.json"), run.file("result.zip"))
        if labelled:
            run.write_json("test_scores.json", {**scores, **decision.report()})
        return scores


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
    """Train on DocRED (unless only --load_path is given), then write dev and test predictions and scores."""
    return run(DocRED(), argv, __doc__.splitlines()[0])


if __name__ == "__main__":
    utils.cli(main)
