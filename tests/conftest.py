"""Shared fixtures: tiny real checkpoints built on the spot (no downloads, no mocks)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_DEDUP_LOGS", "0")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny BERT-backed GLiClass checkpoint (config.json + model.safetensors + tokenizer)."""
    from gliclass_dist.model.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-bert"), backbone="bert", seed=0)


@pytest.fixture(scope="session")
def tiny_deberta(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny DeBERTa-v2-backed GLiClass checkpoint with a sentencepiece-style tokenizer."""
    from gliclass_dist.model.tiny import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-deberta"), backbone="deberta-v2", seed=1)


@pytest.fixture(scope="session")
def classifier(tiny_model: Path):
    from gliclass_dist.engine import Classifier

    return Classifier.from_pretrained(tiny_model, device="cpu")


@pytest.fixture(scope="module")
def ray_local(tmp_path_factory: pytest.TempPathFactory):
    """One local Ray for the module (2 CPUs, no dashboard, temp dir inside the test's tmp), unless one runs."""
    import ray

    own = not ray.is_initialized()
    with pytest.MonkeyPatch.context() as env:  # RAY_TMPDIR is restored for the modules after this one
        if own:
            env.setenv("RAY_TMPDIR", str(tmp_path_factory.mktemp("ray")))
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=True, logging_level="WARNING")
        yield ray
        if own:
            ray.shutdown()
