"""Batches: `DocRECollator` pads DocRED features (prepro) into the model's batch; `PaddingCollator` pads the
single-sequence features of the classification tasks (DialogRE, GoEmotions); `label_counts` counts DocRED labels.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Sequence, Tuple

import numpy as np
import torch


class DocRECollator:
    """Pad a list of DocRED features into one batch of tensors (see ARCHITECTURE.md, "batch").

    Entities and pairs of all documents are flattened; `hts` indexes the flattened entities.
    Mentions whose span was truncated away are already absent from `entity_pos`.
    Features with sentence spans `sent_pos` ([n_sents, 2] token [start, end) in input_ids coordinates) add
    `sent_pos` [B, S_max, 2] (-1 rows pad); with `evidence` (per row of `labels`, that relation's evidence
    sentence ids) they add `evidence_index` [n, 2] of (batch pair, sentence), for `losses.evidence_target`.
    """

    def __init__(self, num_class: int, pad_token_id: int = 0):
        self.num_class = num_class
        self.pad_token_id = pad_token_id

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        max_len = max(len(f["input_ids"]) for f in features)
        input_ids = torch.full((len(features), max_len), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(features), max_len), dtype=torch.long)
        mention_pos: List[np.ndarray] = []
        mention_entity: List[np.ndarray] = []
        mention_doc: List[np.ndarray] = []
        entity_doc: List[np.ndarray] = []
        hts: List[np.ndarray] = []
        pair_doc: List[np.ndarray] = []
        label_rows: List[np.ndarray] = []
        label_cols: List[np.ndarray] = []
        n_ent = n_pair = 0
        for i, f in enumerate(features):
            ids = np.asarray(f["input_ids"], dtype=np.int64)
            input_ids[i, : len(ids)] = torch.from_numpy(ids)
            attention_mask[i, : len(ids)] = 1
            ent_pos = f["entity_pos"]
            counts = np.array([len(m) for m in ent_pos], dtype=np.int64)
            starts = np.array([s for m in ent_pos for s, _ in m], dtype=np.int64)
            mention_pos.append(starts)
            mention_entity.append(np.repeat(np.arange(len(ent_pos), dtype=np.int64), counts) + n_ent)
            mention_doc.append(np.full(len(starts), i, dtype=np.int64))
            entity_doc.append(np.full(len(ent_pos), i, dtype=np.int64))
            f_hts = np.asarray(f["hts"], dtype=np.int64).reshape(-1, 2)
            hts.append(f_hts + n_ent)
            pair_doc.append(np.full(len(f_hts), i, dtype=np.int64))
            pos = np.asarray(f.get("labels", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)
            label_rows.append(pos[:, 0] + n_pair)
            label_cols.append(pos[:, 1])
            n_ent += len(ent_pos)
            n_pair += len(f_hts)
        labels = torch.zeros((n_pair, self.num_class), dtype=torch.float32)  # [n_pairs, K+1]
        rows, cols = np.concatenate(label_rows), np.concatenate(label_cols)
        labels[torch.from_numpy(rows), torch.from_numpy(cols)] = 1.0
        labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
        cat = lambda xs, shape=(-1,): torch.from_numpy(np.concatenate(xs).reshape(shape))  # noqa: E731
        return {
            "input_ids": input_ids,  # [B, L]
            "attention_mask": attention_mask,  # [B, L]
            "mention_pos": cat(mention_pos),  # [M] token index of each mention's start marker
            "mention_doc": cat(mention_doc),  # [M]
            "mention_entity": cat(mention_entity),  # [M] index into the batch's entities
            "entity_doc": cat(entity_doc),  # [E]
            "hts": cat(hts, (-1, 2)),  # [P, 2] indices into the batch's entities
            "pair_doc": cat(pair_doc),  # [P]
            "labels": labels,  # [P, K+1], column 0 = Na
            **self._sentences(features),  # sent_pos, evidence_index: only from features that have them
        }

    @staticmethod
    def _sentences(features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        """`sent_pos` [B, S_max, 2] and `evidence_index` [n, 2] where every feature has the field, else nothing."""
        out: Dict[str, torch.Tensor] = {}
        for field in ("sent_pos", "evidence"):
            has = [field in f for f in features]
            if any(has) and not all(has):
                i = has.index(False)
                raise ValueError(f"batch mixes features with and without {field!r} (document {i}, "
                                 f"{features[i].get('title')!r}, lacks it)")
        if "sent_pos" in features[0]:
            spans = [np.asarray(f["sent_pos"], dtype=np.int64).reshape(-1, 2) for f in features]
            sent_pos = torch.full((len(features), max(len(x) for x in spans), 2), -1, dtype=torch.long)
            for i, x in enumerate(spans):
                sent_pos[i, :len(x)] = torch.from_numpy(x)
            out["sent_pos"] = sent_pos  # [B, S_max, 2] token [start, end) of each sentence, -1 = padding
        if "evidence" in features[0]:
            cites, n_pair = [], 0
            for i, f in enumerate(features):
                rows = np.asarray(f.get("labels", np.zeros((0, 2))), dtype=np.int64).reshape(-1, 2)[:, 0]
                if len(f["evidence"]) != len(rows):
                    raise ValueError(f"document {i} ({f.get('title')!r}): {len(f['evidence'])} evidence lists for "
                                     f"{len(rows)} labels")
                cites += [(n_pair + r, s) for r, sents in zip(rows.tolist(), f["evidence"]) for s in sents]
                n_pair += len(np.asarray(f["hts"]).reshape(-1, 2))
            out["evidence_index"] = torch.tensor(cites, dtype=torch.long).view(-1, 2)  # [n, 2] (pair, sentence)
        return out


def label_counts(features: Sequence[Dict[str, Any]], collate: Callable[[Sequence[dict]], Dict[str, torch.Tensor]],
                 chunk: int = 64) -> Tuple[torch.Tensor, int]:
    """(positive count of each class [K+1] over the collated labels' rows, number of rows), column 0 counting the
    rows without a relation; any collator's labels, a chunk of features at a time."""
    counts, n = None, 0
    for i in range(0, len(features), chunk):
        labels = collate(features[i:i + chunk])["labels"]  # [rows, K+1]
        part = labels.sum(0, dtype=torch.float64)
        counts = part if counts is None else counts + part
        n += len(labels)
    return counts, n


class PaddingCollator:
    """Pad single-sequence features into `input_ids`, `attention_mask` [B, L] and multi-hot `labels` [B, C].

    A feature holds `input_ids` and `labels` (the ids of its positive columns). With `none_column`, column 0 (the
    none class) is set where no other column is; with `segments`, `token_type_ids` [B, L] is 1 from the feature's
    `n_first` on (its second segment) and 0 before it and on padding.
    """

    def __init__(self, num_class: int, pad_token_id: int = 0, none_column: bool = False, segments: bool = False):
        self.num_class, self.pad_token_id = num_class, pad_token_id
        self.none_column, self.segments = none_column, segments

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        n = len(features)
        lengths = np.fromiter((len(f["input_ids"]) for f in features), dtype=np.int64, count=n)  # [B]
        positions = np.arange(lengths.max())[None, :]  # [1, L]
        mask = positions < lengths[:, None]  # [B, L]
        input_ids = np.full(mask.shape, self.pad_token_id, dtype=np.int64)  # [B, L]
        input_ids[mask] = np.concatenate([np.asarray(f["input_ids"], dtype=np.int64).reshape(-1) for f in features])
        batch = {"input_ids": torch.from_numpy(input_ids), "attention_mask": torch.from_numpy(mask).long()}
        if self.segments:
            n_first = np.fromiter((f["n_first"] for f in features), dtype=np.int64, count=n)  # [B]
            batch["token_type_ids"] = torch.from_numpy(mask & (positions >= n_first[:, None])).long()  # [B, L]
        batch["labels"] = self._labels(features)
        return batch

    def _labels(self, features: Sequence[Dict[str, Any]]) -> torch.Tensor:
        """Multi-hot labels [B, C] (float32), column 0 filled in with `none_column`."""
        cols = [np.asarray(f["labels"], dtype=np.int64).reshape(-1) for f in features]
        rows = np.repeat(np.arange(len(features)), [len(c) for c in cols])  # [n_pos]
        labels = torch.zeros((len(features), self.num_class))  # [B, C]
        labels[torch.from_numpy(rows), torch.from_numpy(np.concatenate(cols))] = 1.0
        if self.none_column:
            labels[:, 0] = (labels[:, 1:].sum(1) == 0).float()
        return labels
