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
from transformers import AutoTokenizer, PreTrainedTokenizerBase

from gliclass_dist.model.config import EXAMPLE_TOKEN, LABEL_TOKEN, SEP_TOKEN, GLiClassConfig
from gliclass_dist.model.modeling import GLiClassModel

logger = logging.getLogger(__name__)

IGNORED_UNEXPECTED = ("position_embeddings", "position_ids")


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


def load_model(path: str | os.PathLike[str], *, allow_pickle: bool = False) -> GLiClassModel:
    """Build the network from ``config.json`` and load its weights (CPU, float32, eval mode)."""
    path = Path(path)
    config = load_config(path)
    state = _read_state_dict(path, allow_pickle)
    model = GLiClassModel(config)
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


def load_tokenizer(path: str | os.PathLike[str], config: GLiClassConfig) -> PreTrainedTokenizerBase:
    """Load the checkpoint's tokenizer and check that it carries the label tokens the config expects."""
    path = Path(path)
    # the encoder's config tells AutoTokenizer the tokenizer class without reading our config.json (whose
    # model_type transformers does not know, and would warn about)
    kwargs: dict[str, Any] = {"config": config.encoder_config}
    if config.encoder_config.model_type == "modernbert":
        kwargs["add_prefix_space"] = True
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(path), **kwargs)
    except Exception as exc:
        raise CheckpointError(f"{path}: the tokenizer cannot be loaded ({type(exc).__name__}: {exc})") from None
    vocab = tokenizer.get_vocab()
    for token, expected in ((LABEL_TOKEN, config.class_token_index), (SEP_TOKEN, config.text_token_index)):
        found = vocab.get(token)
        if found is None:
            raise CheckpointError(f"{path}: the tokenizer lacks the {token} token the model needs")
        if found != expected:
            raise CheckpointError(
                f"{path}: the tokenizer maps {token} to id {found} but config.json expects {expected}"
            )
    if EXAMPLE_TOKEN in vocab and vocab[EXAMPLE_TOKEN] != config.example_token_index:
        logger.warning("%s: %s has id %d, config says %d", path, EXAMPLE_TOKEN, vocab[EXAMPLE_TOKEN], config.example_token_index)
    return tokenizer


def save_pretrained(
    model: GLiClassModel, path: str | os.PathLike[str], tokenizer: PreTrainedTokenizerBase | None = None
) -> Path:
    """Write ``config.json`` + ``model.safetensors`` (+ tokenizer) in the published layout."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.config.architectures = ["GLiClassModel"]
    model.config.save_pretrained(str(path))
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    if tokenizer is not None:
        tokenizer.save_pretrained(str(path))
    return path
