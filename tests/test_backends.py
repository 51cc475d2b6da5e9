"""Execution backends (``gliclass_dist.backends``) on tiny real checkpoints: loaded through the real path.

``onnx-int8`` exports the encoder to ONNX, fuses and quantizes it and runs it in ONNX Runtime; its scores
must stay close to fp32 (int8 moves them a little: a stated tolerance, not equality), the exported graph
itself must equal the PyTorch encoder on padded batches, and it must refuse what it cannot run.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from gliclass_dist.backends import (
    BACKENDS,
    OnnxEncoder,
    apply_backend,
    check_backend,
    export_encoder_onnx,
)
from gliclass_dist.engine import Classifier
from gliclass_dist.model.loading import load_input_builder, load_model
from gliclass_dist.model.tiny import build_tiny_model

pytest.importorskip("onnxruntime")

TEXTS = [
    "The central bank raised interest rates again.",
    "The football club won the league after a dramatic final match on Sunday evening in the rain.",
    "A new smartphone was released.",
    "Parliament voted on the election law.",
]
LABELS = ["business", "sport", "politics", "tech"]
# Largest allowed |score(onnx-int8) - score(fp32)| on the tiny random-weight models (scores in [0, 1]).
SCORE_TOLERANCE = 0.05


def load(path: Path, backend: str) -> Classifier:
    model = load_model(path)
    builder = load_input_builder(path, model.config)
    return Classifier(model, builder, model_name=path.name, device="cpu", dtype="float32", backend=backend)


def scores(clf: Classifier) -> np.ndarray:
    return np.array([[p.scores[label] for label in LABELS] for p in clf.classify(TEXTS, LABELS)])


@pytest.mark.parametrize("checkpoint", ["tiny_model", "tiny_deberta"])
def test_onnx_int8_loads_and_scores_close_to_fp32(checkpoint, request):
    path = request.getfixturevalue(checkpoint)
    fp32 = load(path, "torch")
    onnx = load(path, "onnx-int8")
    assert "onnx-int8" in BACKENDS and onnx.backend == "onnx-int8"
    assert isinstance(onnx.model.model.encoder_model, OnnxEncoder)  # the backend really runs
    got, want = scores(onnx), scores(fp32)
    assert got.shape == want.shape == (len(TEXTS), len(LABELS))
    assert np.abs(got - want).max() <= SCORE_TOLERANCE, np.abs(got - want).max()
    # the same row alone and in a padded batch: int8 activations are scaled per batch, so close, not equal
    alone = np.array([onnx.classify([TEXTS[2]], LABELS)[0].scores[label] for label in LABELS])
    assert np.abs(alone - got[2]).max() <= SCORE_TOLERANCE


@pytest.mark.parametrize("checkpoint", ["tiny_model", "tiny_deberta"])
def test_exported_encoder_equals_torch_on_padded_batches(checkpoint, request, tmp_path):
    """The fp32 export keeps the attention mask: padded rows give the PyTorch encoder's hidden states."""
    model = load_model(request.getfixturevalue(checkpoint)).eval()
    encoder = model.model.encoder_model
    path = export_encoder_onnx(encoder, tmp_path / "encoder.onnx")
    ids = torch.randint(5, encoder.config.vocab_size - 3, (3, 13))
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    mask[2, 4:] = 0
    with torch.inference_mode():
        want = encoder(input_ids=ids, attention_mask=mask)[0]
    got = OnnxEncoder(path, threads=1)(input_ids=ids, attention_mask=mask)[0]
    valid = mask.bool()
    assert got.shape == want.shape
    assert torch.allclose(got[valid], want[valid], atol=1e-4), (got[valid] - want[valid]).abs().max()


@pytest.mark.parametrize("backend", ["int8", "onnx-int8"])
@pytest.mark.parametrize(("device", "dtype"), [("cuda", torch.float32), ("cpu", torch.bfloat16), ("cpu", torch.float16)])
def test_cpu_backends_refuse_gpu_and_low_precision(backend, device, dtype):
    with pytest.raises(ValueError, match=rf"backend='{backend}' runs on CPU in float32 only"):
        check_backend(backend, torch.device(device), dtype)


def test_unknown_backend_is_named():
    with pytest.raises(ValueError, match="got 'tensorrt'"):
        check_backend("tensorrt", torch.device("cpu"), torch.float32)


@pytest.mark.parametrize(
    ("config", "named"),
    [({"use_segment_embeddings": True}, "use_segment_embeddings=True"), ({"encoder_layer_id": 0}, "encoder_layer_id=0")],
)
def test_onnx_int8_refuses_models_it_cannot_run(config, named):
    model, _ = build_tiny_model("bert", **config)
    with pytest.raises(ValueError, match=rf"{named}: use backend='int8' instead"):
        apply_backend(model, "onnx-int8")
