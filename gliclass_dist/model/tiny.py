"""Tiny, real GLiClass checkpoints built on the spot (tests, examples, benchmarks of the plumbing).

The tokenizer's vocabulary is built here from a small built-in corpus (the same in every process), the
label tokens are added as special tokens, and a 2-layer BERT or DeBERTa-v2 backbone of hidden size 32 is
wrapped in a GLiClass model with random weights. The result is saved in the published layout (~200 KB) and
loads through the same path as a released checkpoint.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors
from transformers import BertConfig, DebertaV2Config, PreTrainedTokenizerFast

from gliclass_dist.model.config import SPECIAL_TOKENS, GLiClassConfig
from gliclass_dist.model.loading import save_pretrained
from gliclass_dist.model.modeling import GLiClassModel

CORPUS = [
    "The central bank raised interest rates to fight inflation in the economy.",
    "Shares of the technology company rose after strong quarterly earnings.",
    "The football club won the league after a dramatic final match.",
    "The tennis champion lost in the semi final of the open tournament.",
    "Parliament voted on the new election law and the prime minister spoke.",
    "The government announced a budget with new taxes and public spending.",
    "A new smartphone with a faster chip and better camera was released.",
    "Researchers trained a neural network to translate languages and speech.",
    "The film won best picture and the actress thanked the director.",
    "The band released a new album and will tour in the summer.",
    "My order never arrived and the refund for billing is still missing.",
    "The customer support agent fixed my login problem quickly, thank you.",
    "Business sport politics tech entertainment health science travel food weather.",
    "Complaint about billing, praise for delivery, question about the account.",
]


def train_tokenizer(
    kind: Literal["wordpiece", "unigram"] = "wordpiece", vocab_size: int = 400, texts: Sequence[str] = CORPUS
) -> PreTrainedTokenizerFast:
    """A small fast tokenizer with [CLS]/[SEP]/[PAD]/[UNK]/[MASK] and the GLiClass tokens added last.

    The vocabulary is built from ``texts`` the same way in every process: the special tokens, every character
    (and its ``##`` continuation for WordPiece), then the most frequent words whole (ties in alphabetical order)
    up to ``vocab_size``. The ``tokenizers`` trainers break ties differently from one process to the next, which
    made every tiny model, and the tests on it, differ from run to run.
    """
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    if kind == "wordpiece":
        normalizer, splitter = normalizers.BertNormalizer(lowercase=True), pre_tokenizers.BertPreTokenizer()
    elif kind == "unigram":  # sentencepiece-style, like DeBERTa-v3
        normalizer = normalizers.NFKC()
        splitter = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
    else:
        raise ValueError(f"kind must be 'wordpiece' or 'unigram', got {kind!r}")
    counts = Counter(w for text in texts for w, _ in splitter.pre_tokenize_str(normalizer.normalize_str(text)))
    chars = Counter(c for word, n in counts.items() for c in word * n)
    ranked = sorted(counts, key=lambda word: (-counts[word], word))
    if kind == "wordpiece":
        pieces = list(dict.fromkeys([*specials, *sorted(chars), *(f"##{c}" for c in sorted(chars))]))
        known = set(pieces)
        pieces += [w for w in ranked if w not in known][: max(vocab_size - len(pieces), 0)]
        tok = Tokenizer(models.WordPiece({piece: i for i, piece in enumerate(pieces)}, unk_token="[UNK]"))
        tok.decoder = decoders.WordPiece()
    else:
        # log-frequency scores; a character costs more than any word, so the whole word wins where it is known
        total_words, total_chars = sum(counts.values()), sum(chars.values())
        floor = math.log(1 / total_words) - 1.0
        scored = [(piece, 0.0) for piece in specials]
        scored += [(c, floor + math.log(chars[c] / total_chars)) for c in sorted(chars)]
        known = {piece for piece, _ in scored}
        words = [w for w in ranked if w not in known][: max(vocab_size - len(scored), 0)]
        scored += [(w, math.log(counts[w] / total_words)) for w in words]
        tok = Tokenizer(models.Unigram(scored, unk_id=specials.index("[UNK]")))
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
    tok.normalizer, tok.pre_tokenizer = normalizer, splitter
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B [SEP]", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
    )
    fast.add_special_tokens({"additional_special_tokens": list(SPECIAL_TOKENS)})
    return fast


def tiny_encoder_config(backbone: str, vocab_size: int, hidden: int = 32, layers: int = 2) -> dict[str, Any]:
    common = dict(
        vocab_size=vocab_size,
        hidden_size=hidden,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=hidden * 2,
        max_position_embeddings=512,
        pad_token_id=0,
    )
    if backbone == "bert":
        return BertConfig(**common).to_dict()
    if backbone == "deberta-v2":
        return DebertaV2Config(
            **common,
            relative_attention=True,
            position_biased_input=False,
            pos_att_type=["p2c", "c2p"],
            max_relative_positions=-1,
            position_buckets=64,
            type_vocab_size=0,
        ).to_dict()
    raise ValueError(f"backbone must be 'bert' or 'deberta-v2', got {backbone!r}")


def build_tiny_model(
    backbone: str = "bert", tokenizer_kind: str | None = None, seed: int = 0, **config: Any
) -> tuple[GLiClassModel, PreTrainedTokenizerFast]:
    """A random-weight GLiClass model and its tokenizer (nothing written)."""
    tokenizer = train_tokenizer(tokenizer_kind or ("unigram" if backbone == "deberta-v2" else "wordpiece"))
    vocab = tokenizer.get_vocab()
    hidden = int(config.pop("hidden", 32))
    layers = int(config.pop("layers", 2))
    base_vocab = len(tokenizer)
    cfg = GLiClassConfig(
        encoder_config=tiny_encoder_config(backbone, base_vocab, hidden, layers),
        class_token_index=vocab["<<LABEL>>"],
        text_token_index=vocab["<<SEP>>"],
        example_token_index=vocab["<<EXAMPLE>>"],
        vocab_size=base_vocab,
        **{"initializer_range": 0.3, **config},
    )
    torch.manual_seed(seed)
    model = GLiClassModel(cfg)
    model.eval()
    _unsaturate(model, tokenizer)
    return model, tokenizer


def _unsaturate(model: GLiClassModel, tokenizer: PreTrainedTokenizerFast, limit: float = 4.0) -> None:
    """Shrink the projectors' output layers until probe logits are within +-limit (scores stay informative)."""
    probe = tokenizer(["The bank raised rates<<LABEL>>business<<LABEL>>sport<<SEP>>"], return_tensors="pt")
    with torch.no_grad():
        for _ in range(40):
            if model(probe["input_ids"], probe["attention_mask"]).logits.abs().max() < limit:
                break
            for layer in (model.model.text_projector.linear_2, model.model.classes_projector.linear_2):
                layer.weight.mul_(0.6)
                layer.bias.mul_(0.6)


def build_tiny_checkpoint(
    path: str | os.PathLike[str], backbone: str = "bert", seed: int = 0, **config: Any
) -> Path:
    """Write a tiny real GLiClass checkpoint to ``path`` and return it."""
    model, tokenizer = build_tiny_model(backbone, seed=seed, **config)
    return save_pretrained(model, path, tokenizer)
