"""The Ray front end: ``classify_dataset`` (GLiClass stages over any Ray ``Dataset``, no sink),
``GLiClassPredictor`` (the model stage, for your own ``map_batches``), ``filter_dataset`` (keep the rows whose
labels match), and the sink-writing job (``gliclass_dist.ray.job.run_job``). Serve lives in ``ray.serve``.

The names below load on first use: importing this package imports neither Ray nor torch.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gliclass_dist.lazy import lazy_exports

_EXPORTS = {
    "classify_dataset": "gliclass_dist.ray.dataset",
    "GLiClassPredictor": "gliclass_dist.ray.predictor",
    "filter_dataset": "gliclass_dist.ray.filtering",
    "run_job": "gliclass_dist.ray.job",
}

if TYPE_CHECKING:
    from gliclass_dist.ray.dataset import classify_dataset
    from gliclass_dist.ray.filtering import filter_dataset
    from gliclass_dist.ray.job import run_job
    from gliclass_dist.ray.predictor import GLiClassPredictor


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["GLiClassPredictor", "classify_dataset", "filter_dataset", "run_job"]
