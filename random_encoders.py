"""Randomly initialised encoders of published shapes, with tokenizers trained on the fly.

Tests and benchmarks use them to exercise the BERT, RoBERTa and DeBERTa code paths, and to
measure speed and memory at real model sizes, without downloading any weights.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Iterable, Optional, Tuple

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (AutoModel, BertConfig, DebertaV2Config, PreTrainedModel, PreTrainedTokenizerBase,
                          PreTrainedTokenizerFast, RobertaConfig)

# family, hidden, layers, heads, intermediate; shapes of the published checkpoints
ENCODER_SHAPES: Dict[str, Tuple[str, int, int, int, int]] = {
    "tiny-bert": ("bert", 32, 2, 4, 64),
    "tiny-roberta": ("roberta", 32, 2, 4, 64),
    "tiny-deberta": ("deberta", 32, 2, 4, 64),
    "bert-base": ("bert", 768, 12, 12, 3072),
    "roberta-base": ("roberta", 768, 12, 12, 3072),
    "roberta-large": ("roberta", 1024, 24, 16, 4096),
    "deberta-v3-base": ("deberta", 768, 12, 12, 3072),
    "deberta-v3-large": ("deberta", 1024, 24, 16, 4096),
}

_FALLBACK_TEXT = (
    "the of and in to a was is for as on by with he at from his an were are which this "
    "born located country city river member founded capital author director * Paris France "
    "London England Alice Bob company university film album band season league"
).split()


def _cls_sep_tokenizer(tok):
    """A trained `tokenizers` model wrapped as a fast tokenizer with BERT's [CLS] ... [SEP] specials."""
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls), ("[SEP]", sep)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]", model_max_length=512)


def train_tokenizer(family: str, texts: Optional[Iterable[str]] = None,
                    vocab_size: int = 1000) -> PreTrainedTokenizerBase:
    """Train a small tokenizer of the family's kind (WordPiece, byte-level BPE, or Unigram)."""
    texts = list(texts) if texts is not None else [" ".join(_FALLBACK_TEXT)] * 4
    if family == "bert":
        specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=vocab_size, special_tokens=specials))
        return _cls_sep_tokenizer(tok)
    if family == "roberta":
        specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]
        tok = Tokenizer(models.BPE(unk_token="<unk>"))
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        tok.train_from_iterator(texts, trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        tok.post_processor = processors.RobertaProcessing(("</s>", tok.token_to_id("</s>")),
                                                          ("<s>", tok.token_to_id("<s>")))
        return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", sep_token="</s>",
                                       cls_token="<s>", unk_token="<unk>", pad_token="<pad>", mask_token="<mask>",
                                       model_max_length=512)
    if family == "deberta":
        specials = ["[PAD]", "[CLS]", "[SEP]", "[UNK]", "[MASK]"]
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace()
        tok.decoder = decoders.Metaspace()
        tok.train_from_iterator(texts, trainers.UnigramTrainer(
            vocab_size=vocab_size, special_tokens=specials, unk_token="[UNK]"))
        return _cls_sep_tokenizer(tok)
    raise ValueError(f"unknown encoder family {family!r}; expected bert, roberta or deberta")


def build_random_encoder(shape: str, vocab_size: int, pad_token_id: int = 0,
                         max_position_embeddings: int = 512, dropout: float = 0.0) -> PreTrainedModel:
    """A randomly initialised encoder of a shape from ENCODER_SHAPES (dropout off unless asked: tests compare
    outputs; the published checkpoints train with 0.1)."""
    if shape not in ENCODER_SHAPES:
        raise ValueError(f"unknown encoder shape {shape!r}; choose from {sorted(ENCODER_SHAPES)}")
    family, hidden, layers, heads, inter = ENCODER_SHAPES[shape]
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=inter, pad_token_id=pad_token_id, hidden_dropout_prob=dropout,
                  attention_probs_dropout_prob=dropout)
    if family == "bert":
        config = BertConfig(max_position_embeddings=max_position_embeddings, **common)
    elif family == "roberta":
        # RoBERTa offsets positions by pad_token_id + 1
        config = RobertaConfig(max_position_embeddings=max_position_embeddings + pad_token_id + 1, **common)
    else:
        config = DebertaV2Config(max_position_embeddings=max_position_embeddings, relative_attention=True,
                                 position_buckets=256, pos_att_type=["p2c", "c2p"], max_relative_positions=-1,
                                 position_biased_input=False, norm_rel_ebd="layer_norm", share_att_key=True, **common)
    return AutoModel.from_config(config)


def make_random_encoder(shape: str, texts: Optional[Iterable[str]] = None,
                        vocab_size: int = 1000) -> Tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """A (model, tokenizer) pair for `shape`, the tokenizer trained on `texts`."""
    tokenizer = train_tokenizer(ENCODER_SHAPES[shape][0], texts, vocab_size)
    model = build_random_encoder(shape, len(tokenizer), pad_token_id=tokenizer.pad_token_id)
    return model, tokenizer


def save_random_encoder(out_dir: str | Path, shape: str, texts: Optional[Iterable[str]] = None,
                        vocab_size: int = 1000, seed: int = 0) -> str:
    """Write a random encoder and its tokenizer to `out_dir`, loadable with `from_pretrained`."""
    import torch

    torch.manual_seed(seed)
    model, tokenizer = make_random_encoder(shape, texts, vocab_size)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return str(out_dir)
