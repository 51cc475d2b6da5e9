"""Loading and saving checkpoints in the published layout.

A checkpoint folder holds ``config.json``, ``model.safetensors`` (or a sharded index; older ones
``pytorch_model.bin``, loaded only with ``allow_pickle=True`` and ``weights_only=True``) and the
tokenizer files. Everything is checked at load time, so a broken checkpoint fails before any
batch is processed, with a message that says what is wrong.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoTokenizer, PreTrainedTokenizerBase, PreTrainedTokenizerFast

from gliclass_dist.model.bi_encoder import GLiClassBiEncoderModel
from gliclass_dist.model.bi_inputs import BiEncoderInputBuilder
from gliclass_dist.model.config import (
    BI_ENCODER_ARCHITECTURES,
    EXAMPLE_TOKEN,
    LABEL_TOKEN,
    SEP_TOKEN,
    GLiClassConfig,
)
from gliclass_dist.model.decoder import DecoderKVInputBuilder, GLiClassDecoderKVModel
from gliclass_dist.model.inputs import InputBuilder
from gliclass_dist.model.modeling import GLiClassModel

logger = logging.getLogger(__name__)

IGNORED_UNEXPECTED = ("position_embeddings", "position_ids")
GENERIC_TOKENIZER_CLASSES = ("TokenizersBackend", "PreTrainedTokenizerFast")
LABEL_TOKENIZER_DIR = "label_tokenizer"  # a bi-encoder's label tokenizer, saved inside the checkpoint folder

AnyModel = GLiClassModel | GLiClassBiEncoderModel | GLiClassDecoderKVModel
AnyInputBuilder = InputBuilder | BiEncoderInputBuilder | DecoderKVInputBuilder


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the file and the problem."""


def resolve_model_ref(ref: str | os.PathLike[str], revision: str | None = None) -> Path:
    """A local checkpoint folder, or a hub id downloaded (once, into the hub cache) via huggingface_hub."""
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise CheckpointError(f"model {str(ref)!r} is a file; point at the checkpoint folder")
        return path
    text = str(ref)
    if text.startswith((".", "/", "~")) or text.count("/") != 1:
        raise CheckpointError(f"model folder {text!r} does not exist")
    from huggingface_hub import snapshot_download

    try:
        return Path(
            snapshot_download(
                text,
                revision=revision,
                allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt"],
            )
        )
    except Exception as exc:  # offline, unknown repo, auth: all end the same way for the user
        raise CheckpointError(
            f"could not fetch {text!r} from the Hugging Face hub ({type(exc).__name__}: {exc}). "
            "Without hub access, download the checkpoint elsewhere and point --model at the local folder "
            "(config.json + model.safetensors + tokenizer files), or build the offline demo model with `make model`."
        ) from None


def load_config(path: Path) -> GLiClassConfig:
    config_file = path / "config.json"
    if not config_file.exists():
        raise CheckpointError(f"{path}: config.json is missing")
    try:
        raw = json.loads(config_file.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{config_file}: not valid JSON ({exc})") from None
    if raw.get("model_type") not in ("GLiClass", None):
        raise CheckpointError(f"{config_file}: model_type is {raw.get('model_type')!r}, expected 'GLiClass'")
    fields = {k: v for k, v in raw.items() if k not in ("model_type", "transformers_version")}
    try:
        config = GLiClassConfig(**fields)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{config_file}: {exc}") from None
    try:
        config.check_supported()
    except (ValueError, NotImplementedError) as exc:
        raise CheckpointError(f"{config_file}: {exc}") from None
    return config


def _read_state_dict(path: Path, allow_pickle: bool) -> dict[str, torch.Tensor]:
    single = path / "model.safetensors"
    index = path / "model.safetensors.index.json"
    try:
        if single.exists():
            return load_file(str(single))
        if index.exists():
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                state.update(load_file(str(path / shard)))
            return state
    except (SafetensorError, OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"{path}: the safetensors weights are truncated or corrupt ({exc})") from None
    pickle_file = path / "pytorch_model.bin"
    if pickle_file.exists():
        if not allow_pickle:
            raise CheckpointError(
                f"{path}: only pytorch_model.bin (a pickle file) is present; pass allow_pickle=True "
                "(--allow-pickle) to load it with torch.load(weights_only=True), or convert it to safetensors"
            )
        try:
            return torch.load(str(pickle_file), map_location="cpu", weights_only=True)
        except Exception as exc:
            raise CheckpointError(f"{pickle_file}: cannot be loaded ({exc})") from None
    raise CheckpointError(f"{path}: no weights found (model.safetensors is missing)")


def build_model(config: GLiClassConfig) -> AnyModel:
    """The network for ``config.architecture_type``, with random weights."""
    if config.architecture_type in BI_ENCODER_ARCHITECTURES:
        return GLiClassBiEncoderModel(config)
    if config.architecture_type == "decoder-kv":
        return GLiClassDecoderKVModel(config)
    return GLiClassModel(config)


def load_model(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> AnyModel:
    """Build the network from ``config.json`` and load its weights (CPU, float32, eval mode)."""
    path = Path(path)
    config = load_config(path)
    state = _read_state_dict(path, allow_pickle)
    try:
        model = build_model(config)
    except (ValueError, NotImplementedError) as exc:
        raise CheckpointError(f"{path / 'config.json'}: {exc}") from None
    expected = model.state_dict()
    for key, tensor in state.items():
        if key in expected and expected[key].shape != tensor.shape:
            raise CheckpointError(
                f"{path}: weight {key} has shape {tuple(tensor.shape)}, the config implies "
                f"{tuple(expected[key].shape)} (does config.json belong to these weights?)"
            )
    result = model.load_state_dict(state, strict=False)
    unexpected = [k for k in result.unexpected_keys if not any(s in k for s in IGNORED_UNEXPECTED)]
    if result.missing_keys:
        raise CheckpointError(f"{path}: weights missing from the checkpoint: {result.missing_keys[:8]}")
    if unexpected:
        logger.warning("%s: ignoring %d unexpected weights, e.g. %s", path, len(unexpected), unexpected[:3])
    check_finite_weights(model, path)
    model.eval()
    return model


def check_finite_weights(model: torch.nn.Module, path: str | os.PathLike[str]) -> None:
    """Refuse a model with a NaN or infinite value in any floating-point weight or buffer, naming the tensor.

    Such a checkpoint would load and score every row NaN; better to fail before the first batch.
    """
    for key, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(
                f"{path}: weight {key} has {bad} non-finite value(s) (NaN or inf) of {tensor.numel()}; "
                "the checkpoint is corrupt or was saved after training diverged"
            )


def saved_tokenizer_class(path: str | os.PathLike[str]) -> str | None:
    """``tokenizer_class`` of the folder's ``tokenizer_config.json`` (None if absent or unreadable)."""
    try:
        return json.loads((Path(path) / "tokenizer_config.json").read_text()).get("tokenizer_class")
    except (OSError, ValueError, AttributeError):
        return None


def auto_tokenizer(path: str | os.PathLike[str], encoder_config: Any, what: str = "the tokenizer") -> PreTrainedTokenizerBase:
    """``AutoTokenizer`` for a backbone; a failure is a ``CheckpointError`` naming the folder."""
    # the encoder's config tells AutoTokenizer the tokenizer class without reading our config.json (whose
    # model_type transformers does not know, and would warn about)
    kwargs: dict[str, Any] = {"config": encoder_config}
    if encoder_config.model_type == "modernbert":
        kwargs["add_prefix_space"] = True
    loader: Any = AutoTokenizer
    if saved_tokenizer_class(path) in GENERIC_TOKENIZER_CLASSES:
        # a plain tokenizer.json: the backbone's config must not pick its own tokenizer class for it (a
        # WordPiece tokenizer saved beside a Qwen2 config would be read as byte-level BPE)
        loader, kwargs = PreTrainedTokenizerFast, {k: v for k, v in kwargs.items() if k != "config"}
    try:
        return loader.from_pretrained(str(path), **kwargs)
    except Exception as exc:
        raise CheckpointError(f"{path}: {what} cannot be loaded ({type(exc).__name__}: {exc})") from None


def load_tokenizer(path: str | os.PathLike[str], config: GLiClassConfig) -> PreTrainedTokenizerBase:
    """Load the checkpoint's (text) tokenizer and check that it carries the marker tokens the model reads.

    A uni-encoder reads ``<<LABEL>>`` and ``<<SEP>>``; a ``bi-encoder-fused`` reads ``<<LABEL>>``; a plain
    ``bi-encoder`` reads none (its text input has no markers).
    """
    path = Path(path)
    tokenizer = auto_tokenizer(path, config.encoder_config)
    # the engine truncates texts itself: transformers' one-time "sequence length is longer than the specified
    # maximum" warning would only mislead, so it is marked as already given
    tokenizer.deprecation_warnings["sequence-length-is-longer-than-the-specified-maximum"] = True
    vocab = tokenizer.get_vocab()
    needed = {
        "bi-encoder": (),
        "bi-encoder-fused": ((LABEL_TOKEN, config.class_token_index),),
        "decoder-kv": ((LABEL_TOKEN, config.class_token_index), (SEP_TOKEN, getattr(config, "sep_token_index", None))),
    }.get(config.architecture_type, ((LABEL_TOKEN, config.class_token_index), (SEP_TOKEN, config.text_token_index)))
    for token, expected in needed:
        found = vocab.get(token)
        if found is None:
            raise CheckpointError(f"{path}: the tokenizer lacks the {token} token the model needs")
        if found != expected:
            raise CheckpointError(
                f"{path}: the tokenizer maps {token} to id {found} but config.json expects {expected}"
            )
    if needed and EXAMPLE_TOKEN in vocab and vocab[EXAMPLE_TOKEN] != config.example_token_index:
        logger.warning("%s: %s has id %d, config says %d", path, EXAMPLE_TOKEN, vocab[EXAMPLE_TOKEN], config.example_token_index)
    return tokenizer


def load_label_tokenizer(path: str | os.PathLike[str], config: GLiClassConfig) -> PreTrainedTokenizerBase:
    """A bi-encoder's label tokenizer: ``<checkpoint>/label_tokenizer/`` if present, else ``label_model_name``.

    The reference loads it from ``label_model_name`` (a hub id or a folder); our ``save_pretrained`` also
    writes it into the checkpoint, so a saved checkpoint is self-contained offline.
    """
    inside = Path(path) / LABEL_TOKENIZER_DIR
    if inside.is_dir():
        return auto_tokenizer(inside, config.label_model_config, "the label tokenizer")
    name = config.label_model_name
    if not name:
        raise CheckpointError(
            f"{path}: a {config.architecture_type} checkpoint needs a label tokenizer: neither a "
            f"{LABEL_TOKENIZER_DIR}/ folder nor label_model_name in config.json"
        )
    try:
        source = resolve_model_ref(name)
    except CheckpointError as exc:
        raise CheckpointError(
            f"{path}: the label tokenizer (label_model_name {name!r}) cannot be found: {exc}. Copy its tokenizer "
            f"files into {inside}"
        ) from None
    return auto_tokenizer(source, config.label_model_config, f"the label tokenizer ({name!r})")


def load_input_builder(
    path: str | os.PathLike[str],
    config: GLiClassConfig,
    max_length: int | None = None,
    tokenizer: PreTrainedTokenizerBase | None = None,
) -> AnyInputBuilder:
    """The input builder for the checkpoint's architecture (tokenizers loaded here unless ``tokenizer`` is given)."""
    tokenizer = tokenizer if tokenizer is not None else load_tokenizer(path, config)
    if config.architecture_type in BI_ENCODER_ARCHITECTURES:
        return BiEncoderInputBuilder(tokenizer, load_label_tokenizer(path, config), config, max_length)
    if config.architecture_type == "decoder-kv":
        return DecoderKVInputBuilder(tokenizer, config, max_length)
    return InputBuilder(tokenizer, config, max_length)


def save_pretrained(
    model: AnyModel,
    path: str | os.PathLike[str],
    tokenizer: PreTrainedTokenizerBase | None = None,
    label_tokenizer: PreTrainedTokenizerBase | None = None,
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer, + a bi-encoder's label tokenizer) in the published layout."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["GLiClassModel"]
    model.config.save_pretrained(str(path))
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    if label_tokenizer is not None:
        label_tokenizer.save_pretrained(str(path / LABEL_TOKENIZER_DIR))
    return path
