"""CPU/GPU execution backends for a loaded GLiClass model: the one place a backend name is checked and applied.

- ``torch`` runs the model as loaded.
- ``int8`` (CPU, float32 only) quantizes the encoder's linear layers to int8 in PyTorch (dynamic
  quantization: int8 weights per output channel, activations quantized per batch at run time).
- ``onnx-int8`` (CPU, float32 only; needs the ``onnx`` extra) exports the encoder to ONNX from the loaded
  model (offline, no download), fuses it with ONNX Runtime's transformer optimizer (BERT encoders: fused
  embeddings, attention, GELU and layer norms), quantizes it to int8 (dynamic, weights per channel, the
  fused attention's projections included) and runs it in ONNX Runtime; the heads stay in PyTorch, fp32.

bench/NOTES.md has the measured speed and macro-F1 of each against fp32 and the reference package.
"""

from __future__ import annotations

import logging
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from gliclass_dist.model.modeling import GLiClassModel
from gliclass_dist.settings import BACKENDS, check_backend_name

logger = logging.getLogger(__name__)

# Backends that run on CPU in float32 only.
CPU_BACKENDS = ("int8", "onnx-int8")
ONNX_OPSET = 17
# The transformers a GLiClass network may hold (uni-encoder, bi-encoder text and label towers, decoder-kv).
TRANSFORMER_ATTRIBUTES = ("encoder_model", "label_encoder", "decoder_model")
# Encoders whose ONNX graph ONNX Runtime's transformer optimizer knows how to fuse (config.model_type).
FUSABLE_ENCODERS = ("bert",)


def check_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """``backend`` if it is known and can run on ``device`` in ``dtype``; otherwise ``ValueError`` naming it."""
    check_backend_name(backend)
    if backend in CPU_BACKENDS and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError(
            f"backend={backend!r} runs on CPU in float32 only (got device={device}, dtype={dtype}); "
            "on a GPU use backend='torch' with dtype='bfloat16' or 'float16' instead"
        )
    return backend


def apply_backend(model: nn.Module, backend: str) -> nn.Module:
    """The model prepared for ``backend`` (checked by ``check_backend``), already on its device and dtype."""
    if backend == "int8":
        return quantize_encoder_int8(model)
    if backend == "onnx-int8":
        return onnx_int8_encoder(model)
    return model


def quantize_encoder_int8(model: nn.Module) -> nn.Module:
    """Dynamic int8 quantization of the transformers' ``nn.Linear`` layers, in place (CPU only).

    Weights become int8 per output channel; activations are quantized per batch at run time. The
    heads (projectors, scorer) stay fp32: they are a negligible share of the compute. Measured on
    BBC in bench/NOTES.md (speed and macro-F1 against fp32).
    """
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:  # removed from a future torch
        raise ValueError(f"backend='int8' needs torch.ao.quantization, which this torch lacks ({exc})") from None
    network = model.model
    names = [name for name in TRANSFORMER_ATTRIBUTES if isinstance(getattr(network, name, None), nn.Module)]
    if not names:
        raise ValueError(f"backend='int8' found no transformer to quantize in {type(model).__name__}")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        for name in names:
            quantized = quantize_dynamic(
                getattr(network, name), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
            )
            setattr(network, name, quantized)
    return model


class OnnxEncoder(nn.Module):
    """An encoder exported to ONNX, run by ONNX Runtime; called like the transformers encoder it replaces.

    Takes ``input_ids`` and ``attention_mask`` (int64, CPU) and returns ``(last_hidden_state,)``.
    """

    def __init__(self, model_path: str | Path, threads: int | None = None) -> None:
        super().__init__()
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # threads sleep between calls instead of spinning (like OMP_WAIT_POLICY=PASSIVE): fair on shared cores
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        self.session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])

    def forward(
        self,
        input_ids: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        **kwargs: Any,
    ) -> tuple[torch.Tensor]:
        extra = sorted(k for k, v in kwargs.items() if v is not None and v is not False)
        if input_ids is None or attention_mask is None or extra:
            raise ValueError(f"the ONNX encoder takes input_ids and attention_mask only; got also {extra}")
        feeds = {
            "input_ids": np.ascontiguousarray(input_ids.cpu().numpy(), dtype=np.int64),
            "attention_mask": np.ascontiguousarray(attention_mask.cpu().numpy(), dtype=np.int64),
        }
        (hidden,) = self.session.run(None, feeds)
        return (torch.from_numpy(hidden),)


class _HiddenStates(nn.Module):
    """The encoder as a graph of (input_ids, attention_mask) -> last hidden state, for the export."""

    def __init__(self, encoder: nn.Module) -> None:
        super().__init__()
        self.encoder = encoder

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.encoder(input_ids=input_ids, attention_mask=attention_mask)[0]


def export_encoder_onnx(encoder: nn.Module, path: Path) -> Path:
    """Write ``encoder`` (a transformers encoder, fp32, CPU) to ``path`` as ONNX with dynamic batch and length.

    Traced with eager attention and a padded example row, so that the attention mask stays in the graph.
    """
    config = encoder.config
    previous = getattr(config, "_attn_implementation", None)
    vocab = int(config.vocab_size)
    ids = torch.full((2, 8), min(100, vocab - 1), dtype=torch.long)
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    axes = {0: "batch", 1: "tokens"}
    try:
        if previous not in (None, "eager"):
            encoder.set_attn_implementation("eager")
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _HiddenStates(encoder).eval(),
                (ids, mask),
                str(path),
                input_names=["input_ids", "attention_mask"],
                output_names=["hidden"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "hidden": axes},
                opset_version=ONNX_OPSET,
                dynamo=False,
            )
    finally:
        if previous not in (None, "eager"):
            encoder.set_attn_implementation(previous)
    return path


def quantize_onnx_int8(source: Path, target: Path, *, num_heads: int, hidden_size: int, model_type: str) -> Path:
    """Fuse ``source`` (BERT-style encoders) and quantize it to int8 (dynamic, weights per channel) into ``target``."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    if model_type in FUSABLE_ENCODERS:
        from onnxruntime.transformers.optimizer import optimize_model

        fused = source.with_name(source.stem + "_fused.onnx")
        optimized = optimize_model(
            str(source), model_type=model_type, num_heads=num_heads, hidden_size=hidden_size, opt_level=0
        )
        optimized.save_model_to_file(str(fused))
        logger.info("ONNX fusions: %s", {k: v for k, v in optimized.get_fused_operator_statistics().items() if v})
        source = fused
    quantize_dynamic(
        str(source),
        str(target),
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"DefaultTensorType": onnx.TensorProto.FLOAT},
    )
    return target


def onnx_int8_encoder(model: GLiClassModel) -> GLiClassModel:
    """Replace the encoder of ``model`` (uni-encoder, fp32, CPU) by its fused int8 ONNX Runtime version, in place."""
    config = model.config
    unsupported = [
        name
        for name, bad in (
            (f"architecture_type={getattr(config, 'architecture_type', None)!r}",
             getattr(config, "architecture_type", "uni-encoder") != "uni-encoder"),
            ("use_segment_embeddings=True", bool(getattr(config, "use_segment_embeddings", False))),
            (f"encoder_layer_id={getattr(config, 'encoder_layer_id', -1)}", getattr(config, "encoder_layer_id", -1) != -1),
        )
        if bad
    ]
    if unsupported:
        raise ValueError(
            f"backend='onnx-int8' runs uni-encoders on their last hidden layer only; this model has "
            f"{', '.join(unsupported)}: use backend='int8' instead"
        )
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
    except ImportError as exc:
        raise ValueError(
            f"backend='onnx-int8' needs onnx and onnxruntime (pip install 'gliclass-dist[onnx]'): {exc}"
        ) from None
    encoder = model.model.encoder_model
    enc_config = encoder.config
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="gliclass-onnx-") as tmp:
        exported = export_encoder_onnx(encoder, Path(tmp) / "encoder.onnx")
        quantized = quantize_onnx_int8(
            exported,
            Path(tmp) / "encoder_int8.onnx",
            num_heads=int(enc_config.num_attention_heads),
            hidden_size=int(enc_config.hidden_size),
            model_type=str(enc_config.model_type),
        )
        model.model.encoder_model = OnnxEncoder(quantized)
    logger.info("encoder exported to ONNX and quantized to int8 in %.1fs", time.perf_counter() - started)
    return model


__all__ = [
    "BACKENDS",
    "CPU_BACKENDS",
    "OnnxEncoder",
    "apply_backend",
    "check_backend",
    "export_encoder_onnx",
    "onnx_int8_encoder",
    "quantize_encoder_int8",
    "quantize_onnx_int8",
]
