"""The Spark front end: a pandas UDF and a ``mapInArrow`` transform over one per-worker ``Classifier``
(keyed by its ``EngineSettings``; ``ModelOptions`` is the same class),
an optional stage-level GPU profile, batch and Structured Streaming jobs, and a filter stage.

Modules import pyspark lazily where they can; ``udf`` is the core (see its docstring), ``resources`` the
stage-level profile, ``job`` the batch job, ``stream`` the streaming job, ``filtering`` the filter stage.
"""

from gliclass_dist.spark.udf import (
    ClassifyConfig,
    EngineSettings,
    ModelOptions,
    classify_dataframe,
    classify_udf,
    model_loads,
    read_load_log,
    ship_model,
)

__all__ = [
    "ClassifyConfig",
    "EngineSettings",
    "ModelOptions",
    "classify_dataframe",
    "classify_udf",
    "model_loads",
    "read_load_log",
    "ship_model",
]
