"""gliclass-dist: GLiClass zero-shot classification for Ray, Spark and lakehouse pipelines.

::

    from gliclass_dist import Classifier
    clf = Classifier.from_pretrained("models/gliclass-minilm-bbc", device="cpu")
    clf("Shares fell after the results.", ["business", "sport", "tech"])

The public names below load on first use: importing the package imports neither torch nor Ray.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from gliclass_dist.lazy import lazy_exports

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "Classifier": "gliclass_dist.engine",
    "Prediction": "gliclass_dist.engine",
    "EngineSettings": "gliclass_dist.settings",
    "JobSpec": "gliclass_dist.spec",
    "LabelSpec": "gliclass_dist.labels",
}

if TYPE_CHECKING:
    from gliclass_dist.engine import Classifier, Prediction
    from gliclass_dist.labels import LabelSpec
    from gliclass_dist.settings import EngineSettings
    from gliclass_dist.spec import JobSpec


__getattr__, __dir__ = lazy_exports(__name__, _EXPORTS)


__all__ = ["Classifier", "EngineSettings", "JobSpec", "LabelSpec", "Prediction", "__version__"]
