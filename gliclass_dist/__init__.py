"""gliclass-dist: GLiClass zero-shot classification for Ray, Spark and lakehouse pipelines."""

__version__ = "0.1.0"
