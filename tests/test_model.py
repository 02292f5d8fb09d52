"""model.py: the vectorized ATLOP head against a per-pair reference, attention rows, windows, edge cases."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import AutoModel, AutoTokenizer

import bilinear as bilinear_module
import encoder_kernels
from bilinear import GroupBilinearFunction, _block_features, group_bilinear
from collate import DocRECollator, label_counts
from encoder_kernels import (MaskDropout, checkpointed_sdpa, configure_encoder, keep_mask, load_encoder,
                             use_mask_dropout)
from losses import available_losses, build_loss, positive_rates
from model import ClsClassifier, DocREModel, plan_windows
from settings import DocRESettings

NUM_CLASS = 5
TEXT = "the city of Paris is the capital of France and Alice was born in London England"


def make_feature(tokenizer, n_entities: int, n_tokens: int, seed: int, max_mentions: int = 3) -> dict:
    """A feature in prepro's format: special tokens around a body, random mention starts, all pairs."""
    rng = np.random.default_rng(seed)
    body = tokenizer(TEXT, add_special_tokens=False)["input_ids"]
    body = (body * (n_tokens // len(body) + 1))[: n_tokens - 2]
    ids = [tokenizer.cls_token_id] + body + [tokenizer.sep_token_id]
    entity_pos = []
    for _ in range(n_entities):
        starts = rng.choice(np.arange(1, n_tokens - 2), size=rng.integers(1, max_mentions + 1), replace=False)
        entity_pos.append([(int(s), int(s) + 1) for s in sorted(starts)])
    hts = np.array([(h, t) for h in range(n_entities) for t in range(n_entities) if h != t],
                   dtype=np.int64).reshape(-1, 2)
    n_pos = min(len(hts), 3)
    labels = np.stack([rng.choice(len(hts), n_pos, replace=False), rng.integers(1, NUM_CLASS, n_pos)], 1) \
        if n_pos else np.zeros((0, 2), dtype=np.int64)
    return {"title": f"doc{seed}", "input_ids": ids, "entity_pos": entity_pos,
            "mention_sent_ids": [[0] * len(m) for m in entity_pos], "hts": hts, "labels": labels}


def batch_of(features, tokenizer) -> dict:
    batch = DocRECollator(NUM_CLASS, tokenizer.pad_token_id)(features)
    batch.pop("labels")
    return batch


def tiny_model(path: str, seed: int = 0, attn: str | None = None, **kwargs) -> DocREModel:
    torch.manual_seed(seed)
    encoder = load_encoder(path) if attn is None else AutoModel.from_pretrained(path, attn_implementation=attn)
    kwargs.setdefault("tokenizer", AutoTokenizer.from_pretrained(path))
    return DocREModel(encoder, NUM_CLASS, emb_size=32, block_size=8, **kwargs).eval()


@pytest.fixture(scope="module")
def bert_tok(tiny_bert_dir):
    return AutoTokenizer.from_pretrained(tiny_bert_dir)


def mixed_features(tokenizer) -> list:
    """Documents with 0, 2 and 15 entities, and one whose entity 1 has no kept mention."""
    feats = [make_feature(tokenizer, 0, 30, 0), make_feature(tokenizer, 2, 50, 1),
             make_feature(tokenizer, 15, 120, 2), make_feature(tokenizer, 4, 70, 3)]
    feats[3]["entity_pos"][1] = []
    return feats


# ----------------------------------------------------------------------------- reference
def reference_block_features(z_h: torch.Tensor, z_t: torch.Tensor, block_size: int, max_sym: bool) -> torch.Tensor:
    """One pair's bilinear input: each block's outer product (max-symmetrized with `max_sym`), flattened."""
    blocks = []
    for g in range(0, len(z_h), block_size):
        outer = torch.outer(z_h[g:g + block_size], z_t[g:g + block_size])
        blocks.append((torch.maximum(outer, outer.t()) if max_sym else outer).flatten())
    return torch.cat(blocks)


def reference_logits(model: DocREModel, eager_encoder, features) -> torch.Tensor:
    """ATLOP's formulas, one document, entity and pair at a time, from an eager encoder's attentions."""
    out = []
    for f in features:
        ids = torch.tensor(f["input_ids"])[None]
        enc = eager_encoder(input_ids=ids, attention_mask=torch.ones_like(ids), output_attentions=True)
        hidden, att = enc.last_hidden_state[0], enc.attentions[-1][0]  # [L, H], [heads, L, L]
        embs, atts = [], []
        for mentions in f["entity_pos"]:
            if mentions:
                embs.append(torch.logsumexp(torch.stack([hidden[s] for s, _ in mentions]), dim=0))
                atts.append(torch.stack([att[:, s] for s, _ in mentions]).mean(0))
            else:
                embs.append(torch.zeros(hidden.shape[1]))
                atts.append(torch.zeros_like(att[:, 0]))
        bs = model.block_size
        for h, t in f["hts"]:
            q = (atts[h] * atts[t]).mean(0)
            q = q / (q.sum() + 1e-5)
            c = q @ hidden
            z_h = torch.tanh(model.head_extractor(torch.cat([embs[h], c])))
            z_t = torch.tanh(model.tail_extractor(torch.cat([embs[t], c])))
            out.append(model.bilinear(reference_block_features(z_h, z_t, bs, model.bilinear_type == "maxsym")))
    return torch.stack(out) if out else torch.zeros(0, NUM_CLASS)


@pytest.mark.parametrize("unpad,bilinear", [(False, "atlop"), (True, "atlop"), (False, "maxsym")])
@torch.no_grad()
def test_vectorized_head_matches_per_pair_reference(tiny_bert_dir, bert_tok, unpad, bilinear):
    model = tiny_model(tiny_bert_dir, unpad=unpad, bilinear=bilinear)
    eager = AutoModel.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    feats = mixed_features(bert_tok)
    logits = model(**batch_of(feats, bert_tok))
    ref = reference_logits(model, eager, feats)
    assert logits.shape == (2 + 210 + 12, NUM_CLASS)
    torch.testing.assert_close(logits, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("unpad", [False, True])
@torch.no_grad()
def test_attention_rows_match_eager_full_attention(tiny_encoder_dir, unpad):
    """Our rows (SDPA + recomputed rows, or DeBERTa's last-layer weights) equal all-layer eager attentions,
    whether the batch is encoded padded or document by document."""
    tok = AutoTokenizer.from_pretrained(tiny_encoder_dir)
    model = tiny_model(tiny_encoder_dir, unpad=unpad)
    expected_mode = "eager" if model.encoder.config.model_type.startswith("deberta") else "recompute"
    assert model.attention_rows == expected_mode
    batch = batch_of(mixed_features(tok), tok)
    logits = model(**batch)

    eager = AutoModel.from_pretrained(tiny_encoder_dir, attn_implementation="eager").eval()
    enc = eager(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_attentions=True)
    rows = enc.attentions[-1][batch["mention_doc"], :, batch["mention_pos"]]  # [M, heads, L]
    _, ours = model.encode(batch["input_ids"], batch["attention_mask"], batch["mention_pos"], batch["mention_doc"])
    torch.testing.assert_close(ours, rows, atol=1e-5, rtol=1e-4)
    ref = model.score(enc.last_hidden_state, rows, *(batch[k] for k in
                      ("mention_pos", "mention_doc", "mention_entity", "entity_doc", "hts", "pair_doc")))
    torch.testing.assert_close(logits, ref, atol=1e-4, rtol=1e-4)


# ----------------------------------------------------------------------------- windows
@pytest.mark.parametrize("length", [5, 511, 512, 513, 900, 990, 1000, 1024, 1500, 2048, 5000])
@pytest.mark.parametrize("overlap", [0, 16, 64])
def test_plan_windows_cover_with_overlap(length, overlap):
    window = 512
    spans = plan_windows(length, window, 1, 1, overlap)
    assert spans[0][0] == 0 and spans[-1][1] == length
    if length <= window:
        assert spans == [(0, length)]
        return
    for i, (a, b) in enumerate(spans):
        added = (i > 0) + (i < len(spans) - 1)  # start / end tokens prepended / appended
        assert 0 < b - a and b - a + added <= window
    for (a0, b0), (a1, b1) in zip(spans, spans[1:]):
        assert a0 < a1 and b0 - a1 >= overlap
    fewer = [(0, 511), (length - 511, length)] if len(spans) == 3 else None  # ATLOP's two windows, when they do
    assert fewer is None or fewer[0][1] - fewer[1][0] < overlap


def test_plan_windows_two_like_atlop():
    assert plan_windows(1000, 512, 1, 1, 16) == [(0, 511), (489, 1000)]

@pytest.mark.parametrize("unpad", [False, True])
@torch.no_grad()
def test_window_path_with_one_window_equals_direct_path(tiny_roberta_dir, unpad):
    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    model = tiny_model(tiny_roberta_dir, unpad=unpad)
    batch = batch_of(mixed_features(tok), tok)
    args = [batch[k] for k in ("input_ids", "attention_mask", "mention_pos", "mention_doc")]
    hidden, att = model.encode(*args)
    windowed = model._encode_windows(*args[:2], window=batch["input_ids"].shape[1])
    w_hidden, w_att = windowed.hidden, model.mention_attention(windowed, *args[2:])
    mask = batch["attention_mask"].bool()
    torch.testing.assert_close(w_hidden[mask], hidden[mask], atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(w_att, att, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("unpad", [False, True])
@torch.no_grad()
def test_long_document_windows_merge(tiny_bert_dir, bert_tok, unpad):
    model = tiny_model(tiny_bert_dir, max_seq_length=2048, unpad=unpad)
    feat = make_feature(bert_tok, 6, 1500, seed=7)
    feat["entity_pos"][0] = [(1300, 1301), (1450, 1451)]  # an entity entirely past 512
    short = make_feature(bert_tok, 3, 100, seed=8)
    batch = batch_of([feat, short], bert_tok)
    hidden, att = model.encode(batch["input_ids"], batch["attention_mask"], batch["mention_pos"],
                               batch["mention_doc"])
    m = len(batch["mention_pos"])
    assert hidden.shape == (2, 1500, 32) and att.shape == (m, 4, 1500)
    torch.testing.assert_close(att.sum(-1), torch.ones(m, 4))
    assert att[:, :, 512:][batch["mention_pos"] >= 512].sum(-1).min() > 0.1

    # each position equals the mean of the encoder outputs of the windows covering it, encoded by hand
    ids, enc = batch["input_ids"][0], model.encoder
    spans = plan_windows(1500, 512, 1, 1, model.window_overlap)
    assert len(spans) == 4
    total, count = torch.zeros(1500, 32), torch.zeros(1500)
    for i, (a, b) in enumerate(spans):
        pre, post = ids[:1] if a > 0 else ids[:0], ids[-1:] if b < 1500 else ids[:0]
        out = enc(input_ids=torch.cat([pre, ids[a:b], post])[None]).last_hidden_state[0]
        total[a:b] += out[len(pre): len(pre) + b - a]
        count[a:b] += 1
    assert count.min() >= 1 and count.max() == 2
    torch.testing.assert_close(hidden[0], total / count[:, None], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(hidden[1, :100], enc(input_ids=batch["input_ids"][1:, :100]).last_hidden_state[0],
                               atol=1e-5, rtol=1e-5)

    logits = model(**batch)
    assert logits.shape == (30 + 6, NUM_CLASS) and torch.isfinite(logits).all()
    ent, _ = model.pool_entities(hidden, att, batch["mention_pos"], batch["mention_doc"],
                                 batch["mention_entity"], len(batch["entity_doc"]))
    assert ent[0].abs().sum() > 0


# ----------------------------------------------------------------------------- edge cases
def test_truncated_and_missing_mentions_give_zero_embeddings(tiny_bert_dir, bert_tok):
    model = tiny_model(tiny_bert_dir).train()
    feat = make_feature(bert_tok, 4, 60, seed=4)
    feat["entity_pos"][1] = [(60, 61), (75, 76)]  # every mention past the (truncated) end
    feat["entity_pos"][2] = []
    batch = batch_of([feat, make_feature(bert_tok, 3, 90, seed=5)], bert_tok)
    logits = model(**batch)
    assert torch.isfinite(logits).all()
    logits.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)

    kept = batch["mention_pos"] < batch["attention_mask"].sum(1)[batch["mention_doc"]]
    pos, doc, ent_idx = batch["mention_pos"][kept], batch["mention_doc"][kept], batch["mention_entity"][kept]
    hidden, att = model.encode(batch["input_ids"], batch["attention_mask"], pos, doc)
    ent, ent_att = model.pool_entities(hidden, att, pos, doc, ent_idx, len(batch["entity_doc"]))
    assert torch.equal(ent[1], torch.zeros(32)) and torch.equal(ent[2], torch.zeros(32))
    assert ent_att[1:3].abs().sum() == 0 and ent[0].abs().sum() > 0


def test_no_pairs_gives_empty_logits(tiny_bert_dir, bert_tok):
    model = tiny_model(tiny_bert_dir).train()
    batch = batch_of([make_feature(bert_tok, 0, 20, 0), make_feature(bert_tok, 1, 30, 1)], bert_tok)
    logits = model(**batch)
    assert logits.shape == (0, NUM_CLASS)
    logits.sum().backward()


# bf16 keeps 8 significant bits (relative rounding 2^-8 = 0.4% per operation); through the tiny encoder, the
# pooling and the bilinear the logits moved by at most 0.9% of their largest magnitude (measured: 0.0025 of 0.29
# with ATLOP's head, 0.0020 of 0.25 with maxsym). A bias or block lost on the bf16 path moves them by ~20%.
BF16_TOLERANCE = 0.02  # of max |fp32 logit|


@pytest.mark.parametrize("bilinear", ["atlop", "maxsym"])
def test_bf16_autocast_logits_match_fp32(tiny_bert_dir, bert_tok, bilinear):
    model = tiny_model(tiny_bert_dir, bilinear=bilinear)
    batch = batch_of(mixed_features(bert_tok), bert_tok)
    with torch.no_grad():
        ref = model(**batch)  # [224, K+1] in fp32
        with torch.autocast("cpu", dtype=torch.bfloat16):
            low = model(**batch)
    assert low.dtype == torch.float32 and low.shape == ref.shape == (224, NUM_CLASS)
    torch.testing.assert_close(low, ref, rtol=0, atol=BF16_TOLERANCE * ref.abs().max().item())


@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_fp32_and_bf16_autocast_are_finite(tiny_bert_dir, bert_tok, dtype):
    model = tiny_model(tiny_bert_dir).train()
    batch = batch_of(mixed_features(bert_tok), bert_tok)
    with torch.autocast("cpu", dtype=dtype or torch.float32, enabled=dtype is not None):
        logits = model(**batch)
    assert logits.shape == (224, NUM_CLASS) and torch.isfinite(logits).all()
    logits.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert model.bilinear.weight.grad.abs().sum() > 0


def test_bf16_autocast_max_sym_and_evidence(tiny_bert_dir, bert_tok):
    model = tiny_model(tiny_bert_dir, bilinear="maxsym").train()
    batch = batch_of([with_sentences(f, 3, i) for i, f in enumerate(mixed_features(bert_tok))], bert_tok)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits, sent_attn = model(**batch, return_evidence=True)
    assert logits.dtype == sent_attn.dtype == torch.float32 and torch.isfinite(logits).all()
    (logits.pow(2).mean() + sent_attn.pow(2).sum()).backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)


def test_group_bilinear_gradients_match_outer_product():
    torch.manual_seed(0)
    x, y = torch.randn(7, 12, dtype=torch.double, requires_grad=True), torch.randn(7, 12, dtype=torch.double,
                                                                                   requires_grad=True)
    w = torch.randn(3, 12 * 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: GroupBilinearFunction.apply(a, b, c, 4), (x, y, w))
    linear = torch.nn.Linear(48, 3).double()
    outer = (x.view(7, 3, 4, 1) * y.view(7, 3, 1, 4)).reshape(7, 48)
    torch.testing.assert_close(group_bilinear(x, y, linear, 4), linear(outer))


def test_bf16_block_features_on_cpu_equal_elementwise_outer_products():
    """On CPU in bf16 the blocks' outer products come from a bmm: the same bits as the elementwise product."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 300, 64).to(torch.bfloat16).unbind(0)  # 300 pairs, one block of 64
    outer, sym = torch.empty(300, 64, 64, dtype=torch.bfloat16), torch.empty(300, 64, 64, dtype=torch.bfloat16)
    _block_features(x, y, outer, sym)
    ref = x[:, :, None] * y[:, None, :]  # [P, bs, bs], bf16 elementwise
    assert torch.equal(outer, ref) and torch.equal(sym, torch.maximum(ref, ref.transpose(1, 2)))


def _loop_group_bilinear(x: torch.Tensor, y: torch.Tensor, linear: torch.nn.Linear, block_size: int,
                         max_sym: bool) -> torch.Tensor:
    """The group bilinear one pair at a time from `reference_block_features`."""
    return torch.stack([linear(reference_block_features(a, b, block_size, max_sym)) for a, b in zip(x, y)])


def test_max_sym_group_bilinear_matches_per_pair_loop():
    """NCRL's head: logits and all gradients equal the per-pair, per-block loop of max(x outer y, its transpose)."""
    torch.manual_seed(0)
    x, y = torch.randn(2, 40, 64).tanh().unbind(0)  # 40 pairs, emb 64, blocks of 8
    x.requires_grad_(), y.requires_grad_()
    linear = torch.nn.Linear(64 * 8, 6)
    ours, ref = group_bilinear(x, y, linear, 8, max_sym=True), _loop_group_bilinear(x, y, linear, 8, True)
    assert (ours - ref).abs().max().item() < 1e-5
    grads = [torch.autograd.grad(out.pow(2).sum(), (x, y, linear.weight, linear.bias)) for out in (ours, ref)]
    for g_ours, g_ref in zip(*grads):
        torch.testing.assert_close(g_ours, g_ref, atol=1e-5, rtol=1e-5)
    # it is a different head: the same weights give other logits than ATLOP's (and ATLOP's still match its loop)
    atlop = group_bilinear(x, y, linear, 8)
    torch.testing.assert_close(atlop, _loop_group_bilinear(x, y, linear, 8, False), atol=1e-5, rtol=1e-5)
    assert (atlop - ours).abs().max().item() > 0.05


def test_max_sym_group_bilinear_gradcheck_and_ties():
    torch.manual_seed(1)
    x, y = (torch.randn(5, 12, dtype=torch.double, requires_grad=True) for _ in range(2))
    w = torch.randn(3, 12 * 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, c: GroupBilinearFunction.apply(a, b, c, 4, True), (x, y, w))
    # x = y makes every block's outer product symmetric, so every entry ties with its mirror; the gradient
    # follows torch.maximum (half to each side), as autograd through the per-pair loop does
    linear = torch.nn.Linear(48, 3, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(w)
    x2 = x.detach().clone().requires_grad_()
    (grad,) = torch.autograd.grad(GroupBilinearFunction.apply(x2, x2, w.detach(), 4, True).sum(), x2)
    (ref,) = torch.autograd.grad(_loop_group_bilinear(x2, x2, linear, 4, True).sum(), x2)
    torch.testing.assert_close(grad, ref)


@pytest.mark.parametrize("max_sym", [False, True])
def test_group_bilinear_in_chunks_of_pairs_changes_no_logit_bit(monkeypatch, max_sym):
    """Chunking the pairs (to keep the [rows, bs, bs] buffers in cache) gives the very same logits, a ragged last
    chunk included, and the same gradients up to fp32 rounding (some CPUs' BLAS picks another kernel for the
    smaller products of a chunk: one ulp apart on an AMD EPYC); gradcheck holds with the chunks."""

    torch.manual_seed(2)
    x0, y0 = torch.randn(2, 11, 16).tanh().unbind(0)
    w0, grad = torch.randn(5, 16 * 4), torch.randn(11, 5)
    results = []
    for chunk_bytes in (2 ** 40, 3 * 4 * 4 * 4):  # everything at once; 3 pairs per chunk (fp32, blocks of 4)
        monkeypatch.setattr(bilinear_module, "PAIR_CHUNK_BYTES", chunk_bytes)
        x, y, w = (t.clone().requires_grad_() for t in (x0, y0, w0))
        out = GroupBilinearFunction.apply(x, y, w, 4, max_sym)
        out.backward(grad)
        results.append((out.detach(), x.grad, y.grad, w.grad))
    assert bilinear_module.pair_chunk(11, 4, x0) == 3
    assert torch.equal(results[0][0], results[1][0])  # logits [P, K+1]
    for a, b in zip(results[0][1:], results[1][1:]):  # gradients of x, y and the weights
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
    xd, yd, wd = (t.double().requires_grad_() for t in (x0[:7], y0[:7], w0))  # 3 + 3 + 1 pairs
    monkeypatch.setattr(bilinear_module, "PAIR_CHUNK_BYTES", 3 * 4 * 4 * 8)
    assert torch.autograd.gradcheck(lambda a, b, c: GroupBilinearFunction.apply(a, b, c, 4, max_sym), (xd, yd, wd))


def test_gradient_checkpointing_gives_same_gradients(tiny_bert_dir, bert_tok):
    batch = batch_of(mixed_features(bert_tok), bert_tok)
    grads = []
    for ckpt in (False, True):
        model = tiny_model(tiny_bert_dir, gradient_checkpointing=ckpt).train()
        model(**batch).pow(2).mean().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.encoder.parameters() if p.grad is not None]))
    assert grads[0].abs().sum() > 0
    torch.testing.assert_close(grads[1], grads[0], atol=1e-6, rtol=1e-5)


def _saved_bytes_and_grads(model: DocREModel, batch: dict):
    """Bytes autograd keeps for backward in one forward pass, the logits and the encoder's gradients."""
    saved = []

    def pack(t: torch.Tensor):
        saved.append(t.numel() * t.element_size())
        return t
    torch.manual_seed(1)  # the same dropout masks for every model
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        logits = model(**batch)
    logits.pow(2).mean().backward()
    grads = torch.cat([p.grad.flatten() for p in model.encoder.parameters() if p.grad is not None])
    return sum(saved), logits.detach(), grads


def torch_keep_mask(shape, p, device):
    """The mask SDPA's math kernel and nn.Dropout draw (`bernoulli_` of the keep probability), for equality tests."""
    return torch.empty(shape, dtype=torch.bool, device=device).bernoulli_(1 - p), 1 / (1 - p)


def test_checkpointed_attention_keeps_less_and_gives_same_gradients(tiny_bert_dir, bert_tok, monkeypatch):
    monkeypatch.setattr(encoder_kernels, "keep_mask", torch_keep_mask)  # so both paths drop the same weights
    feats = [make_feature(bert_tok, 6, 200, 0), make_feature(bert_tok, 4, 150, 1)]
    batch = batch_of(feats, bert_tok)
    results = []
    for checkpoint_attention in (False, True):
        model = tiny_model(tiny_bert_dir, checkpoint_attention=checkpoint_attention, unpad=False).train()
        for m in model.encoder.modules():
            if isinstance(m, torch.nn.Dropout):
                m.p = 0.2  # attention dropout is what sends CPU training to the math kernel
        assert (model.encoder.config._attn_implementation == "sdpa_checkpointed_dropout") == checkpoint_attention
        results.append(_saved_bytes_and_grads(model, batch))
    (plain_bytes, plain_logits, plain_grads), (ckpt_bytes, ckpt_logits, ckpt_grads) = results
    with torch.no_grad():
        assert not torch.allclose(model.eval()(**batch), ckpt_logits)  # dropout was on
    torch.testing.assert_close(ckpt_logits, plain_logits, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ckpt_grads, plain_grads, atol=1e-6, rtol=1e-5)
    # each layer's [B, heads, T, T] probabilities and dropout mask are no longer kept
    n_layers, n_heads = model.encoder.config.num_hidden_layers, model.encoder.config.num_attention_heads
    per_layer = 2 * n_heads * 200 * 200 * 4
    assert plain_bytes - ckpt_bytes > n_layers * per_layer


@pytest.mark.parametrize("mask", ["none", "bool", "additive"])
def test_dropout_attention_equals_sdpa_with_the_same_dropped_weights(mask, monkeypatch):
    """CPU training's attention: the outputs and q, k, v gradients of SDPA's math kernel, same seed, same mask."""
    import torch.nn.functional as F

    monkeypatch.setattr(encoder_kernels, "keep_mask", torch_keep_mask)  # SDPA's own draw, so the same weights drop

    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 40, 8, generator=gen, dtype=torch.float64) for _ in range(3))
    attend = torch.rand(2, 1, 40, 40, generator=gen) > 0.3
    attend[..., 0] = True  # every query keeps a key
    masks = {"none": None, "bool": attend,
             "additive": torch.zeros(2, 1, 40, 40, dtype=torch.float64).masked_fill(~attend, -1e9)}
    module = torch.nn.Module()
    module.is_causal = False
    results = []
    for run in ("sdpa", "ours"):
        qq, kk, vv = (t.clone().requires_grad_() for t in (q, k, v))
        torch.manual_seed(5)
        if run == "sdpa":
            out = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=masks[mask], dropout_p=0.3).transpose(1, 2)
        else:
            out, _ = checkpointed_sdpa(module, qq, kk, vv, masks[mask], dropout=0.3, scaling=None)
        (out * torch.linspace(-1, 1, 8, dtype=torch.float64)).sum().backward()
        results.append([out.detach(), qq.grad, kk.grad, vv.grad])
    for a, b in zip(*results):
        torch.testing.assert_close(a, b, atol=1e-12, rtol=1e-10)
    torch.manual_seed(6)  # another seed drops other weights: the equality above is not of dropout-free outputs
    other, _ = checkpointed_sdpa(module, *(t.clone().requires_grad_() for t in (q, k, v)), masks[mask], dropout=0.3)
    assert not torch.allclose(other, results[1][0])


def test_keep_mask_keeps_one_minus_p_in_every_lane_and_follows_the_seed():
    n = 4_000_001  # not a multiple of the four 16-bit lanes of a draw
    for p in (0.1, 0.5):
        torch.manual_seed(3)
        keep, scale = keep_mask((n,), p, "cpu")
        q = 1 - round(p * 65536) / 65536  # P(keep)
        assert keep.dtype == torch.bool and keep.shape == (n,) and scale == pytest.approx(1 / q, rel=1e-12)
        assert abs(q - (1 - p)) < 1e-5
        for lane in range(4):  # each 16-bit lane of the 64-bit draws is uniform (a sign bit stuck at 0 is not)
            rate = keep[lane::4].double().mean().item()
            assert abs(rate - q) < 5 * (q * (1 - q) / (n / 4)) ** 0.5, (p, lane, rate)
    torch.manual_seed(3)
    assert torch.equal(keep_mask((n,), 0.5, "cpu")[0], keep)
    torch.manual_seed(4)
    assert not torch.equal(keep_mask((n,), 0.5, "cpu")[0], keep)
    assert keep_mask((2, 0, 3), 0.1, "cpu")[0].shape == (2, 0, 3)
    assert keep_mask((1000,), 1.0, "cpu")[1] == 65536  # p rounded below 1: no division by zero


def test_mask_dropout_scales_the_kept_entries_and_their_gradients():
    x = torch.randn(64, 300, dtype=torch.float64).requires_grad_()
    drop = MaskDropout(0.3).train()
    torch.manual_seed(0)
    y = drop(x)
    keep = y != 0
    scale = 65536 / (65536 - round(0.3 * 65536))
    torch.testing.assert_close(y[keep], x[keep] * scale, atol=0, rtol=1e-15)
    assert 0.65 < keep.double().mean().item() < 0.75
    y.sum().backward()
    torch.testing.assert_close(x.grad, keep.double() * scale, atol=0, rtol=1e-15)
    torch.manual_seed(0)
    inplace = MaskDropout(0.3, inplace=True).train()(x.detach().clone())
    assert torch.equal(inplace, y.detach())
    assert torch.equal(drop.eval()(x), x) and torch.equal(MaskDropout(0.0).train()(x), x)
    assert torch.equal(MaskDropout(1.0).train()(x), torch.zeros_like(x))  # nn.Dropout's own p = 1


def test_mask_dropout_swaps_the_encoders_dropout_and_back(tiny_bert_dir, bert_tok):
    encoder = load_encoder(tiny_bert_dir)
    n_dropout = sum(type(m) is torch.nn.Dropout for m in encoder.modules())
    keys = set(encoder.state_dict())
    assert n_dropout > 0 and use_mask_dropout(encoder)
    assert sum(type(m) is MaskDropout for m in encoder.modules()) == n_dropout
    assert not any(type(m) is torch.nn.Dropout for m in encoder.modules()) and set(encoder.state_dict()) == keys
    assert use_mask_dropout(encoder, False) and not use_mask_dropout(encoder, False)
    assert sum(type(m) is torch.nn.Dropout for m in encoder.modules()) == n_dropout
    on, off = tiny_model(tiny_bert_dir), tiny_model(tiny_bert_dir, mask_dropout=False)
    assert any(type(m) is MaskDropout for m in on.encoder.modules())
    assert not any(type(m) is MaskDropout for m in off.encoder.modules())
    batch = batch_of(mixed_features(bert_tok), bert_tok)
    with torch.no_grad():  # evaluation drops nothing: the same logits either way
        torch.testing.assert_close(on.eval()(**batch), off.eval()(**batch), atol=1e-6, rtol=1e-5)


def test_special_tokens_and_attention_from_the_encoder(tiny_roberta_dir, tiny_deberta_dir):
    tok = AutoTokenizer.from_pretrained(tiny_roberta_dir)
    settings = DocRESettings({f"P{i}": i for i in range(NUM_CLASS)}, emb_size=32, block_size=8)
    model = DocREModel.from_settings(settings, load_encoder(tiny_roberta_dir), tok)
    assert (model.start_token_ids, model.end_token_ids) == ([tok.cls_token_id], [tok.sep_token_id])
    assert model.window_size == 512
    assert model.encoder.config._attn_implementation == "sdpa_checkpointed_dropout" and model.attention_rows == "recompute"
    deberta = DocREModel.from_settings(settings, load_encoder(tiny_deberta_dir))
    assert deberta.attention_rows == "eager" and deberta.start_token_ids is None
    with pytest.raises(ValueError, match="multiple of block_size"):
        DocREModel(model.encoder, NUM_CLASS, emb_size=30, block_size=8)


def test_from_settings_takes_the_head_from_settings_and_only_runtime_knobs_beside_them(tiny_bert_dir, bert_tok):
    settings = DocRESettings({f"P{i}": i for i in range(NUM_CLASS)}, max_seq_length=300, emb_size=32, block_size=8,
                             bilinear="maxsym")
    torch.manual_seed(0)
    model = DocREModel.from_settings(settings, load_encoder(tiny_bert_dir), bert_tok, window_size=64, unpad=False)
    assert (model.num_class, model.emb_size, model.block_size) == (NUM_CLASS, 32, 8)
    assert (model.max_seq_length, model.bilinear_type, model.window_size, model.unpad) == (300, "maxsym", 64, False)
    torch.manual_seed(0)
    direct = DocREModel(load_encoder(tiny_bert_dir), NUM_CLASS, emb_size=32, block_size=8, tokenizer=bert_tok,
                        max_seq_length=300, bilinear="maxsym", window_size=64, unpad=False)
    assert all(torch.equal(a, b) for a, b in zip(model.state_dict().values(), direct.state_dict().values()))
    with pytest.raises(ValueError, match="DocRESettings fields"):
        DocREModel.from_settings(settings, model.encoder, emb_size=64)


def test_configure_encoder_chooses_the_kernels(tiny_bert_dir):
    encoder = load_encoder(tiny_bert_dir)
    configure_encoder(encoder)
    assert encoder.config._attn_implementation == "sdpa_checkpointed_dropout"
    assert any(type(m) is MaskDropout for m in encoder.modules())
    configure_encoder(encoder, checkpoint_attention=False, mask_dropout=False)
    assert encoder.config._attn_implementation == "sdpa"
    assert not any(type(m) is MaskDropout for m in encoder.modules())
    configure_encoder(encoder, attention_weights=True)  # the caller reads weights: eager, whatever else it asks
    assert encoder.config._attn_implementation == "eager"
    configure_encoder(encoder)  # an eager encoder stays eager
    assert encoder.config._attn_implementation == "eager"


def test_cls_classifier_keeps_the_task_heads_keys_and_configures_its_encoder(tiny_bert_dir):
    encoder = load_encoder(tiny_bert_dir)
    model = ClsClassifier(encoder, 7)
    assert set(model.state_dict()) == {f"encoder.{k}" for k in encoder.state_dict()} | {"classifier.weight",
                                                                                         "classifier.bias"}
    assert encoder.config._attn_implementation == "sdpa_checkpointed_dropout"
    assert type(model.dropout) is torch.nn.Dropout and model.dropout.p == encoder.config.hidden_dropout_prob
    assert any(type(m) is MaskDropout for m in model.encoder.modules())
    assert ClsClassifier(load_encoder(tiny_bert_dir), 7, dropout=0.3).dropout.p == 0.3
    ids = torch.tensor([[2, 5, 6, 3], [2, 7, 3, 0]])
    mask = (ids > 0).long()
    model.eval()
    with torch.no_grad():
        logits = model(ids, mask)
        hidden = encoder(input_ids=ids, attention_mask=mask).last_hidden_state
    assert logits.shape == (2, 7)
    torch.testing.assert_close(logits, model.classifier(hidden[:, 0]), atol=0, rtol=0)
    model.init_classifier_bias(0.1)
    assert model.classifier.bias[0] == 0 and model.classifier.bias[1:].allclose(torch.logit(torch.tensor(0.1)))


# ----------------------------------------------------------------------------- none-class prior start
def test_init_classifier_bias_starts_at_the_none_class_prior(tiny_bert_dir, bert_tok):
    feats = mixed_features(bert_tok)
    labels = DocRECollator(NUM_CLASS)(feats)["labels"]
    counts, n = label_counts(feats, DocRECollator(NUM_CLASS), chunk=3)  # chunks of documents add up to the whole batch
    assert n == len(labels) == 224 and torch.equal(counts, labels.sum(0).double())
    rates = positive_rates(counts, n)  # [K+1]
    assert rates[1:].max() < 0.05

    model = tiny_model(tiny_bert_dir)
    model.init_classifier_bias(rates)
    batch = batch_of(feats, bert_tok)
    with torch.no_grad():
        logits = model(**batch)  # random head weights: the prior plus small noise
    for name in available_losses():
        assert build_loss(name).get_label(logits)[:, 0].all(), name  # every pair "no relation" at step 0
    # zero bilinear features: the logits are the prior itself, for both readings of the logits
    for extractor in (model.head_extractor, model.tail_extractor):
        torch.nn.init.zeros_(extractor.weight), torch.nn.init.zeros_(extractor.bias)
    with torch.no_grad():
        logits = model(**batch).double()
    expected = rates[1:].expand(len(logits), -1)
    torch.testing.assert_close(torch.sigmoid(logits[:, 1:] - logits[:, :1]), expected, rtol=1e-6, atol=1e-7)  # NCRL
    torch.testing.assert_close(torch.sigmoid(logits[:, 1:]), expected, rtol=1e-6, atol=1e-7)  # BCE
    atl_two_way = torch.softmax(torch.stack([logits[:, 1:], logits[:, :1].expand(-1, NUM_CLASS - 1)]), 0)[0]
    torch.testing.assert_close(atl_two_way, expected, rtol=1e-6, atol=1e-7)  # ATL / AFL: class i against class 0
    assert all(build_loss(name).get_label(logits)[:, 0].all() for name in available_losses())

    model.init_classifier_bias(0.01)  # one prior for every relation
    assert model.bilinear.bias[0] == 0 and torch.allclose(model.bilinear.bias[1:], torch.logit(torch.tensor(0.01)))
    with pytest.raises(ValueError, match="rates must be"):
        model.init_classifier_bias(torch.zeros(NUM_CLASS))
    with pytest.raises(ValueError, match="rates must be"):
        model.init_classifier_bias(rates[:3])


# ----------------------------------------------------------------------------- evidence (sentence attention)
def with_sentences(feature: dict, n_sents: int, seed: int) -> dict:
    """The feature with `n_sents` contiguous sentence spans between the special tokens and random evidence."""
    rng = np.random.default_rng(seed)
    n = len(feature["input_ids"])
    cuts = np.linspace(1, n - 1, n_sents + 1).astype(int)
    evidence = [sorted(rng.choice(n_sents, rng.integers(0, 3), replace=False).tolist()) for _ in feature["labels"]]
    return {**feature, "sent_pos": np.stack([cuts[:-1], cuts[1:]], 1).astype(np.int32), "evidence": evidence}


def reference_sentence_attention(eager_encoder, features) -> torch.Tensor:
    """Per pair: ATLOP's q from an eager encoder, summed over each sentence's tokens, renormalised [P, S_max]."""
    s_max = max(len(f["sent_pos"]) for f in features)
    out = []
    for f in features:
        ids = torch.tensor(f["input_ids"])[None]
        att = eager_encoder(input_ids=ids, output_attentions=True).attentions[-1][0]  # [heads, L, L]
        atts = [torch.stack([att[:, s] for s, _ in m]).mean(0) if m else torch.zeros_like(att[:, 0])
                for m in f["entity_pos"]]
        for h, t in f["hts"]:
            q = (atts[h] * atts[t]).mean(0)
            q = q / (q.sum() + 1e-5)
            per = torch.stack([q[a:b].sum() for a, b in f["sent_pos"]])
            per = per / per.sum() if per.sum() > 0 else per
            out.append(torch.cat([per, per.new_zeros(s_max - len(per))]))
    return torch.stack(out)


@pytest.mark.parametrize("unpad", [False, True])
@torch.no_grad()
def test_sentence_attention_matches_per_pair_reference(tiny_bert_dir, bert_tok, unpad):
    model = tiny_model(tiny_bert_dir, unpad=unpad)
    feats = [with_sentences(f, n, i) for i, (f, n) in enumerate(zip(mixed_features(bert_tok), (1, 2, 6, 3)))]
    batch = batch_of(feats, bert_tok)
    assert batch["sent_pos"].shape == (4, 6, 2) and (batch["sent_pos"][1, 2:] == -1).all()
    logits, sent_attn = model(**batch, return_evidence=True)
    assert torch.equal(logits, model(**batch))
    eager = AutoModel.from_pretrained(tiny_bert_dir, attn_implementation="eager").eval()
    ref = reference_sentence_attention(eager, feats)
    assert sent_attn.shape == ref.shape == (224, 6) and sent_attn.dtype == torch.float32
    torch.testing.assert_close(sent_attn, ref, atol=1e-6, rtol=1e-5)
    # rows sum to 1 over the document's sentences, except pairs with the mention-less entity 1 of document 3
    n_sents = torch.tensor([len(f["sent_pos"]) for f in feats])[batch["pair_doc"]]  # [P]
    real = torch.arange(6)[None, :] < n_sents[:, None]
    assert torch.equal(sent_attn[~real], torch.zeros(int((~real).sum())))  # padding sentences: exactly 0
    empty = (batch["hts"] == 0 + 2 + 15 + 1).any(1)  # document 3's entity 1, after 0 + 2 + 15 entities
    torch.testing.assert_close(sent_attn[~empty].sum(1), torch.ones(int((~empty).sum())))
    assert empty.sum() == 6 and sent_attn[empty].abs().sum() == 0


def test_default_forward_ignores_sentences_and_evidence_trains(tiny_bert_dir, bert_tok):
    """Without return_evidence the logits are the same with or without sentence fields; with it, the evidence
    loss back-propagates into the encoder with finite gradients (an entity without mentions included)."""
    from losses import evidence_loss, evidence_target

    model = tiny_model(tiny_bert_dir).train()
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    plain = mixed_features(bert_tok)
    feats = [with_sentences(f, 3, i) for i, f in enumerate(plain)]
    batch = DocRECollator(NUM_CLASS, bert_tok.pad_token_id)(feats)
    assert set(batch) - set(batch_of(plain, bert_tok)) == {"sent_pos", "evidence_index", "labels"}
    assert torch.equal(model(**batch), model(**batch_of(plain, bert_tok)))
    logits, sent_attn = model(**batch, return_evidence=True)
    target = evidence_target(batch["evidence_index"], len(logits), sent_attn.shape[1])
    n_cites = sum(len(e) for f in feats for e in f["evidence"])
    assert target.sum() == n_cites == len(batch["evidence_index"]) > 0
    loss = evidence_loss(sent_attn, target, batch["labels"])
    assert loss.item() > 0
    loss.backward()
    grads = [p.grad for p in model.encoder.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads) and sum(g.abs().sum() for g in grads) > 0
    with pytest.raises(ValueError, match="sent_pos"):
        model(**batch_of(plain, bert_tok), return_evidence=True)


@torch.no_grad()
def test_sentence_attention_over_long_document_windows(tiny_bert_dir, bert_tok):
    """Windows merge the attention rows over the whole document, so sentences past 512 tokens get their share."""
    model = tiny_model(tiny_bert_dir, max_seq_length=2048)
    feat = with_sentences(make_feature(bert_tok, 5, 1500, seed=7), 10, 0)
    feat["entity_pos"][0] = [(1300, 1301)]
    feat["entity_pos"][1] = [(1450, 1451)]
    batch = batch_of([feat], bert_tok)
    _, sent_attn = model(**batch, return_evidence=True)
    # a row is 0 where head and tail attend in disjoint windows only (their product q is 0 everywhere)
    hidden, att = model.encode(batch["input_ids"], batch["attention_mask"], batch["mention_pos"], batch["mention_doc"])
    ent_att = model.pool_entities(hidden, att, batch["mention_pos"], batch["mention_doc"], batch["mention_entity"],
                                  5)[1].mean(1)  # [E, L]
    disjoint = ((ent_att[batch["hts"][:, 0]] * ent_att[batch["hts"][:, 1]]).sum(1) == 0)  # [P]
    assert 0 < disjoint.sum() < 20
    torch.testing.assert_close(sent_attn.sum(1), (~disjoint).float())
    assert sent_attn[0, 5:].sum() > 0.5  # pair (0, 1): both mentions lie in the last sentences


def test_collator_sentence_fields(bert_tok):
    feats = [with_sentences(make_feature(bert_tok, 3, 40, 0), 2, 0),
             with_sentences(make_feature(bert_tok, 2, 30, 1), 4, 1)]
    feats[0]["evidence"] = [[1], [0, 1], []]
    feats[1]["evidence"] = [[3], [2]]
    batch = DocRECollator(NUM_CLASS)(feats)
    assert batch["sent_pos"].tolist()[0] == [[1, 20], [20, 39], [-1, -1], [-1, -1]]
    rows0, rows1 = feats[0]["labels"][:, 0].tolist(), (feats[1]["labels"][:, 0] + 6).tolist()
    assert batch["evidence_index"].tolist() == [[rows0[0], 1], [rows0[1], 0], [rows0[1], 1],
                                                [rows1[0], 3], [rows1[1], 2]]
    assert "sent_pos" not in DocRECollator(NUM_CLASS)([make_feature(bert_tok, 2, 30, 1)])
    mixed = [feats[0], make_feature(bert_tok, 2, 30, 1)]
    with pytest.raises(ValueError, match="document 1"):
        DocRECollator(NUM_CLASS)(mixed)
    feats[1]["evidence"] = [[3]]
    with pytest.raises(ValueError, match="1 evidence lists for 2 labels"):
        DocRECollator(NUM_CLASS)(feats)
