"""CPU/GPU execution backends for a loaded GLiClass model: the one place a backend name is checked and applied.

``torch`` runs the model as loaded. ``int8`` (CPU, float32 only) quantizes the encoder's linear layers to int8
(dynamic quantization: int8 weights per output channel, activations quantized per batch at run time).
"""

from __future__ import annotations

import warnings

import torch

from gliclass_dist.model.modeling import GLiClassModel

BACKENDS = ("torch", "int8")


def check_backend(backend: str, device: torch.device, dtype: torch.dtype) -> str:
    """``backend`` if it is known and can run on ``device`` in ``dtype``; otherwise ``ValueError`` naming it."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {backend!r}")
    if backend == "int8" and (device.type != "cpu" or dtype != torch.float32):
        raise ValueError(
            f"backend='int8' runs on CPU in float32 only (got device={device}, dtype={dtype}); "
            "on a GPU use dtype='bfloat16' or 'float16' instead"
        )
    return backend


def apply_backend(model: GLiClassModel, backend: str) -> GLiClassModel:
    """The model prepared for ``backend`` (checked by ``check_backend``), already on its device and dtype."""
    if backend == "int8":
        return quantize_encoder_int8(model)
    return model


def quantize_encoder_int8(model: GLiClassModel) -> GLiClassModel:
    """Dynamic int8 quantization of the encoder's ``nn.Linear`` layers, in place (CPU only).

    Weights become int8 per output channel; activations are quantized per batch at run time. The
    heads (projectors, scorer) stay fp32: they are a negligible share of the compute. Measured on
    BBC in bench/NOTES.md (speed and macro-F1 against fp32).
    """
    try:
        from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic
    except ImportError as exc:  # removed from a future torch
        raise ValueError(f"backend='int8' needs torch.ao.quantization, which this torch lacks ({exc})") from None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", UserWarning)
        model.model.encoder_model = quantize_dynamic(
            model.model.encoder_model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8
        )
    return model


__all__ = ["BACKENDS", "apply_backend", "check_backend", "quantize_encoder_int8"]
