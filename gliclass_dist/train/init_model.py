"""A new GLiClass model from a plain encoder checkpoint (BERT, DeBERTa, ModernBERT, ...).

``init_from_encoder`` builds the ``GLiClassConfig`` from the encoder's own config, extends the
tokenizer with ``<<LABEL>>``, ``<<SEP>>`` and ``<<EXAMPLE>>``, resizes the embeddings and loads the
encoder's pretrained weights. Two ways to start the heads:

- ``head_init="similarity"`` (default): the model starts as an embedding-similarity classifier.
  Labels go first (``prompt_first``), the text is mean-pooled over its own tokens
  (``extract_text_features`` + ``avg``), each label is the mean of its ``<<LABEL>>name`` span
  (``class_token_pooling="average"``), both projectors are initialised to the exact identity,
  features are L2-normalised and the logit is ``logit_scale * cosine``. So before any training the
  model already ranks labels by how close the label name's contextual embedding is to the text's,
  and fine-tuning starts with a useful gradient for every label instead of from a saddle point.
  Every one of these is a published config field: the checkpoint loads in the reference package too.
- ``head_init="random"``: the reference recipe (``first`` pooling, normal(0, initializer_range)
  projector weights). The logit is then a product of two tiny random projections, so it and its
  gradient start near zero; few-shot training often sits on that plateau (see bench/README.md).

The identity projector: with hidden size ``2 * D``, ``linear_1 = [I; -I]`` and ``linear_2 = [I, -I]``
give ``GELU(x) - GELU(-x) = x * (Phi(x) + Phi(-x)) = x`` exactly.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerBase

from gliclass_dist.model.config import EXAMPLE_TOKEN, LABEL_TOKEN, SEP_TOKEN, GLiClassConfig
from gliclass_dist.model.modeling import FeaturesProjector, GLiClassModel

logger = logging.getLogger(__name__)

HeadInit = Literal["similarity", "random"]

SIMILARITY_DEFAULTS: dict[str, Any] = {
    "prompt_first": True,
    "extract_text_features": True,
    "pooling_strategy": "avg",
    "class_token_pooling": "average",
    "embed_class_token": True,
    "normalize_features": True,
    "scorer_type": "simple",
    "logit_scale_init_value": 10.0,
    "problem_type": "multi_label_classification",
}
RANDOM_DEFAULTS: dict[str, Any] = {"problem_type": "multi_label_classification"}


def load_encoder_tokenizer(encoder_path_or_id: str | os.PathLike[str], model_type: str) -> PreTrainedTokenizerBase:
    kwargs: dict[str, Any] = {}
    if model_type == "modernbert":
        kwargs["add_prefix_space"] = True
    return AutoTokenizer.from_pretrained(str(encoder_path_or_id), **kwargs)


def add_label_tokens(tokenizer: PreTrainedTokenizerBase) -> dict[str, int]:
    """Add ``<<LABEL>>``, ``<<SEP>>``, ``<<EXAMPLE>>`` as special tokens (idempotent); return their ids."""
    vocab = tokenizer.get_vocab()
    missing = [t for t in (LABEL_TOKEN, SEP_TOKEN, EXAMPLE_TOKEN) if t not in vocab]
    if missing:
        try:
            tokenizer.add_special_tokens({"additional_special_tokens": missing}, replace_extra_special_tokens=False)
        except TypeError:  # older transformers: no such switch (and nothing is replaced)
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
    return {t: tokenizer.convert_tokens_to_ids(t) for t in (LABEL_TOKEN, SEP_TOKEN, EXAMPLE_TOKEN)}


def init_from_encoder(
    encoder_path_or_id: str | os.PathLike[str],
    head_init: HeadInit = "similarity",
    seed: int = 0,
    **config: Any,
) -> tuple[GLiClassModel, PreTrainedTokenizerBase]:
    """A GLiClass uni-encoder model on a pretrained encoder, plus its extended tokenizer.

    ``config`` overrides any ``GLiClassConfig`` field (e.g. ``logit_scale_init_value=20``,
    ``problem_type="single_label_classification"``).
    """
    if head_init not in ("similarity", "random"):
        raise ValueError(f"head_init must be 'similarity' or 'random', got {head_init!r}")
    ref = str(encoder_path_or_id)
    encoder_config = AutoConfig.from_pretrained(ref)
    if getattr(encoder_config, "model_type", None) == "GLiClass":
        raise ValueError(f"{ref} is already a GLiClass checkpoint; load it with load_model instead")
    tokenizer = load_encoder_tokenizer(ref, encoder_config.model_type)
    ids = add_label_tokens(tokenizer)
    vocab_size = len(tokenizer)
    encoder_config.vocab_size = vocab_size
    settings = dict(SIMILARITY_DEFAULTS if head_init == "similarity" else RANDOM_DEFAULTS)
    if head_init == "similarity":
        settings["hidden_size"] = 2 * encoder_config.hidden_size
    settings.update(config)
    encoder_name = settings.pop("encoder_model", None) or (Path(ref).name if Path(ref).exists() else ref)
    gl_config = GLiClassConfig(
        encoder_config=encoder_config.to_dict(),
        encoder_model=encoder_name,
        class_token_index=ids[LABEL_TOKEN],
        text_token_index=ids[SEP_TOKEN],
        example_token_index=ids[EXAMPLE_TOKEN],
        vocab_size=vocab_size,
        **settings,
    )
    torch.manual_seed(seed)
    model = GLiClassModel(gl_config)
    encoder = AutoModel.from_pretrained(ref)
    encoder.resize_token_embeddings(vocab_size)
    _init_new_token_embeddings(encoder, tokenizer, list(ids.values()))
    result = model.model.encoder_model.load_state_dict(encoder.state_dict(), strict=False)
    if result.missing_keys:
        raise ValueError(f"{ref}: encoder weights missing for {result.missing_keys[:5]}")
    if head_init == "similarity":
        init_identity_projector(model.model.text_projector)
        init_identity_projector(model.model.classes_projector)
    model.eval()
    logger.info(
        "initialised GLiClass (%s heads) on %s: vocab %d, label token %d", head_init, ref, vocab_size, ids[LABEL_TOKEN]
    )
    return model, tokenizer


def _init_new_token_embeddings(encoder: nn.Module, tokenizer: PreTrainedTokenizerBase, new_ids: list[int]) -> None:
    """Start the marker tokens at the embedding of the tokenizer's separator token (a neutral, trained token)."""
    embeddings = encoder.get_input_embeddings().weight
    anchor = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.cls_token_id
    if anchor is None:
        return
    with torch.no_grad():
        for token_id in new_ids:
            embeddings[token_id].copy_(embeddings[anchor])


def init_identity_projector(projector: FeaturesProjector) -> None:
    """Make ``linear_2(GELU(linear_1(x)))`` exactly ``x`` (needs inner size ``2 * D``)."""
    dim = projector.linear_1.in_features
    if projector.linear_1.out_features != 2 * dim:
        raise ValueError(f"an identity projector needs hidden_size = 2 * {dim}, got {projector.linear_1.out_features}")
    eye = torch.eye(dim)
    with torch.no_grad():
        projector.linear_1.weight.copy_(torch.cat([eye, -eye], dim=0))
        projector.linear_1.bias.zero_()
        projector.linear_2.weight.copy_(torch.cat([eye, -eye], dim=1))
        projector.linear_2.bias.zero_()
    if not isinstance(projector.act, nn.GELU) and type(projector.act).__name__ not in ("GELUActivation",):
        logger.warning("identity projector init assumes GELU; activation is %s", type(projector.act).__name__)
