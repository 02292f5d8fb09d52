"""The ATLOP model: a pretrained encoder over (windows of) each document, log-sum-exp entity pooling,
localized context pooling from last-layer attention, and a group bilinear classifier. Returns logits (and, on
request, DREEAM's sentence attention); the loss lives in losses.py.
"""
from __future__ import annotations

import contextlib
import inspect
from typing import TYPE_CHECKING, Any, Dict, Iterator, List, NamedTuple, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint
from transformers import PreTrainedModel

from bilinear import group_bilinear, pair_linear
from encoder_kernels import configure_encoder, enable_activation_checkpointing

if TYPE_CHECKING:
    from settings import DocRESettings

# Families whose last-layer attention is plain softmax(q k^T / sqrt(d) + mask): their mention rows can be
# recomputed from the last layer's input, so the encoder itself may run with SDPA (no attention weights).
RECOMPUTE_FAMILIES = frozenset({"bert", "roberta", "xlm-roberta", "camembert", "electra"})
# (query, key) projection names of self-attention modules across Hugging Face encoders
QK_NAMES = (("query", "key"), ("query_proj", "key_proj"), ("q_lin", "k_lin"), ("q_proj", "k_proj"))
ATTENTION_ROWS = ("auto", "recompute", "eager")
BILINEARS = ("atlop", "maxsym")  # group bilinear of ATLOP; the NCRL authors' max-symmetric one


class Encoded(NamedTuple):
    """One encoder pass over a batch (`DocREModel.encode_states`): what attention rows are computed from later."""
    hidden: torch.Tensor  # [B, L, H] token states
    store: Dict[str, torch.Tensor]  # the last attention module's input [N, W, H] or its weights [N, heads, W, W]
    key_mask: torch.Tensor  # [N, W] the keys of each encoder sequence (a document, or a window of one)
    windows: Optional[Dict[str, torch.Tensor]]  # `_windows` of a batch longer than the window; None: one pass each


# ----------------------------------------------------------------------------- encoder introspection
def find_last_attention(encoder: nn.Module) -> Tuple[nn.Module, nn.Linear, nn.Linear]:
    """The encoder's last self-attention module and its query and key projections."""
    found = None
    for module in encoder.modules():
        for q_name, k_name in QK_NAMES:
            q, k = getattr(module, q_name, None), getattr(module, k_name, None)
            if isinstance(q, nn.Linear) and isinstance(k, nn.Linear):
                found = (module, q, k)
    if found is None:
        raise ValueError(f"{type(encoder).__name__}: no self-attention module with query/key projections "
                         f"named {QK_NAMES}")
    return found


def encoder_max_length(encoder: PreTrainedModel) -> int:
    """The longest input the encoder's position embeddings allow."""
    n = int(encoder.config.max_position_embeddings)
    padding_idx = getattr(getattr(encoder, "embeddings", None), "padding_idx", None)
    if padding_idx is not None:  # RoBERTa-style positions start at padding_idx + 1
        n -= padding_idx + 1
    return n


def plan_windows(length: int, window: int, n_start: int, n_end: int, min_overlap: int) -> List[Tuple[int, int]]:
    """[start, end) spans of a `length`-token document covered by windows of at most `window` tokens.

    The document begins with `n_start` and ends with `n_end` special tokens; every window but the first gets
    the start tokens prepended and every window but the last the end tokens appended, so spans are shorter
    than `window` accordingly. Neighbouring spans overlap by at least `min_overlap` tokens.
    """
    if length <= window:
        return [(0, length)]
    first, inner = window - n_end, window - n_start - n_end  # content of the first and of a middle window
    if inner - min_overlap <= 0:
        raise ValueError(f"window {window} too small for overlap {min_overlap} and {n_start + n_end} special tokens")
    last_start = length - (window - n_start)
    n = 2 if last_start <= first - min_overlap else -(-last_start // (inner - min_overlap)) + 1
    starts = [round(i * last_start / (n - 1)) for i in range(n)]
    return [(a, length if i == n - 1 else (first if i == 0 else a + inner)) for i, a in enumerate(starts)]


def group_rank(group: torch.Tensor, n_groups: int) -> Tuple[torch.Tensor, torch.Tensor]:
    """(rank of each element within its group, size of each group) for integer group ids."""
    counts = torch.bincount(group, minlength=n_groups)
    starts = counts.cumsum(0) - counts
    order = torch.argsort(group, stable=True)
    rank = torch.empty_like(group)
    rank[order] = torch.arange(len(group), device=group.device) - starts[group[order]]
    return rank, counts


# Pairs per chunk of the localized context: a chunk's buffers are [L, pairs] (4096 pairs x 1024 tokens x 4 B = 16 MB),
# so a document's memory grows with its pairs, never with E^2 x L at once.
CONTEXT_CHUNK_PAIRS = 4096


def head_blocks(n_entities: List[int], chunk_pairs: int) -> List[Tuple[int, int, int]]:
    """(document, first head, end head) in flattened entity ids: runs of a document's head entities whose pairs
    with all of its entities number at most `chunk_pairs` (at least one head per run)."""
    if chunk_pairs < 1:
        raise ValueError(f"chunk_pairs must be at least 1, got {chunk_pairs}")
    blocks, first = [], 0
    for doc, n in enumerate(n_entities):
        rows = max(1, chunk_pairs // max(n, 1))
        blocks += [(doc, a, min(a + rows, first + n)) for a in range(first, first + n, rows)]
        first += n
    return blocks


def _pair_context(hidden: torch.Tensor, att_l: torch.Tensor, rows: torch.Tensor, heads: torch.Tensor,
                  tails: torch.Tensor, sent_pos: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, ...]:
    """Context [p, H] of one document's pairs (heads, tails) from `hidden` [L, H] and its entities' attention
    `att_l` [L, E, heads], `heads` counted from the block `rows` [L, r, heads]; with `sent_pos` [S, 2] also
    their sentence attention [p, S]."""
    q = torch.bmm(rows, att_l.transpose(1, 2))[:, heads, tails] / att_l.shape[2]  # [L, r, E] -> [L, p]
    q = q / (q.sum(0, keepdim=True) + 1e-5)
    ctx = torch.matmul(q.t(), hidden.to(q.dtype))  # [p, H]
    if sent_pos is None:
        return (ctx,)
    return ctx, DocREModel.sentence_attention(q.t()[None], sent_pos[None])[0]


# ----------------------------------------------------------------------------- the model
def prior_bias(rates, num_class: int) -> torch.Tensor:
    """Classifier bias `[K+1]` of the none-class prior start: 0 for class 0 and logit(p_i) for relation i.

    `rates` is a [K+1] tensor (column 0 ignored; e.g. `losses.positive_rates`) or one float for every relation.
    """
    rates = torch.as_tensor(rates, dtype=torch.float64)
    rates = rates.expand(num_class - 1) if rates.dim() == 0 else rates[1:]
    if rates.shape != (num_class - 1,) or not ((rates > 0) & (rates < 1)).all():
        raise ValueError(f"rates must be one value or {num_class} values (column 0 ignored) in (0, 1), "
                         f"got {tuple(rates.shape)} values in [{rates.min().item()}, {rates.max().item()}]")
    return torch.cat([rates.new_zeros(1), torch.logit(rates)])


class DocREModel(nn.Module):
    """ATLOP: encoder, entity and localized context pooling, group bilinear classifier -> logits [P, K+1].

    `attention_rows` chooses how the last layer's attention rows of the mention starts are obtained:
    "recompute" from the last layer's input (the encoder may then use SDPA), "eager" from the last
    attention module's own weights (needs eager attention there, e.g. DeBERTa), or "auto".
    `checkpoint_attention` and `mask_dropout` go to `encoder_kernels.configure_encoder` (CPU training kernels).
    `context_chunk` bounds the pairs whose localized context is computed at once (memory linear in the pairs).
    `bilinear` is "atlop" (x_g outer y_g per block) or "maxsym" (the NCRL authors' DocRED head: the outer
    product of each block replaced by max(x_g outer y_g, its transpose) before the same linear layer).
    """

    def __init__(self, encoder: PreTrainedModel, num_class: int, emb_size: int = 768, block_size: int = 64,
                 tokenizer=None, max_seq_length: int = 1024,
                 gradient_checkpointing: bool = False, attention_rows: str = "auto",
                 window_size: Optional[int] = None, window_overlap: int = 16,
                 start_token_ids: Optional[Sequence[int]] = None, end_token_ids: Optional[Sequence[int]] = None,
                 unpad: Optional[bool] = None, checkpoint_attention: bool = True, bilinear: str = "atlop",
                 mask_dropout: bool = True, context_chunk: int = CONTEXT_CHUNK_PAIRS):
        super().__init__()
        if context_chunk < 1:
            raise ValueError(f"context_chunk must be at least 1 pair, got {context_chunk}")
        self.context_chunk = context_chunk
        if emb_size % block_size:
            raise ValueError(f"emb_size {emb_size} must be a multiple of block_size {block_size}")
        if attention_rows not in ATTENTION_ROWS:
            raise ValueError(f"attention_rows must be one of {ATTENTION_ROWS}, got {attention_rows!r}")
        if bilinear not in BILINEARS:
            raise ValueError(f"bilinear must be one of {BILINEARS}, got {bilinear!r}")
        config = encoder.config
        self.encoder = encoder
        if isinstance(getattr(encoder, "pooler", None), nn.Module):
            encoder.pooler = None  # unused; its parameters would get no gradient (DDP complains)
        self.num_class, self.emb_size, self.block_size = num_class, emb_size, block_size
        self.bilinear_type = bilinear
        self.hidden_size = config.hidden_size
        self.max_seq_length = max_seq_length
        self.window_size = window_size or encoder_max_length(encoder)
        self.window_overlap = window_overlap
        self.unpad = unpad  # None: encode documents one by one (no padding) on CPU, as one batch elsewhere
        if tokenizer is not None and start_token_ids is None:
            start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
            end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
            start_token_ids, end_token_ids = [start], [end]
        # None: take each document's own first and last token (the contract puts the special tokens there)
        self.start_token_ids = list(start_token_ids) if start_token_ids is not None else None
        self.end_token_ids = list(end_token_ids) if end_token_ids is not None else None
        self.pad_token_id = config.pad_token_id if config.pad_token_id is not None else 0

        self.attention, self.query, self.key = find_last_attention(encoder)
        self.num_heads = int(getattr(self.attention, "num_attention_heads", None) or config.num_attention_heads)
        if attention_rows == "auto":
            attention_rows = "recompute" if config.model_type in RECOMPUTE_FAMILIES else "eager"
        self.attention_rows = attention_rows
        configure_encoder(encoder, attention_weights=attention_rows == "eager",
                          checkpoint_attention=checkpoint_attention, mask_dropout=mask_dropout)
        if gradient_checkpointing:
            enable_activation_checkpointing(encoder)

        self.head_extractor = nn.Linear(2 * self.hidden_size, emb_size)
        self.tail_extractor = nn.Linear(2 * self.hidden_size, emb_size)
        self.bilinear = nn.Linear(emb_size * block_size, num_class)

    @classmethod
    def from_settings(cls, settings: "DocRESettings", encoder: PreTrainedModel, tokenizer: Any = None,
                      **runtime: Any) -> "DocREModel":
        """The model `settings` describe over `encoder`; `runtime` holds the knobs no checkpoint stores."""
        stored = settings.model_kwargs()
        clash = sorted(set(runtime) & set(stored))
        if clash:
            raise ValueError(f"{clash} are DocRESettings fields: change the settings, not the runtime knobs")
        model = cls(encoder, tokenizer=tokenizer, **stored, **runtime)
        if settings.end_to_end:  # the entity heads of entities.py (issue #36); off: nothing is added
            from entities import EntityHeads

            model.entity_heads = EntityHeads(model.hidden_size, len(settings.entity_types), settings.max_span_width,
                                             span_head=settings.span_head)
        return model

    @torch.no_grad()
    def init_classifier_bias(self, rates) -> None:
        """Start from the none-class prior: bias_0 = 0 and bias_i = logit(p_i) for relation positive rates p_i.

        `rates` is a [K+1] tensor (column 0 ignored; e.g. `losses.positive_rates`) or one float for every
        relation (e.g. their mean). With the bilinear features near zero at step 0, every loss then reads
        the prior off the logits: the f_i > f_0 losses (NCRL, ATL, AFL, ranking) see margins
        f_i - f_0 = logit(p_i), i.e. NCRL's σ(m_i) and the 2-way softmax of ATL/AFL over {0, i} equal p_i
        (NCRL's class-0 term sees m_0 = -mean_i logit(p_i) > 0); BCE ignores column 0 and sees σ(f_i) = p_i.
        Every pair is predicted "no relation" while p_i < 1/2 (BCE: while p_i is under its threshold).
        """
        self.bilinear.bias.copy_(prior_bias(rates, self.bilinear.bias.shape[0]))

    # -- encoder
    @contextlib.contextmanager
    def _capture_last_attention(self) -> Iterator[Dict[str, torch.Tensor]]:
        """Hooks on the last attention module for one encoder call: its input, or its attention weights."""
        store: Dict[str, torch.Tensor] = {}
        module = self.attention
        if self.attention_rows == "recompute":
            def pre_hook(mod, args, kwargs):
                store["input"] = args[0] if args else kwargs["hidden_states"]
            handles = [module.register_forward_pre_hook(pre_hook, with_kwargs=True)]
        else:
            signature = inspect.signature(module.forward)

            def pre_hook(mod, args, kwargs):  # modules that return weights only on request (DeBERTa)
                if "output_attentions" not in signature.parameters:
                    return None
                bound = signature.bind(*args, **kwargs)
                bound.arguments["output_attentions"] = True
                return bound.args, bound.kwargs

            def hook(mod, args, output):
                store["weights"] = output[1]
            handles = [module.register_forward_pre_hook(pre_hook, with_kwargs=True),
                       module.register_forward_hook(hook)]
        try:
            yield store
        finally:
            for h in handles:
                h.remove()

    def _encoder_call(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                      ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """One encoder pass: last hidden states and what the last attention module left behind."""
        with self._capture_last_attention() as store:
            hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        if self.attention_rows == "eager" and store.get("weights") is None:
            raise RuntimeError(f"{type(self.attention).__name__} returned no attention weights; load the encoder "
                               f"with attn_implementation='eager' or use attention_rows='recompute'")
        return hidden, store

    def _unpadded(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                  ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """The (ids, mask) of each encoder call: one per sequence at its own length with `unpad`, else one."""
        unpad = self.unpad if self.unpad is not None else input_ids.device.type == "cpu"
        if not unpad or len(input_ids) == 1:
            return [(input_ids, attention_mask)]
        return [(input_ids[i:i + 1, :n], attention_mask[i:i + 1, :n])
                for i, n in enumerate(attention_mask.sum(1).tolist())]

    def encoder_inputs(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                       ) -> List[Tuple[torch.Tensor, torch.Tensor]]:
        """The (ids, mask) pairs `forward` runs the encoder on for this batch: its windows, unpadded on CPU."""
        if input_ids.shape[1] > self.window_size:
            win = self._windows(input_ids, attention_mask.sum(1).tolist(), self.window_size)
            input_ids, attention_mask = win["ids"], win["mask"].long()
        return self._unpadded(input_ids, attention_mask)

    def _run_encoder(self, input_ids: torch.Tensor, attention_mask: torch.Tensor
                     ) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
        """Last hidden states [N, W, H] and the last attention module's input [N, W, H] or weights
        [N, heads, W, W]; with `unpad`, each sequence is encoded alone at its own length."""
        pieces = self._unpadded(input_ids, attention_mask)
        if len(pieces) == 1:
            return self._encoder_call(*pieces[0])
        width = input_ids.shape[1]
        parts = [self._encoder_call(ids, mask) for ids, mask in pieces]
        hidden = torch.cat([nn.functional.pad(h, (0, 0, 0, width - h.shape[1])) for h, _ in parts])
        store = {}
        if "input" in parts[0][1]:
            store["input"] = torch.cat([nn.functional.pad(s["input"], (0, 0, 0, width - s["input"].shape[1]))
                                        for _, s in parts])
        if "weights" in parts[0][1]:
            store["weights"] = torch.cat([nn.functional.pad(s["weights"], (0, width - s["weights"].shape[-1]) * 2)
                                          for _, s in parts])
        return hidden, store

    def _attention_rows(self, store: Dict[str, torch.Tensor], key_mask: torch.Tensor, win: torch.Tensor,
                        slot: torch.Tensor) -> torch.Tensor:
        """Last-layer attention [R, heads, W] of token `slot` of window `win`, over that window's keys."""
        if self.attention_rows == "eager":
            return store["weights"][win, :, slot]
        x = store["input"]  # [N, W, H]
        n, w = key_mask.shape
        heads = self.num_heads
        d = self.query.out_features // heads
        rank, counts = group_rank(win, n)
        r_max = int(counts.max()) if len(win) else 0
        q = self.query(x[win, slot])  # [R, heads*d]
        q_pad = q.new_zeros(n, r_max, q.shape[-1]).index_put((win, rank), q)
        k = self.key(x)  # [N, W, heads*d]
        scores = torch.matmul(q_pad.view(n, r_max, heads, d).transpose(1, 2),
                              k.view(n, w, heads, d).permute(0, 2, 3, 1)) * d ** -0.5  # [N, heads, r_max, W]
        scores = scores.masked_fill(~key_mask[:, None, None, :], torch.finfo(scores.dtype).min)
        return scores.softmax(-1)[win, :, rank]

    def _windows(self, input_ids: torch.Tensor, lengths: List[int], window: int) -> Dict[str, torch.Tensor]:
        """The batch cut into windows: ids and mask [N, W], original position of each window token [N, W]
        (-1 for added special tokens and padding), and per window its document, span [a, b) and the offset
        from an original position to its slot."""
        rows, pos_rows, meta = [], [], []
        for d, n in enumerate(lengths):
            ids = input_ids[d, :n]
            start = ids.new_tensor(self.start_token_ids) if self.start_token_ids is not None else ids[:1]
            end = ids.new_tensor(self.end_token_ids) if self.end_token_ids is not None else ids[n - 1:]
            for a, b in plan_windows(n, window, len(start), len(end), self.window_overlap):
                pre, post = (start if a > 0 else start[:0]), (end if b < n else end[:0])
                rows.append(torch.cat([pre, ids[a:b], post]))
                pos_rows.append(torch.cat([torch.full_like(pre, -1), torch.arange(a, b, device=ids.device),
                                           torch.full_like(post, -1)]))
                meta.append((d, a, b, len(pre) - a))
        width = max(len(r) for r in rows)
        win_ids = input_ids.new_full((len(rows), width), self.pad_token_id)
        pos_map = input_ids.new_full((len(rows), width), -1)
        for i, (r, p) in enumerate(zip(rows, pos_rows)):
            win_ids[i, :len(r)], pos_map[i, :len(p)] = r, p
        win_len = input_ids.new_tensor([len(r) for r in rows])
        mask = torch.arange(width, device=input_ids.device)[None, :] < win_len[:, None]
        doc, a, b, offset = input_ids.new_tensor(meta).view(-1, 4).unbind(1)
        return {"ids": win_ids, "mask": mask, "pos": pos_map, "doc": doc, "a": a, "b": b, "offset": offset}

    def encode_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      window: Optional[int] = None) -> Encoded:
        """The encoder pass: token states [B, L, H] (averaged over overlapping windows for a long batch) and what
        `mention_attention` needs to give last-layer attention rows afterwards, for any tokens."""
        window = window or self.window_size
        if input_ids.shape[1] <= window:
            hidden, store = self._run_encoder(input_ids, attention_mask)
            return Encoded(hidden, store, attention_mask.bool(), None)
        return self._encode_windows(input_ids, attention_mask, window)

    def _encode_windows(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, window: int) -> Encoded:
        """`encode_states` over overlapping windows: each token's state is its mean over the windows holding it."""
        b, length = input_ids.shape
        win = self._windows(input_ids, attention_mask.sum(1).tolist(), window)
        out, store = self._run_encoder(win["ids"], win["mask"].long())  # [N, W, H]
        kept = win["pos"].ge(0)
        flat = (win["doc"][:, None] * length + win["pos"])[kept]
        hidden = out.new_zeros(b * length, out.shape[-1]).index_add_(0, flat, out[kept])
        count = out.new_zeros(b * length).index_add_(0, flat, out.new_ones(len(flat)))
        return Encoded((hidden / count.clamp(min=1)[:, None]).view(b, length, -1), store, win["mask"], win)

    def mention_attention(self, enc: Encoded, mention_pos: torch.Tensor, mention_doc: torch.Tensor) -> torch.Tensor:
        """Last-layer attention rows [M, heads, L] of tokens `mention_pos` of documents `mention_doc`; over windows,
        each window's row is summed into document positions and the sum renormalised."""
        if enc.windows is None:
            return self._attention_rows(enc.store, enc.key_mask, mention_doc, mention_pos)
        win, length = enc.windows, enc.hidden.shape[1]
        covers = ((win["doc"][None, :] == mention_doc[:, None]) & (win["a"][None, :] <= mention_pos[:, None])
                  & (mention_pos[:, None] < win["b"][None, :]))  # [M, N]
        m_idx, w_idx = covers.nonzero(as_tuple=True)
        rows = self._attention_rows(enc.store, enc.key_mask, w_idx, mention_pos[m_idx] + win["offset"][w_idx])
        keys = win["pos"][w_idx]
        keys = keys.masked_fill(keys < 0, length)[:, None, :].expand(-1, rows.shape[1], -1)  # [R, heads, W]
        att = rows.new_zeros(len(m_idx), rows.shape[1], length + 1).scatter_add_(2, keys, rows)
        att = rows.new_zeros(len(mention_pos), rows.shape[1], length + 1).index_add_(0, m_idx, att)[..., :length]
        return att / (att.sum(-1, keepdim=True) + 1e-10)

    def encode(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mention_pos: torch.Tensor,
               mention_doc: torch.Tensor, window: Optional[int] = None) -> Tuple[torch.Tensor, torch.Tensor]:
        """Token states [B, L, H] and the last-layer attention rows [M, heads, L] of the mention starts."""
        enc = self.encode_states(input_ids, attention_mask, window)
        return enc.hidden, self.mention_attention(enc, mention_pos, mention_doc)

    # -- head
    @staticmethod
    def pool_entities(hidden: torch.Tensor, mention_att: torch.Tensor, mention_pos: torch.Tensor,
                      mention_doc: torch.Tensor, mention_entity: torch.Tensor, n_entities: int
                      ) -> Tuple[torch.Tensor, torch.Tensor]:
        """Entity embeddings [E, H] (log-sum-exp over mentions) and attention [E, heads, L] (mean over mentions);
        zeros for an entity without mentions."""
        emb = hidden[mention_doc, mention_pos].float()  # [M, H]
        idx = mention_entity[:, None].expand_as(emb)
        peak = emb.new_full((n_entities, emb.shape[1]), float("-inf"))
        peak = peak.scatter_reduce(0, idx, emb.detach(), "amax")  # shift for stability; the result is invariant
        count = torch.bincount(mention_entity, minlength=n_entities)  # [E]
        has = (count > 0)[:, None]
        peak = torch.where(has, peak, torch.zeros_like(peak))
        total = emb.new_zeros(n_entities, emb.shape[1]).index_add_(0, mention_entity, (emb - peak[mention_entity]).exp())
        ent = torch.log(torch.where(has, total, torch.ones_like(total))) + peak
        att = mention_att.new_zeros(n_entities, *mention_att.shape[1:]).index_add_(0, mention_entity, mention_att)
        att = att / count.clamp(min=1).to(att.dtype)[:, None, None]
        return ent, att

    @staticmethod
    def pool_context(hidden: torch.Tensor, entity_att: torch.Tensor, entity_doc: torch.Tensor, hts: torch.Tensor,
                     pair_doc: torch.Tensor, sent_pos: Optional[torch.Tensor] = None,
                     chunk_pairs: int = CONTEXT_CHUNK_PAIRS) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Localized context c = q^T H per pair [P, H], q = mean over heads of A_h * A_t, normalised; with
        `sent_pos` [B, S, 2] also each pair's attention per sentence [P, S] (`sentence_attention`), else None.

        Computed for the pairs `hts` only, in blocks of head entities of one document with at most `chunk_pairs`
        pairs (recomputed in the backward pass when training): memory grows with the pairs, never with E^2 x L."""
        n_entities = torch.bincount(entity_doc, minlength=hidden.shape[0])  # [B]; each document's are consecutive
        first = (n_entities.cumsum(0) - n_entities).tolist()
        order = None if bool((hts[1:, 0] >= hts[:-1, 0]).all()) else torch.argsort(hts[:, 0], stable=True)
        sorted_heads = hts[:, 0] if order is None else hts[order, 0]
        starts = torch.bincount(sorted_heads, minlength=len(entity_doc) + 1).cumsum(0).tolist()  # pairs before head
        att_l = entity_att.permute(2, 0, 1)  # [L, E, heads]
        grad = torch.is_grad_enabled() and (hidden.requires_grad or entity_att.requires_grad)
        dtype = torch.get_autocast_dtype(hidden.device.type) if torch.is_autocast_enabled(hidden.device.type) \
            else entity_att.dtype  # q's, as the context's
        out = [hidden.new_zeros(0 if grad else len(hts), hidden.shape[-1], dtype=dtype)]  # filled in place
        if sent_pos is not None:
            out.append(hidden.new_zeros(0 if grad else len(hts), sent_pos.shape[1], dtype=torch.float32))
        parts, doc_att = [], {}
        for doc, a, b in head_blocks(n_entities.tolist(), chunk_pairs):
            lo, hi = (starts[a - 1] if a else 0), starts[b - 1]
            if lo == hi:
                continue
            idx = slice(lo, hi) if order is None else order[lo:hi]
            e0 = first[doc]
            if doc not in doc_att:  # one copy per document: [L, E_doc, heads]
                doc_att = {doc: att_l[:, e0:e0 + int(n_entities[doc])].contiguous()}
            args = (hidden[doc], doc_att[doc], att_l[:, a:b], hts[idx, 0] - a, hts[idx, 1] - e0) \
                + (() if sent_pos is None else (sent_pos[doc],))
            if grad:  # kept for one torch.cat: filling a buffer in place would copy all of its gradient per chunk
                parts.append(checkpoint(_pair_context, *args, use_reentrant=False))
            else:
                for column, value in zip(out, _pair_context(*args)):
                    column[idx] = value
        if not grad or not parts:
            return out[0], (out[1] if sent_pos is not None else None)
        out = [torch.cat(c) for c in zip(*parts)]  # [P, H] (, [P, S]) in head order
        if order is not None:
            inverse = torch.empty_like(order).scatter_(0, order, torch.arange(len(order), device=order.device))
            out = [o[inverse] for o in out]
        return out[0], (out[1] if sent_pos is not None else None)

    @staticmethod
    def sentence_attention(q: torch.Tensor, sent_pos: torch.Tensor) -> torch.Tensor:
        """q [B, ..., L] summed over each sentence's tokens [start, end) of `sent_pos` [B, S, 2] (-1 rows are
        padding) and renormalised over the document's sentences -> [B, ..., S] in fp32.

        Rows sum to 1 over the sentences (0 where q puts no mass on any sentence: an entity without kept
        mentions, or head and tail seen only in disjoint windows of a long document) and are exactly 0 on
        padding sentences. DREEAM sums q the same way but does not
        renormalise, leaving out the mass on special tokens; here that mass is spread over the sentences.
        """
        b, length = q.shape[0], q.shape[-1]
        pos = torch.arange(length, device=q.device)[None, :, None]  # [1, L, 1]
        start, end = sent_pos[..., 0][:, None, :], sent_pos[..., 1][:, None, :]  # [B, 1, S]
        member = ((pos >= start) & (pos < end)).float()  # [B, L, S]; a -1 padding span is empty
        with torch.autocast(q.device.type, enabled=False):
            per_sent = torch.matmul(q.float().reshape(b, -1, length), member)  # [B, *, S]
        total = per_sent.sum(-1, keepdim=True)
        has = total > 0  # the inner where keeps 0 / 0 (and its NaN gradient) out of empty rows
        per_sent = torch.where(has, per_sent / torch.where(has, total, torch.ones_like(total)), per_sent)
        return per_sent.view(*q.shape[:-1], sent_pos.shape[1])

    def classify(self, ent: torch.Tensor, hts: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """Group bilinear logits [P, K+1] from entity embeddings [E, H], pairs `hts` [P, 2] and contexts [P, H]."""
        z_h = torch.tanh(pair_linear(self.head_extractor, ent, hts[:, 0], context))  # [P, emb]
        z_t = torch.tanh(pair_linear(self.tail_extractor, ent, hts[:, 1], context))
        return group_bilinear(z_h, z_t, self.bilinear, self.block_size, max_sym=self.bilinear_type == "maxsym")

    def score(self, hidden: torch.Tensor, mention_att: torch.Tensor, mention_pos: torch.Tensor,
              mention_doc: torch.Tensor, mention_entity: torch.Tensor, entity_doc: torch.Tensor,
              hts: torch.Tensor, pair_doc: torch.Tensor, sent_pos: Optional[torch.Tensor] = None):
        """Logits [P, K+1] from encoder states and mention attention rows; with `sent_pos` [B, S, 2], the pair
        (logits, sentence attention [P, S])."""
        ent, ent_att = self.pool_entities(hidden, mention_att, mention_pos, mention_doc, mention_entity,
                                          len(entity_doc))
        context, sent_attn = self.pool_context(hidden, ent_att, entity_doc, hts, pair_doc, sent_pos,
                                               self.context_chunk)
        logits = self.classify(ent, hts, context)
        return logits if sent_pos is None else (logits, sent_attn)

    def named_outputs(self, batch: Dict[str, torch.Tensor], evidence: bool = False) -> Dict[str, torch.Tensor]:
        """What prediction keeps of a batch: {"logits": [P, K+1]}, and with `evidence` each pair's sentence
        attention {"evidence": [P, S]} over the batch's sentences."""
        if not evidence:
            return {"logits": self(**batch)}
        logits, sent_attn = self(**batch, return_evidence=True)
        return {"logits": logits, "evidence": sent_attn}

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, mention_pos: torch.Tensor,
                mention_doc: torch.Tensor, mention_entity: torch.Tensor, entity_doc: torch.Tensor,
                hts: torch.Tensor, pair_doc: torch.Tensor, labels: Optional[torch.Tensor] = None,
                sent_pos: Optional[torch.Tensor] = None, return_evidence: bool = False, return_hidden: bool = False,
                **kwargs):
        """Logits [P, K+1] for the batch's entity pairs (see utils.Collator for the inputs); with
        `return_evidence`, (logits, sentence attention [P, S]) over the sentences of `sent_pos` [B, S, 2]; with
        `return_hidden`, (logits, sentence attention or None, token states [B, L, H]): the entity heads' input,
        through forward so that DistributedDataParallel sees the pass."""
        if input_ids.shape[1] > self.max_seq_length:
            raise ValueError(f"input length {input_ids.shape[1]} exceeds max_seq_length {self.max_seq_length}")
        if return_evidence and sent_pos is None:
            raise ValueError("return_evidence needs the batch's sentence spans sent_pos [B, S, 2]")
        kept = mention_pos < attention_mask.sum(1)[mention_doc]  # mentions past the document's end are dropped
        mention_pos, mention_doc, mention_entity = mention_pos[kept], mention_doc[kept], mention_entity[kept]
        hidden, mention_att = self.encode(input_ids, attention_mask, mention_pos, mention_doc)
        out = self.score(hidden, mention_att, mention_pos, mention_doc, mention_entity, entity_doc, hts, pair_doc,
                         sent_pos if return_evidence else None)
        if not return_hidden:
            return out
        logits, sent_attn = out if return_evidence else (out, None)
        return logits, sent_attn, hidden


# ----------------------------------------------------------------------------- the [CLS] classifier
class ClsClassifier(nn.Module):
    """An encoder, dropout and a linear layer on its last-layer first-token ([CLS]) state -> logits [B, C].

    The head of DialogRE and GoEmotions. `dropout` None takes the encoder's `hidden_dropout_prob` (0.1 without
    one); token type ids reach the encoder only where its vocabulary of types has more than one.
    """

    def __init__(self, encoder: PreTrainedModel, num_class: int, dropout: Optional[float] = None):
        super().__init__()
        configure_encoder(encoder)
        config = encoder.config
        self.encoder = encoder
        self.use_token_types = getattr(config, "type_vocab_size", 0) > 1
        self.dropout = nn.Dropout(dropout if dropout is not None else getattr(config, "hidden_dropout_prob", 0.1))
        self.classifier = nn.Linear(config.hidden_size, num_class)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Logits [B, C] of a batch of ids and mask [B, L] (and token types [B, L])."""
        extra = {"token_type_ids": token_type_ids} if self.use_token_types and token_type_ids is not None else {}
        hidden = self.encoder(input_ids=input_ids, attention_mask=attention_mask, **extra).last_hidden_state
        return self.classifier(self.dropout(hidden[:, 0]))  # [B, C]

    @torch.no_grad()
    def init_classifier_bias(self, rates) -> None:
        """Start from the none-class prior (`prior_bias`): σ(f_i) = p_i for relation i at step 0."""
        self.classifier.bias.copy_(prior_bias(rates, self.classifier.bias.shape[0]))
