"""Tiny, real bi-encoder checkpoints built on the spot (tests, benchmarks of the plumbing).

Like ``gliclass_dist.model.tiny``: a tokenizer trained here (with the GLiClass markers, so a
``bi-encoder-fused`` can read them without resizing), small BERT backbones with random weights for the
text and the label encoder, saved in the published layout with the label tokenizer inside the folder.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

from gliclass_dist.model.bi_encoder import GLiClassBiEncoderModel
from gliclass_dist.model.config import GLiClassConfig
from gliclass_dist.model.loading import save_pretrained
from gliclass_dist.model.tiny import tiny_encoder_config, train_tokenizer


def build_bi_encoder(
    tokenizer: PreTrainedTokenizerBase,
    encoder_config: dict[str, Any],
    label_model_config: dict[str, Any],
    architecture: str = "bi-encoder",
    seed: int = 0,
    **config: Any,
) -> GLiClassBiEncoderModel:
    """A random-weight bi-encoder over the given backbone configs (the tokenizer's markers as token ids)."""
    vocab = tokenizer.get_vocab()
    cfg = GLiClassConfig(
        encoder_config=encoder_config,
        label_model_config=label_model_config,
        architecture_type=architecture,
        class_token_index=vocab.get("<<LABEL>>", -1),
        text_token_index=vocab.get("<<SEP>>", -1),
        example_token_index=vocab.get("<<EXAMPLE>>", -1),
        vocab_size=encoder_config["vocab_size"],
        **{"initializer_range": 0.3, **config},
    )
    torch.manual_seed(seed)
    model = GLiClassBiEncoderModel(cfg)
    return model.eval()


def build_tiny_bi_encoder_checkpoint(
    path: str | os.PathLike[str], architecture: str = "bi-encoder", seed: int = 0, label_hidden: int = 24, **config: Any
) -> Path:
    """Write a tiny bi-encoder checkpoint (text BERT 32 hidden, label BERT ``label_hidden``) to ``path``."""
    tokenizer = train_tokenizer("wordpiece")
    model = build_bi_encoder(
        tokenizer,
        tiny_encoder_config("bert", len(tokenizer)),
        tiny_encoder_config("bert", len(tokenizer), hidden=label_hidden),
        architecture,
        seed,
        **config,
    )
    with torch.no_grad():  # keep logits unsaturated so that scores stay informative
        for layer in (model.model.text_projector.linear_2, model.model.classes_projector.linear_2):
            layer.weight.mul_(0.05)
    return save_pretrained(model, path, tokenizer, label_tokenizer=tokenizer)
