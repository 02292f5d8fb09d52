"""What every task on DocREModel shares, written once: DocRED (train.py) and the biomedical task (train_bio.py).

`DocRETask` is a mixin for `engine.task.Task` (list it first: `class DocRED(DocRETask, Task)`). It holds the hooks
that depend only on the DocRED path (`DocRESettings` -> `collate.DocRECollator` -> `DocREModel.from_settings` ->
`evaluation.facts_of_outputs`): the model and its flags, batches, rows, loss terms (with DREEAM's evidence loss),
outputs, facts and what a checkpoint carries. A task adds its data (`read`), scores and files, and calls
`configure(rel2id, names)` in its `setup`. It imports no engine module and no task (ARCHITECTURE.md, "Layers").
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, List, Sequence, Tuple

import torch
from torch import nn

import evaluation
import losses
import prepro
import utils
from collate import DocRECollator
from model import DocREModel
from settings import DocRESettings

# the flags shaping the model: test mode takes them from the checkpoint
MODEL_SETTINGS = ("emb_size", "block_size", "max_seq_length", "no_entity_marker", "bilinear", "evidence_lambda")


def add_model_args(g: argparse._ArgumentGroup, max_seq_length: int = 1024) -> None:
    """The DocRE model's flags: input window, entity cap, entity marker, head, evidence."""
    g.add_argument("--max_seq_length", type=utils.SEQ_LENGTH, default=max_seq_length)
    prepro.add_max_entities_arg(g)
    g.add_argument("--no_entity_marker", action="store_true", help="do not put * around mentions")
    g.add_argument("--emb_size", type=utils.COUNT, default=768)
    g.add_argument("--block_size", type=utils.COUNT, default=64)
    g.add_argument("--bilinear", default="atlop", choices=["atlop", "maxsym"],
                   help="group bilinear head: ATLOP's, or the NCRL authors' max-symmetrized blocks (their "
                        "DocRED runs)")
    g.add_argument("--evidence_lambda", type=utils.NON_NEGATIVE, default=0.0,
                   help="weight of the evidence loss KL(evidence || sentence attention) (DREEAM: 0.1 with "
                        "BERT, 0.05 with RoBERTa; 0 = off, and no evidence is written)")
    g.add_argument("--evidence_threshold", type=utils.FRACTION, default=losses.EVIDENCE_THRESHOLD,
                   help="a predicted relation's evidence: the sentences whose attention passes this")


class DocRETask:
    """The Task hooks of a DocREModel task; `configure` fixes the settings and the collator (in `setup`)."""
    model_settings = MODEL_SETTINGS
    settings: DocRESettings
    args: argparse.Namespace
    tokenizer: Any

    def configure(self, rel2id: Dict[str, int], relation_names: Dict[str, str]) -> None:
        """The model's `DocRESettings` from the flags and the label map, and the collator."""
        a = self.args
        if a.emb_size % a.block_size:
            raise utils.UserError(f"--emb_size {a.emb_size} must be a multiple of --block_size {a.block_size} (the "
                                  f"group bilinear splits the embeddings into blocks)")
        self.settings = DocRESettings(
            rel2id, max_seq_length=a.max_seq_length, entity_marker=None if a.no_entity_marker else "*",
            emb_size=a.emb_size, block_size=a.block_size, bilinear=a.bilinear,
            evidence=a.evidence_lambda > 0, evidence_threshold=a.evidence_threshold,
            relation_names=relation_names)
        self.collator = DocRECollator(self.settings.num_class, self.tokenizer.pad_token_id or 0)

    # -- model, and what a checkpoint carries
    def build_model(self, encoder: nn.Module) -> nn.Module:
        return DocREModel.from_settings(self.settings, encoder, tokenizer=self.tokenizer)

    def meta(self) -> Dict[str, Any]:
        """The settings, and (for older readers) the label map, relation names, model arguments and marker."""
        s = self.settings
        return {"settings": s.to_dict(), "rel2id": s.rel2id, **({"relation_names": s.relation_names}
                                                                  if s.relation_names else {}),
                "model": {k: v for k, v in s.model_kwargs().items()}, "entity_marker": s.entity_marker,
                "evidence": s.evidence}

    def summary(self) -> Dict[str, Any]:
        return {"num_class": self.settings.num_class}

    # -- batches
    def collate(self, features: Sequence[dict]) -> Dict[str, torch.Tensor]:
        return self.collator(features)

    def rows(self, feature: dict) -> int:
        return len(feature["hts"])

    # -- evidence (DREEAM's supervision of the localized-context attention)
    def training_loss(self, model: nn.Module, batch: Dict[str, torch.Tensor], labels: torch.Tensor, loss_fn: Any,
                      autocast) -> List[Tuple[torch.Tensor, int]]:
        """The relation loss over pairs, plus --evidence_lambda x KL(evidence || sentence attention) over positive
        pairs when evidence is on."""
        if not self.settings.evidence:
            return super().training_loss(model, batch, labels, loss_fn, autocast)
        with autocast():
            logits, sent_attn = model(**batch, return_evidence=True)  # [P, K+1], [P, S]
        evidence, n_positive = losses.evidence_term(sent_attn, batch["evidence_index"], labels)
        return [(loss_fn(logits.float(), labels), len(labels)), (self.args.evidence_lambda * evidence, n_positive)]

    def outputs(self, model: nn.Module, batch: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """Logits `[P, K+1]`, and with evidence on each pair's sentence attention `[P, S]`."""
        return model.named_outputs(batch, evidence=self.settings.evidence)

    # -- facts
    def facts(self, outputs: Any, split: Any, loss_fn: Any, decision: losses.Decision
              ) -> List[List[evaluation.Relation]]:
        """Per feature of `split`, the facts `outputs` (engine.task.Outputs) predict under `decision`."""
        s = self.settings
        return evaluation.facts_of_outputs(outputs.logits, split.features, decision, loss_fn, s.id2rel,
                                           outputs.evidence, s.evidence_threshold)

