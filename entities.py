"""End to end (issue #36): entity heads on the relation model's encoder, trained jointly with it.

- mentions: every span of at most `max_span_width` words inside one sentence is scored (span-based, as JEREX; it can
  propose nested spans, which BIO cannot). "endpoints", the first head, scores a span from its first and last token
  states and its width; "rich" adds the mean of its token states and the casing of its first and last words
  (`word_shapes`: the encoder may be uncased, and capitals are most of what tells a name from a common noun); "bio"
  tags each word O, B or I (from its first token's state and casing, cross-entropy) and scores a span by the
  probability that the tags make exactly it (B at its first word, I inside, not I after: `bio_span_logprob`), so
  that thresholds and decoding are the span heads' (studies/end-to-end, "BIO against spans"); "rich+bio" (the
  default, `--span_head`) has both, each trained on its own loss, and scores a span by the mean of their log-odds:
  the two err on different spans (studies/end-to-end, "Both heads");
- coreference: a scorer over pairs of mention embeddings and name-match features (`name_features`), then
  average-link clustering of the predicted mentions (`cluster_mentions`);
- types: the mean of an entity's mention embeddings into the training file's `type` labels.

Training: the relation head runs as before on the gold entities, and the entity heads on the same encoder pass
(`joint_loss`). Prediction: one encoder pass per document serves the entity heads and then the relation head on
the predicted entities (`predict_documents`); the pass keeps what the last-layer attention rows are computed from
(`model.Encoded`), and rows are computed for the predicted mentions only. No entity marker is used (the text is not
yet known to hold entities when it is encoded).
"""
from __future__ import annotations

import argparse
import logging
import re
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

import losses
import utils

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    from model import Encoded

ENTITY_DIM = 256  # width of the span and mention representations
NAME_FEATURES = 5  # see name_features
SPAN_HEADS = ("rich", "endpoints", "bio", "rich+bio")  # see the module docstring; a folder without the field has
# "endpoints"
DEFAULT_SPAN_HEAD = "rich+bio"
RICH_HEADS, TAGGING_HEADS = ("rich", "rich+bio"), ("bio", "rich+bio")  # heads with the rich scorer, with word tags
BIO_O, BIO_B, BIO_I = 0, 1, 2  # the bio head's word tags
N_SHAPES = 5  # word_shapes
MENTION_THRESHOLD = 0.5  # a model without a tuned one (`mention_threshold`)
MENTION_KEY = "mention_threshold"  # its name in the decision's params (losses.Decision), stored with the model
COREF_THRESHOLD = 0.5
# decoding ranks a span by its probability plus this per word: by probability alone, a name's inner span often
# outranks the whole name ("Korea" in "Democratic People 's Republic of Korea": 317 of the 411 boundary errors of
# the first head on the 400/100 study's held-out documents were inside the gold span); measured there, +0.5 to +1.2
# mention F1 on either half of the documents (studies/end-to-end, "Rich span head")
LONGER_SPAN_BONUS = 0.05


# ----------------------------------------------------------------------------- flags
def add_args(group: argparse._ArgumentGroup) -> None:
    """--end_to_end and its loss weights."""
    group.add_argument("--end_to_end", action="store_true",
                       help="also train entity heads (mentions, coreference, types) on the encoder, so the model "
                            "reads raw text without spaCy's NER (implies no entity marker)")
    # defaults of the 400/100 study (studies/end-to-end), three seeds each: weights 0.5 cost 2.3 points of
    # gold-entity relation F1, 0.25 cost 1.2, with the same mention F1 (85.8 and 85.0) and raw/gold ratio (0.79)
    group.add_argument("--mention_weight", type=utils.NON_NEGATIVE, default=0.25,
                       help="weight of the mention loss (end to end)")
    group.add_argument("--coref_weight", type=utils.NON_NEGATIVE, default=0.25,
                       help="weight of the coreference loss (end to end)")
    group.add_argument("--type_weight", type=utils.NON_NEGATIVE, default=0.25,
                       help="weight of the entity type loss (end to end)")
    group.add_argument("--max_span_width", type=utils.COUNT, default=10, help="longest mention in words (end to end)")
    group.add_argument("--span_head", choices=SPAN_HEADS, default=DEFAULT_SPAN_HEAD,
                       help="what the mention head scores a span from (end to end; see entities.py)")
    group.add_argument("--mention_pos_weight", type=utils.POSITIVE, default=3.0,
                       help="weight of the gold spans in the mention loss (BCE's pos_weight; end to end, span "
                            "scorers: the cross-entropy over the word tags of bio and rich+bio is unweighted)")


def entity_types_of(docs: Any) -> List[str]:
    """The `type` labels of the documents' mentions, sorted. It reads the training file before the validator does,
    so whatever is malformed is passed over here and named there."""
    def items(x: Any) -> list:
        return x if isinstance(x, list) else []

    return sorted({m["type"] for d in items(docs) if isinstance(d, dict) for ent in items(d.get("vertexSet"))
                   for m in items(ent) if isinstance(m, dict) and isinstance(m.get("type"), str) and m["type"]})


# ----------------------------------------------------------------------------- per-document fields
def word_shapes(words: Sequence[str]) -> np.ndarray:
    """The casing class of each word [W]: 0 other (punctuation, symbols), 1 lower case first letter, 2 capitalised,
    3 all capitals (two letters or more), 4 a digit first."""
    def shape(w: str) -> int:
        if w[:1].isdigit():
            return 4
        if w[:1].isupper():
            return 3 if len(w) > 1 and w.isupper() else 2
        return 1 if w[:1].isalpha() else 0
    return np.array([shape(w) for w in words], dtype=np.int64)


def entity_fields(docs: Sequence[Dict[str, Any]], tokenizer: Any, settings: Any) -> List[Dict[str, Any]]:
    """Per document: each word's first and last token (input_ids coordinates), whether it survives truncation, its
    sentence; the words; the gold mentions [M, 2] (document word [start, end)), their entity, each entity's type id
    (-1: unknown). The tokens are those prepro makes without an entity marker."""
    import prepro

    enc = prepro.WordTokenizer.of(tokenizer)
    words = [[w for s in d["sents"] for w in s] for d in docs]
    budget = settings.max_seq_length - enc.n_prefix - enc.n_suffix
    type_id = {t: i for i, t in enumerate(settings.entity_types)}
    out = []
    for doc, ws, (_, wid) in zip(docs, words, enc.encode(words)):
        idx = np.arange(len(ws))
        first = np.searchsorted(wid, idx, "left")  # [W]
        last = np.searchsorted(wid, idx, "right") - 1  # [W]
        sent_len = [len(s) for s in doc["sents"]]
        start = np.cumsum([0] + sent_len)
        spans = [(start[m["sent_id"]] + m["pos"][0], start[m["sent_id"]] + m["pos"][1], e)
                 for e, ent in enumerate(doc["vertexSet"]) for m in ent]
        gold = np.asarray(spans, dtype=np.int64).reshape(-1, 3)
        out.append({"word_first": first + enc.n_prefix, "word_last": last + enc.n_prefix,
                    "word_ok": (last >= first) & (last < budget),
                    "word_sent": np.repeat(np.arange(len(sent_len)), sent_len), "words": ws,
                    "word_shape": word_shapes(ws),
                    "gold_spans": gold[:, :2], "gold_entity": gold[:, 2],
                    "entity_type": np.array([type_id.get(ent[0].get("type"), -1) for ent in doc["vertexSet"]],
                                            dtype=np.int64)})
    return out


class JoinedFeatures:
    """prepro's features with the entity fields merged into each document's dict; other attributes pass through."""

    def __init__(self, base: Any, extra: Sequence[Dict[str, Any]]):
        if len(base) != len(extra):
            raise ValueError(f"{len(base)} features but {len(extra)} entity field sets")
        self.base, self.extra = base, list(extra)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: Any) -> Any:
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        return {**self.base[i], **self.extra[i]}

    def __iter__(self):
        return (self[i] for i in range(len(self)))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.__dict__["base"], name)


# ----------------------------------------------------------------------------- names
_PUNCT = re.compile(r"^\W+$")


def name_key(words: Sequence[str]) -> Tuple[str, ...]:
    """A mention's words case-folded, punctuation-only words dropped."""
    return tuple(w.casefold() for w in words if not _PUNCT.match(w))


def acronym(words: Sequence[str]) -> str:
    """Initials of the capitalised words of a name of two or more words ("" otherwise)."""
    caps = [w[0] for w in words if w[:1].isupper()]
    return "".join(caps).casefold() if len(caps) >= 2 else ""


def name_features(a: Sequence[str], b: Sequence[str]) -> List[float]:
    """Name-match features of two mentions: same name, one's words within the other's, same last word, one the
    acronym of the other, one's name a substring of the other's."""
    ka, kb = name_key(a), name_key(b)
    if not ka or not kb:
        return [0.0] * NAME_FEATURES
    sa, sb = " ".join(ka), " ".join(kb)
    short_a, short_b = sa.replace(".", "").replace(" ", ""), sb.replace(".", "").replace(" ", "")
    return [float(ka == kb), float(set(ka) <= set(kb) or set(kb) <= set(ka)), float(ka[-1] == kb[-1]),
            float(acronym(a) == short_b or acronym(b) == short_a), float(sa in sb or sb in sa)]


def pair_features(names: Sequence[Sequence[str]], pairs: np.ndarray) -> np.ndarray:
    """`name_features` of each pair [P, 2] of `names` -> [P, NAME_FEATURES] float32."""
    feats = [name_features(names[i], names[j]) for i, j in pairs.tolist()]
    return np.asarray(feats, dtype=np.float32).reshape(-1, NAME_FEATURES)


def upper_pairs(n: int) -> np.ndarray:
    """All (i, j), i < j < n -> [n (n - 1) / 2, 2]."""
    i, j = np.triu_indices(n, k=1)
    return np.stack([i, j], 1).astype(np.int64)


# ----------------------------------------------------------------------------- candidates and the batch
def candidate_spans(word_sent: np.ndarray, word_ok: np.ndarray, max_width: int) -> np.ndarray:
    """Word spans [C, 2] ([start, end)) of at most `max_width` words inside one sentence whose first and last words
    survive truncation, ordered by start then width."""
    n = len(word_sent)
    start = np.arange(n)[:, None]  # [W, 1]
    end = start + np.arange(1, max_width + 1)[None, :]  # [W, K]
    last = np.minimum(end, n) - 1
    valid = (end <= n) & (word_sent[last] == word_sent[start]) & word_ok[start] & word_ok[last]
    return np.stack([np.broadcast_to(start, end.shape)[valid], end[valid]], 1).reshape(-1, 2)


def _span_codes(spans: np.ndarray, n_words: int) -> np.ndarray:
    return spans[:, 0] * (n_words + 1) + spans[:, 1]


def bio_tags(gold: np.ndarray, n_words: int) -> np.ndarray:
    """BIO tag of each of `n_words` words [W] from gold word spans [M, 2]; of overlapping spans the longest is tagged
    (nested mentions are 0.16% of Re-DocRED dev's)."""
    tags = np.full(n_words, BIO_O, dtype=np.int64)
    taken = np.zeros(n_words, dtype=bool)
    for a, b in sorted(gold.tolist(), key=lambda ab: ab[0] - ab[1]):
        if not taken[a:b].any():
            tags[a], tags[a + 1:b], taken[a:b] = BIO_B, BIO_I, True
    return tags


def entity_batch(features: Sequence[Dict[str, Any]], max_width: int) -> Dict[str, torch.Tensor]:
    """The entity heads' batch fields (all `e2e_*`): the candidate spans [C] with gold labels,
    the gold mentions [Mg] with their entities, coreference pairs [Pc] with labels and name features, entity types."""
    cols: Dict[str, List[np.ndarray]] = {k: [] for k in (
        "span_doc", "span_start", "span_end", "span_width", "span_word",
        "span_shape", "span_label", "span_flat",
        "word_doc", "word_tok", "word_shape", "word_tag", "word_cont",
        "men_doc", "men_start", "men_end", "men_entity", "pair", "pair_label", "pair_feat", "entity_type")}
    n_men = n_ent = n_words = 0
    for d, f in enumerate(features):
        ok, n = np.asarray(f["word_ok"], bool), len(f["word_ok"])
        sent = np.asarray(f["word_sent"])
        spans = candidate_spans(sent, ok, max_width)
        gold = np.asarray(f["gold_spans"], dtype=np.int64).reshape(-1, 2)
        cols["span_flat"].append(spans + n_words)
        cols["word_doc"].append(np.full(n, d))
        # a word cut off by truncation reads token 0: its tag is ignored (-100) and no candidate span reaches it
        cols["word_tok"].append(np.where(ok, np.asarray(f["word_first"]), 0))
        cols["word_shape"].append(np.asarray(f["word_shape"]))
        cols["word_tag"].append(np.where(ok, bio_tags(gold, n), -100))
        cont = np.zeros(n, dtype=bool)  # [W] the next word is in the same sentence (and both survive truncation)
        cont[:-1] = (sent[1:] == sent[:-1]) & ok[1:] & ok[:-1]
        cols["word_cont"].append(cont)
        n_words += n
        cols["span_doc"].append(np.full(len(spans), d))
        cols["span_start"].append(np.asarray(f["word_first"])[spans[:, 0]])
        cols["span_end"].append(np.asarray(f["word_last"])[spans[:, 1] - 1])
        cols["span_width"].append(spans[:, 1] - spans[:, 0])
        cols["span_word"].append(spans)
        cols["span_shape"].append(np.asarray(f["word_shape"])[np.stack([spans[:, 0], spans[:, 1] - 1], 1)])
        cols["span_label"].append(np.isin(_span_codes(spans, n), _span_codes(gold, n)).astype(np.float32))
        kept = ok[gold[:, 0]] & ok[gold[:, 1] - 1] if len(gold) else np.zeros(0, bool)
        gold, ent = gold[kept], np.asarray(f["gold_entity"], dtype=np.int64)[kept]
        cols["men_doc"].append(np.full(len(gold), d))
        cols["men_start"].append(np.asarray(f["word_first"])[gold[:, 0]])
        cols["men_end"].append(np.asarray(f["word_last"])[gold[:, 1] - 1])
        cols["men_entity"].append(ent + n_ent)
        pairs = upper_pairs(len(gold))
        cols["pair"].append(pairs + n_men)
        cols["pair_label"].append((ent[pairs[:, 0]] == ent[pairs[:, 1]]).astype(np.float32))
        cols["pair_feat"].append(pair_features([f["words"][a:b] for a, b in gold.tolist()], pairs))
        types = np.asarray(f["entity_type"], dtype=np.int64)
        cols["entity_type"].append(np.where(np.bincount(ent, minlength=len(types)) > 0, types, -1))
        n_men, n_ent = n_men + len(gold), n_ent + len(types)
    shapes = {"pair": (-1, 2), "span_word": (-1, 2), "span_shape": (-1, 2), "span_flat": (-1, 2),
              "pair_feat": (-1, NAME_FEATURES)}
    return {f"e2e_{k}": torch.from_numpy(np.concatenate(v).reshape(shapes.get(k, (-1,)))) for k, v in cols.items()}


class EntityCollator:
    """The DocRED batch plus the entity heads' fields."""

    def __init__(self, base: Any, max_width: int):
        self.base, self.max_width = base, max_width

    def __call__(self, features: Sequence[Dict[str, Any]]) -> Dict[str, torch.Tensor]:
        return {**self.base(features), **entity_batch(features, self.max_width)}


# ----------------------------------------------------------------------------- heads
class EntityHeads(nn.Module):
    """Span scorer, mention embeddings, mention-pair coreference scorer and entity typer over token states."""

    def __init__(self, hidden: int, n_types: int, max_width: int, dim: int = ENTITY_DIM,
                 span_head: str = "endpoints"):
        super().__init__()
        if span_head not in SPAN_HEADS:
            raise ValueError(f"span_head must be one of {SPAN_HEADS}, got {span_head!r}")
        self.span_head = span_head
        self.span_start = nn.Linear(hidden, dim)
        self.span_end = nn.Linear(hidden, dim, bias=False)
        self.span_width = nn.Embedding(max_width + 1, dim)
        if span_head in RICH_HEADS:
            self.span_content = nn.Linear(hidden, dim, bias=False)
            self.span_shape = nn.Embedding(2 * N_SHAPES, dim)  # the first word's shape, then the last word's
            self.span_hidden = nn.Linear(dim, dim)
        if span_head in TAGGING_HEADS:
            self.tag_word = nn.Linear(hidden, dim)
            self.tag_shape = nn.Embedding(N_SHAPES, dim)
            self.tag_hidden = nn.Linear(dim, dim)
            self.tag_out = nn.Linear(dim, 3)  # O, B, I
        self.span_out = nn.Linear(dim, 1)
        self.mention = nn.Linear(2 * hidden, dim)
        self.pair = nn.Sequential(nn.Linear(3 * dim + NAME_FEATURES, dim), nn.ReLU(), nn.Linear(dim, 1))
        self.typer = nn.Linear(dim, max(n_types, 1))
        if span_head == "bio":  # the tagger alone scores spans: the scorer's layers stay (folders hold them), frozen,
            for layer in (self.span_start, self.span_end, self.span_width, self.span_out):  # as DDP needs every
                layer.requires_grad_(False)  # trained parameter to get a gradient

    def span_logits(self, hidden: torch.Tensor, doc: torch.Tensor, start: torch.Tensor, end: torch.Tensor,
                    width: torch.Tensor, shape: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Mention logit of each span [C] from its first and last token states (`hidden` [B, L, H]) and width; the
        rich head adds the mean of its token states and the shapes [C, 2] of its first and last words."""
        # the maps are linear: each token is projected once ([B, L, dim]) and the C spans (about ten per word) gather
        x = self.span_start(hidden)[doc, start] + self.span_end(hidden)[doc, end] + self.span_width(width)  # [C, dim]
        if self.span_head in RICH_HEADS:
            if shape is None:
                raise ValueError("the rich span head needs the shapes of each span's first and last words")
            csum = nn.functional.pad(self.span_content(hidden).float().cumsum(1), (0, 0, 1, 0))  # [B, L+1, dim]
            mean = (csum[doc, end + 1] - csum[doc, start]) / (end - start + 1).unsqueeze(-1).float()  # [C, dim]
            shapes = self.span_shape(shape + shape.new_tensor([0, N_SHAPES])).sum(1)  # [C, dim]
            x = self.span_hidden(torch.relu(x + mean.to(x.dtype) + shapes))
        return self.span_out(torch.relu(x)).squeeze(-1)  # [C]

    def tag_logits(self, hidden: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """O/B/I logits of each word of the batch [W, 3] from its first token's state and its casing."""
        b = batch
        first = hidden[b["e2e_word_doc"], b["e2e_word_tok"]]  # [W, H] each word's first token
        x = torch.relu(self.tag_word(first) + self.tag_shape(b["e2e_word_shape"]))
        return self.tag_out(torch.relu(self.tag_hidden(x)))

    def mention_logits(self, hidden: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """Mention logit of each candidate span of the batch [C] (fp32): the span scorer's (`scorer_logits`), the
        bio head's (`tagging_logits`), or for rich+bio the mean of the two."""
        logits = [] if self.span_head == "bio" else [self.scorer_logits(hidden, batch)]
        if self.span_head in TAGGING_HEADS:
            logits.append(self.tagging_logits(hidden, batch))
        return logits[0] if len(logits) == 1 else (logits[0] + logits[1]) / 2

    def scorer_logits(self, hidden: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """The span scorer's logit of each candidate span of the batch [C] (fp32)."""
        b = batch
        return self.span_logits(hidden, b["e2e_span_doc"], b["e2e_span_start"], b["e2e_span_end"],
                                b["e2e_span_width"], b["e2e_span_shape"]).float()

    def tagging_logits(self, hidden: torch.Tensor, batch: Dict[str, torch.Tensor]) -> torch.Tensor:
        """log p - log(1 - p) of each candidate span [C] (fp32), p the probability that the word tags make exactly
        this span (`bio_span_logprob`)."""
        logp = self.tag_logits(hidden, batch).float().log_softmax(-1)
        logp = bio_span_logprob(logp, batch["e2e_span_flat"], batch["e2e_word_cont"]).clamp(max=-1e-6)  # p < 1
        return logp - torch.log(-torch.expm1(logp))

    def mention_embeddings(self, hidden: torch.Tensor, doc: torch.Tensor, start: torch.Tensor,
                           end: torch.Tensor) -> torch.Tensor:
        """tanh(W [h_first; h_last]) of each mention [M, dim]."""
        return torch.tanh(self.mention(torch.cat([hidden[doc, start], hidden[doc, end]], -1)))

    def pair_logits(self, men: torch.Tensor, pairs: torch.Tensor, feats: torch.Tensor) -> torch.Tensor:
        """Coreference logit of each mention pair [P] from [m_i; m_j; m_i * m_j; name features]."""
        a, b = men[pairs[:, 0]], men[pairs[:, 1]]
        return self.pair(torch.cat([a, b, a * b, feats.to(a.dtype)], -1)).squeeze(-1)

    def type_logits(self, men: torch.Tensor, men_entity: torch.Tensor, n_entities: int) -> torch.Tensor:
        """Type logits [E, T] of the mean mention embedding of each entity."""
        total = men.new_zeros(n_entities, men.shape[1]).index_add_(0, men_entity, men)
        count = torch.bincount(men_entity, minlength=n_entities).clamp(min=1).to(men.dtype)
        return self.typer(total / count[:, None])


def bio_span_logprob(logp: torch.Tensor, spans: torch.Tensor, cont: torch.Tensor) -> torch.Tensor:
    """log P(the tags make exactly span [a, b)) [C] from per-word tag log-probabilities `logp` [W, 3] (tags
    independent): B at a, I inside, and not I at b when word b continues the sentence (`cont` [W] of word b - 1)."""
    a, b = spans[:, 0], spans[:, 1]
    inside = nn.functional.pad(logp[:, BIO_I].cumsum(0), (1, 0))  # [W + 1] prefix sums of log P(I)
    after = torch.logsumexp(logp[:, :BIO_I], -1)  # [W] log P(O or B): the word does not continue a mention
    closed = torch.where(cont[b - 1], after[b.clamp(max=len(logp) - 1)], after.new_zeros(()))
    return logp[a, BIO_B] + inside[b] - inside[a + 1] + closed


# ----------------------------------------------------------------------------- training
def entity_losses(heads: EntityHeads, hidden: torch.Tensor, batch: Dict[str, torch.Tensor],
                  pos_weight: float = 1.0) -> Dict[str, Tuple[torch.Tensor, int]]:
    """{tags, mention, coref, type: (mean loss in fp32, count)}: cross-entropy over word tags (bio, rich+bio), BCE
    over candidate spans (the span scorers), BCE over gold mention pairs, cross-entropy over gold entities with a
    known type. Every term of the head is there, a term without instances as (0, 0) still attached to its layers,
    so that every process of a distributed run has the same terms and a gradient for every parameter."""
    b = batch
    out: Dict[str, Tuple[torch.Tensor, int]] = {}
    bce = nn.functional.binary_cross_entropy_with_logits
    mean = lambda total, n: (total / max(n, 1), n)  # noqa: E731  a sum over n instances, as (mean, n)
    if heads.span_head in TAGGING_HEADS:  # cross-entropy over the tags of the words that survive truncation
        tags = heads.tag_logits(hidden, b).float()  # [W, 3]
        out["tags"] = mean(nn.functional.cross_entropy(tags, b["e2e_word_tag"], ignore_index=-100, reduction="sum"),
                           int(b["e2e_word_tag"].ge(0).sum()))
    if heads.span_head != "bio":  # BCE over the candidate spans
        span = heads.scorer_logits(hidden, b)  # [C]
        weight = span.new_tensor(pos_weight) if pos_weight != 1.0 else None
        out["mention"] = mean(bce(span, b["e2e_span_label"], pos_weight=weight, reduction="sum"), len(span))
    men = heads.mention_embeddings(hidden, b["e2e_men_doc"], b["e2e_men_start"], b["e2e_men_end"])  # [Mg, dim]
    pair = heads.pair_logits(men, b["e2e_pair"], b["e2e_pair_feat"]).float()  # [Pc]
    out["coref"] = mean(bce(pair, b["e2e_pair_label"], reduction="sum"), len(pair))
    known = b["e2e_entity_type"] >= 0  # [E]
    types = heads.type_logits(men, b["e2e_men_entity"], len(b["e2e_entity_type"])).float()  # [E, T]
    out["type"] = mean(nn.functional.cross_entropy(types[known], b["e2e_entity_type"][known], reduction="sum"),
                       int(known.sum()))
    return out


def joint_loss(model: nn.Module, batch: Dict[str, torch.Tensor], labels: torch.Tensor, loss_fn: Any,
               autocast: Any, weights: Dict[str, float]) -> List[Tuple[torch.Tensor, int]]:
    """The relation loss on gold entities (and the evidence loss at `weights["evidence"]`) plus the weighted entity
    losses, from one encoder pass: the model's forward (`model` may be wrapped in DistributedDataParallel)."""
    evidence = bool(weights.get("evidence"))
    heads = getattr(model, "module", model).entity_heads
    with autocast():
        logits, sent_attn, hidden = model(**batch, return_evidence=evidence, return_hidden=True)  # [P, K+1], [B, L, H]
        terms = entity_losses(heads, hidden, batch, weights.get("mention_pos", 1.0))
    out = [(loss_fn(logits.float(), labels), len(labels))]
    if evidence:
        loss, n_positive = losses.evidence_term(sent_attn, batch["evidence_index"], labels)
        out.append((weights["evidence"] * loss, n_positive))
    return out + [(weights[k] * loss, n) for k, (loss, n) in terms.items() if weights.get(k, 0.0)]


# ----------------------------------------------------------------------------- decoding
def non_overlapping(spans: np.ndarray, prob: np.ndarray, longer_bonus: float = LONGER_SPAN_BONUS) -> np.ndarray:
    """Indices (ascending) of the spans [M, 2] greedy decoding keeps: by descending probability plus `longer_bonus`
    per word, each span that shares no word with one kept before (nested mentions are 0.16% of Re-DocRED dev's;
    this bounds mentions by words)."""
    if not len(spans):
        return np.zeros(0, dtype=np.int64)
    taken = np.zeros(int(spans[:, 1].max()), dtype=bool)
    kept = []
    for i in np.argsort(-(prob + longer_bonus * (spans[:, 1] - spans[:, 0])), kind="stable").tolist():
        a, b = spans[i]
        if not taken[a:b].any():
            taken[a:b] = True
            kept.append(i)
    return np.sort(np.asarray(kept, dtype=np.int64))


def cluster_mentions(prob: np.ndarray, threshold: float = COREF_THRESHOLD) -> np.ndarray:
    """Average-link agglomerative clustering of n mentions under pair probabilities `prob` [n, n] (symmetric):
    merge the two clusters of highest mean pair probability while it exceeds `threshold`. Cluster id per mention,
    numbered by first mention."""
    n = len(prob)
    label = np.arange(n)
    total = np.array(prob, dtype=np.float64).reshape(n, n)  # [c, c] sums of pair probabilities between clusters
    size = np.ones(n)
    alive = np.ones(n, bool)
    while alive.sum() > 1:
        mean = total / np.outer(size, size)
        mean[~alive, :] = mean[:, ~alive] = -1.0
        np.fill_diagonal(mean, -1.0)
        a, b = np.unravel_index(np.argmax(mean), mean.shape)
        if mean[a, b] <= threshold:
            break
        a, b = min(a, b), max(a, b)
        total[a] += total[b]
        total[:, a] += total[:, b]
        size[a] += size[b]
        alive[b] = False
        label[label == b] = a
    _, first = np.unique(label, return_index=True)
    order = {lab: i for i, lab in enumerate(label[np.sort(first)])}
    return np.array([order[lab] for lab in label], dtype=np.int64)


def _doc_entities(f: Dict[str, Any], spans: np.ndarray, men: torch.Tensor, heads: EntityHeads
                  ) -> Tuple[np.ndarray, np.ndarray]:
    """(cluster id of each predicted mention [M], type id of each cluster [E]) of one document."""
    pairs = upper_pairs(len(spans))
    names = [f["words"][a:b] for a, b in spans.tolist()]
    prob = np.zeros((len(spans), len(spans)))
    if len(pairs):
        feats = torch.from_numpy(pair_features(names, pairs)).to(men.device)
        p = torch.sigmoid(heads.pair_logits(men, torch.from_numpy(pairs).to(men.device), feats).float()).cpu()
        prob[pairs[:, 0], pairs[:, 1]] = prob[pairs[:, 1], pairs[:, 0]] = p.numpy()
    cluster = cluster_mentions(prob)
    types = heads.type_logits(men, torch.from_numpy(cluster).to(men.device), int(cluster.max()) + 1 if len(cluster)
                              else 0).argmax(-1).cpu().numpy()
    return cluster, types


def mention_threshold(decision: Any) -> float:
    """The mention threshold of a decision (losses.Decision): the value tuned on dev and stored with the model, or
    MENTION_THRESHOLD for a model trained without one."""
    return float((getattr(decision, "params", None) or {}).get(MENTION_KEY, MENTION_THRESHOLD))


def with_mention_threshold(decision: Any, threshold: float) -> Any:
    """`decision` with its mention threshold set to `threshold` (a new value)."""
    return decision.replace(params={**decision.params, MENTION_KEY: float(threshold)})


def at_mention_threshold(bundle: Any, threshold: Optional[float]) -> Any:
    """A model bundle (predict.ModelBundle) whose decision has the mention threshold `threshold` (None: the bundle,
    with the threshold stored with the model): the `--mention_threshold` flags."""
    if threshold is None:
        return bundle
    import dataclasses

    return dataclasses.replace(bundle, decision=with_mention_threshold(bundle.decision, threshold))


def span_probabilities(model: nn.Module, batch: Dict[str, torch.Tensor]) -> Tuple[Encoded, torch.Tensor]:
    """The encoder pass of a batch (its token states, attention rows left for `decode_batch` to ask for) and the
    mention probability of each candidate span [C] (fp32)."""
    b = batch
    enc = model.encode_states(b["input_ids"], b["attention_mask"])
    prob = torch.sigmoid(model.entity_heads.mention_logits(enc.hidden, b))
    return enc, prob


def decode_batch(model: nn.Module, batch: Dict[str, torch.Tensor], features: Sequence[Dict[str, Any]],
                 enc: Encoded, prob: torch.Tensor, threshold: float, max_entities: Optional[int] = None,
                 evidence: bool = False) -> Tuple[List[Dict[str, Any]], torch.Tensor, Optional[torch.Tensor]]:
    """Per document its predicted entities {spans [M, 2] (words), cluster [M], types [E], hts [P, 2]}, the
    relation logits [P, K+1] of all their ordered pairs, documents in order, and with `evidence` each pair's
    sentence attention [P, S] (else None), from the batch's encoder pass (`span_probabilities`): the spans of mention
    probability above `threshold` kept; a document of more than `max_entities` gets no pairs. Attention rows are
    computed for the kept spans' first tokens only."""
    heads: EntityHeads = model.entity_heads
    b, hidden = batch, enc.hidden
    keep = (prob > threshold).nonzero().squeeze(-1)  # [M] kept candidates, by document then start
    width = int(b["e2e_span_word"].max()) + 1 if len(b["e2e_span_word"]) else 1
    words = b["e2e_span_word"][keep] + b["e2e_span_doc"][keep, None] * width  # [M, 2] words unique in the batch
    keep = keep[torch.from_numpy(non_overlapping(words.cpu().numpy(), prob[keep].cpu().numpy())).to(keep.device)]
    start, doc = b["e2e_span_start"][keep], b["e2e_span_doc"][keep]  # [M] each mention's first token, document
    men_all = heads.mention_embeddings(hidden, doc, start, b["e2e_span_end"][keep])
    span_doc = doc.cpu().numpy()
    spans_all = b["e2e_span_word"][keep].cpu().numpy()  # [M, 2] document word spans
    docs, ent_offset, ment_entity, ent_doc, hts, pair_doc = [], 0, [], [], [], []
    for d, f in enumerate(features):
        rows = np.flatnonzero(span_doc == d)
        cluster, types = _doc_entities(f, spans_all[rows], men_all[rows], heads)
        n_ent = len(types)
        scored = n_ent if max_entities is None or n_ent <= max_entities else 0  # entities whose pairs are scored
        pairs = np.argwhere(~np.eye(scored, dtype=bool)).astype(np.int64).reshape(-1, 2)  # [E (E - 1), 2] h != t
        docs.append({"spans": spans_all[rows], "cluster": cluster, "types": types, "hts": pairs})
        ment_entity.append(cluster + ent_offset)
        ent_doc.append(np.full(n_ent, d))
        hts.append(pairs + ent_offset)
        pair_doc.append(np.full(len(pairs), d))
        ent_offset += n_ent
    dev = hidden.device
    as_t = lambda xs, shape=(-1,): torch.from_numpy(np.concatenate(xs).reshape(shape).astype(np.int64)).to(dev)  # noqa: E731
    out = model.score(hidden, model.mention_attention(enc, start, doc), start, doc, as_t(ment_entity),
                      as_t(ent_doc), as_t(hts, (-1, 2)), as_t(pair_doc), b["sent_pos"] if evidence else None)
    logits, sent_attn = out if evidence else (out, None)
    return docs, logits.float().cpu(), None if sent_attn is None else sent_attn.float().cpu()


def vertex_set(doc: Dict[str, Any], pred: Dict[str, Any], type_names: Sequence[str]) -> List[List[Dict[str, Any]]]:
    """DocRED's vertexSet of a document's predicted entities (mentions in document order)."""
    sent_start = np.cumsum([0] + [len(s) for s in doc["sents"]])
    words = [w for s in doc["sents"] for w in s]
    out: List[List[Dict[str, Any]]] = [[] for _ in pred["types"]]
    for (a, b), c in zip(pred["spans"].tolist(), pred["cluster"].tolist()):
        s = int(np.searchsorted(sent_start, a, "right") - 1)
        out[c].append({"name": " ".join(words[a:b]), "sent_id": s, "pos": [a - int(sent_start[s]), b - int(sent_start[s])],
                       "type": type_names[int(pred["types"][c])] if type_names else "MISC"})
    return out


def predict_documents(model: nn.Module, tokenizer: Any, settings: Any, docs: Sequence[Dict[str, Any]],
                      decision: Any, loss_fn: Any, batch_size: int = 4, max_entities: Optional[int] = None
                      ) -> List[Tuple[List[List[Dict[str, Any]]], List[Any]]]:
    """Per document (title, sents; entities ignored): (predicted vertexSet, its relations as evaluation.Relation),
    at the decision's mention threshold; a document of more than `max_entities` predicted entities gets no
    relations; `tokenizer` is the model's or its prepro.WordTokenizer."""
    import prepro
    from collate import DocRECollator

    plain = [{"title": d["title"], "sents": d["sents"], "vertexSet": []} for d in docs]
    enc = prepro.WordTokenizer.of(tokenizer)
    features = document_features(plain, enc, settings)
    pad = enc.tokenizer.pad_token_id or 0
    collate = EntityCollator(DocRECollator(settings.num_class, pad), settings.max_span_width)
    threshold = mention_threshold(decision)
    decoded = decode_features(model, features, collate, settings, decision, loss_fn, [threshold], batch_size,
                              max_entities=max_entities,
                              evidence_threshold=settings.evidence_threshold if settings.evidence else None)
    return [(vertex_set(doc, p, settings.entity_types), r) for doc, (p, r) in zip(docs, decoded[threshold])]


def document_features(docs: Sequence[Dict[str, Any]], tokenizer: Any, settings: Any) -> JoinedFeatures:
    """prepro's features of DocRED documents joined with their entity fields (prepro's reports left to the caller)."""
    import prepro

    base = prepro.features_from_documents(docs, tokenizer, settings, source="the documents", report=False)
    return JoinedFeatures(base, entity_fields(docs, tokenizer, settings))


@torch.no_grad()
def decode_features(model: nn.Module, features: Sequence[Dict[str, Any]], collate: Any, settings: Any, decision: Any,
                    loss_fn: Any, thresholds: Sequence[float], batch_size: int, dtype: Optional[torch.dtype] = None,
                    max_entities: Optional[int] = None, evidence_threshold: Optional[float] = None
                    ) -> Dict[float, List[Tuple[Dict[str, Any], List[Any]]]]:
    """Per mention threshold, each feature's predicted entities (`decode_batch`) and relations under `decision`,
    with their evidence sentences (attention above `evidence_threshold`) when it is given: one encoder pass per
    document serves every threshold."""
    import evaluation

    evidence = evidence_threshold is not None
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out: Dict[float, List[Tuple[Dict[str, Any], List[Any]]]] = {t: [] for t in thresholds}
    for i in range(0, len(features), batch_size):
        feats = [features[j] for j in range(i, min(i + batch_size, len(features)))]
        batch = {k: v.to(device) for k, v in collate(feats).items() if k != "labels"}
        with utils.autocast(device, dtype):
            encoded = span_probabilities(model, batch)
            for t in thresholds:
                preds, logits, sent_attn = decode_batch(model, batch, feats, *encoded, t, max_entities, evidence)
                hts = [{"title": f["title"], "hts": p["hts"]} for f, p in zip(feats, preds)]
                out[t] += zip(preds, evaluation.facts_of_outputs(logits, hts, decision, loss_fn, settings.id2rel,
                                                                 sent_attn, evidence_threshold))
    model.train(was_training)
    return out


# ----------------------------------------------------------------------------- the DocRED task's hooks
def task_settings(settings: Any, args: argparse.Namespace, meta: Optional[Dict[str, Any]],
                  train_path: Optional[str]) -> Any:
    """The settings with the entity heads on (--end_to_end, or a checkpoint that has them): no entity marker, the
    type labels of the checkpoint or of the training file, the span width."""
    saved = (meta or {}).get("settings") or {}
    if not (getattr(args, "end_to_end", False) or saved.get("end_to_end")):
        return settings
    types = list(saved.get("entity_types") or [])
    if not types and train_path:
        types = entity_types_of(utils.read_json(train_path, "--train_file"))
    if saved.get("end_to_end"):  # the heads the checkpoint has (folders from before --span_head: the first head)
        head, width = saved.get("span_head", "endpoints"), int(saved.get("max_span_width", args.max_span_width))
    else:  # new heads, on a relation model trained without them when fine-tuning one
        head, width = getattr(args, "span_head", DEFAULT_SPAN_HEAD), args.max_span_width
    return settings.replace(end_to_end=True, entity_marker=None, entity_types=types, max_span_width=width,
                            span_head=head)


def loss_weights(args: argparse.Namespace) -> Dict[str, float]:
    """{tags, mention, coref, type: weight, mention_pos: the gold spans' weight in the span BCE, evidence: the
    evidence loss's} of the flags (the word tags and the span scorer are both the mention loss)."""
    return {"tags": args.mention_weight, "mention": args.mention_weight, "coref": args.coref_weight,
            "type": args.type_weight, "mention_pos": getattr(args, "mention_pos_weight", 1.0),
            "evidence": getattr(args, "evidence_lambda", 0.0)}


# ----------------------------------------------------------------------------- output objects (predict.py)
def token_offsets(doc: Dict[str, Any]) -> List[List[Tuple[int, int]]]:
    """[start, end) characters of each token of a converted document in its `text` (tokens are found in order
    from their sentence's start; a token not found verbatim keeps the position reached)."""
    text, out = doc["text"], []
    for sent, (pos, _) in zip(doc["sents"], doc["sent_spans"]):
        row = []
        for word in sent:
            at = text.find(word, pos)
            at = pos if at < 0 else at
            row.append((at, at + len(word)))
            pos = at + len(word)
        out.append(row)
    return out


def output_objects(bundle: Any, docs: Sequence[Dict[str, Any]], rel_names: Dict[str, str],
                   batch_size: int, max_entities: Optional[int] = None) -> List[Dict[str, Any]]:
    """predict.py's output objects of converted documents, their entities and relations predicted by the model in
    one encoder pass per document (the documents' own entities are ignored); a document of more than `max_entities`
    predicted entities keeps them, without relations (a warning names it)."""
    import predict
    import prepro

    pre = bundle.pretrained
    preds = predict_documents(pre.model, bundle.tokenizer, bundle.settings, docs, bundle.decision, bundle.loss_fn,
                              batch_size, max_entities)
    out = []
    for doc, (vs, rels) in zip(docs, preds):
        over = prepro.entity_cap_problem(len(vs), max_entities)
        if over:
            logger.warning("document %r: the model found %s: its pairs are not scored (raise --max_entities to "
                           "score them)", doc["title"], over)
        offsets, text = token_offsets(doc), doc["text"]
        spans = [[(offsets[m["sent_id"]][m["pos"][0]][0], offsets[m["sent_id"]][m["pos"][1] - 1][1]) for m in ent]
                 for ent in vs]
        vs = [[dict(m, char_start=a, char_end=b, name=text[a:b]) for m, (a, b) in zip(ent, sp)]
              for ent, sp in zip(vs, spans)]
        out.append(predict.assemble_output({**doc, "vertexSet": vs}, rels, rel_names))
    return out
