"""The GLiClass network: config, model, loading/saving, and the input builder. No I/O beyond checkpoints."""

from gliclass_dist.model.config import GLiClassConfig
from gliclass_dist.model.loading import (
    CheckpointError,
    load_model,
    load_tokenizer,
    resolve_model_ref,
    save_pretrained,
)
from gliclass_dist.model.modeling import GLiClassModel, GLiClassOutput

__all__ = [
    "CheckpointError",
    "GLiClassConfig",
    "GLiClassModel",
    "GLiClassOutput",
    "load_model",
    "load_tokenizer",
    "resolve_model_ref",
    "save_pretrained",
]
