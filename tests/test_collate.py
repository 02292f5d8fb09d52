"""collate: the DocRED batch (entities, pairs and labels flattened) and the padding collator of the
single-sequence tasks (DialogRE, GoEmotions)."""
import numpy as np
import torch

from collate import DocRECollator, PaddingCollator, label_counts


def feature(n_tokens, ent_pos, labels=()):
    n = len(ent_pos)
    hts = [[h, t] for h in range(n) for t in range(n) if h != t]
    return {"title": "d", "input_ids": list(range(1, n_tokens + 1)), "entity_pos": ent_pos,
            "hts": np.array(hts, dtype=np.int64).reshape(-1, 2), "labels": np.array(labels).reshape(-1, 2)}


def test_collator_flattens_entities_pairs_and_labels():
    f1 = feature(5, [[(1, 2)], [(2, 3), (3, 4)]], labels=[(0, 2), (0, 3)])  # 2 entities, 2 pairs
    f2 = feature(3, [[(0, 1)], [(1, 2)], [(2, 3)]], labels=[(5, 1)])  # 3 entities, 6 pairs
    b = DocRECollator(num_class=4, pad_token_id=9)([f1, f2])
    assert b["input_ids"].tolist() == [[1, 2, 3, 4, 5], [1, 2, 3, 9, 9]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1], [1, 1, 1, 0, 0]]
    assert b["mention_pos"].tolist() == [1, 2, 3, 0, 1, 2]
    assert b["mention_entity"].tolist() == [0, 1, 1, 2, 3, 4]
    assert b["mention_doc"].tolist() == [0, 0, 0, 1, 1, 1]
    assert b["entity_doc"].tolist() == [0, 0, 1, 1, 1]
    assert b["hts"][:2].tolist() == [[0, 1], [1, 0]] and b["hts"][2].tolist() == [2, 3]
    assert b["pair_doc"].tolist() == [0, 0] + [1] * 6
    assert b["labels"].shape == (8, 4)
    assert b["labels"][0].tolist() == [0, 0, 1, 1]  # multi-label pair
    assert b["labels"][1].tolist() == [1, 0, 0, 0]  # Na
    assert b["labels"][7].tolist() == [0, 1, 0, 0]  # doc 2, pair 5
    assert b["labels"][:, 0].sum() == 6


def test_collator_accepts_documents_without_pairs():
    b = DocRECollator(num_class=3)([feature(4, []), feature(2, [[(0, 1)]])])
    assert b["hts"].shape == (0, 2) and b["labels"].shape == (0, 3)
    assert b["mention_pos"].tolist() == [0] and b["entity_doc"].tolist() == [1]


def test_label_counts_add_up_the_collated_labels_chunk_by_chunk():
    feats = [feature(5, [[(1, 2)], [(2, 3)]], labels=[(0, 2), (0, 3)]), feature(3, [[(0, 1)]]),
             feature(4, [[(0, 1)], [(1, 2)], [(2, 3)]], labels=[(5, 1)])]
    counts, n = label_counts(feats, DocRECollator(4), chunk=2)
    labels = DocRECollator(4)(feats)["labels"]  # [8, 4]
    assert n == 8 and counts.dtype == torch.float64 and counts.tolist() == labels.sum(0).tolist()


def test_padding_collator_pads_and_builds_multi_hot_labels():
    batch = PaddingCollator(4, pad_token_id=0)([{"input_ids": [5, 6, 7], "labels": np.array([0])},
                                                {"input_ids": [5], "labels": np.array([1, 3])}])
    assert list(batch) == ["input_ids", "attention_mask", "labels"]
    assert batch["input_ids"].tolist() == [[5, 6, 7], [5, 0, 0]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0]]
    assert batch["labels"].tolist() == [[1, 0, 0, 0], [0, 1, 0, 1]]
    assert (batch["input_ids"].dtype, batch["attention_mask"].dtype, batch["labels"].dtype) == \
        (torch.long, torch.long, torch.float32)


def test_padding_collator_none_column_and_segments():
    feats = [{"input_ids": np.array([1, 2, 3, 4]), "labels": [2], "n_first": 2},
             {"input_ids": np.array([1, 2]), "labels": np.zeros(0, dtype=np.int64), "n_first": 1}]
    batch = PaddingCollator(3, pad_token_id=7, none_column=True, segments=True)(feats)
    assert list(batch) == ["input_ids", "attention_mask", "token_type_ids", "labels"]
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4], [1, 2, 7, 7]]
    assert batch["token_type_ids"].tolist() == [[0, 0, 1, 1], [0, 1, 0, 0]]  # 0 on padding
    assert batch["labels"].tolist() == [[0, 0, 1], [1, 0, 0]]  # no positive: the none column
