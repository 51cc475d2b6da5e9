"""``EngineSettings``: the one description of how to load and run a checkpoint, shared by every front end.

The job spec (``model`` + ``resources.token_budget``/``result_cache_rows``, see ``EngineSettings.from_job``),
the Ray predictor and ``gliclass_dist.ray.classify_dataset``, the Spark UDF (where it is the per-worker cache
key), Serve (``ServeArgs.engine_settings``) and the CLI (``add_engine_arguments``/``EngineSettings.from_args``)
all build one and hand it to ``Classifier.from_settings``::

    settings = EngineSettings("models/gliclass-minilm-bbc", device="cpu", backend="int8", threads=4)
    clf = Classifier.from_settings(settings)

It is frozen (hashable, picklable), imports neither torch nor the engine, and checks every value when it is
built, naming the bad one. The annotated field types below are reused by the job spec and ``ServeArgs`` so that
each setting is checked the same way everywhere.
"""

from __future__ import annotations

import argparse
import dataclasses
import re
from typing import TYPE_CHECKING, Annotated, Any, Literal, get_args

from pydantic import AfterValidator, ConfigDict, Field
from pydantic.dataclasses import dataclass

if TYPE_CHECKING:
    from gliclass_dist.spec import JobSpec

# The execution backends, named here without torch; ``gliclass_dist.backends`` applies them.
BACKENDS = ("torch", "int8", "onnx-int8")
DType = Literal["auto", "float32", "bfloat16", "float16"]
DTYPES: tuple[str, ...] = get_args(DType)
DEVICE_PATTERN = re.compile(r"auto|cpu|cuda(:\d+)?")


def check_device(value: str) -> str:
    """``value`` when it names a device the engine can use (auto, cpu, cuda, cuda:N); else ``ValueError``."""
    if not DEVICE_PATTERN.fullmatch(value):
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N; got {value!r}")
    return value


def check_backend_name(value: str) -> str:
    """``value`` when it is one of ``BACKENDS``; else ``ValueError`` naming it."""
    if value not in BACKENDS:
        raise ValueError(f"backend must be one of {', '.join(BACKENDS)}; got {value!r}")
    return value


Device = Annotated[str, AfterValidator(check_device)]
Backend = Annotated[str, AfterValidator(check_backend_name)]
Window = Annotated[int, Field(gt=8, description="model window in tokens (default: the model's)")]
TokenBudget = Annotated[
    int, Field(ge=64, description="padded tokens per forward pass (default: 2,048 on CPU, 16,384 on GPU)")
]
Threads = Annotated[int, Field(ge=1, description="torch intra-op threads of the process (default: torch's)")]
CacheRows = Annotated[int, Field(ge=0, description="rows kept in the engine's result cache (0: off)")]


@dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class EngineSettings:
    """How to load and run one checkpoint.

    ``ref``: a local checkpoint folder, a hub id, or (Spark) ``sparkfiles://<name>`` for a folder shipped with
    ``gliclass_dist.spark.udf.ship_model``. ``model_name`` is what the ``model`` output column says (default:
    ``display_name``). ``threads`` is applied to the process when the classifier is loaded.
    """

    ref: str
    revision: str | None = None
    device: Device = "auto"
    dtype: DType = "auto"
    backend: Backend = "torch"
    max_length: Window | None = None
    token_budget: TokenBudget | None = None
    threads: Threads | None = None
    allow_pickle: bool = False
    model_name: str | None = None
    result_cache_rows: CacheRows = 0

    @property
    def display_name(self) -> str:
        """The ``model`` column's value: ``model_name``, else the folder name of a local checkpoint or the hub id."""
        from gliclass_dist.run import model_display_name  # the one place that computes it

        return self.model_name or model_display_name(self.ref)

    def replace(self, **changes: Any) -> EngineSettings:
        """A copy with ``changes`` applied (and checked)."""
        return dataclasses.replace(self, **changes)

    @classmethod
    def from_job(cls, job: JobSpec) -> EngineSettings:
        """The engine settings of a job spec: its ``model`` section plus ``resources.token_budget`` and
        ``resources.result_cache_rows``."""
        return cls(
            **job.model.model_dump(),
            token_budget=job.resources.token_budget,
            result_cache_rows=job.resources.result_cache_rows,
        )

    @classmethod
    def from_args(cls, args: argparse.Namespace, ref: str | None = None) -> EngineSettings:
        """The settings given by the flags of ``add_engine_arguments`` (``ref``: default ``args.model``)."""
        return cls(
            ref=str(ref if ref is not None else args.model),
            revision=args.revision,
            device=args.device,
            dtype=args.dtype,
            backend=args.backend,
            max_length=args.max_length,
            token_budget=args.token_budget,
            threads=args.threads,
            allow_pickle=args.allow_pickle,
        )


def add_engine_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
    """The command-line flags of ``EngineSettings`` (besides ``--model``), read back by ``from_args``."""
    parser.add_argument("--revision", default=None, help="hub revision (branch, tag or commit) of a hub id")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default: auto)")
    parser.add_argument("--dtype", choices=DTYPES, default="auto", help="auto, float32, bfloat16 or float16")
    parser.add_argument("--backend", choices=BACKENDS, default="torch",
                        help="torch; int8 or onnx-int8: faster CPU paths (float32 only; scores move slightly)")
    parser.add_argument("--max-length", type=int, default=None, help="model window in tokens (default: the model's)")
    parser.add_argument("--token-budget", type=int, default=None,
                        help="padded tokens per forward pass (default: 2048 on CPU, 16384 on GPU)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: torch's; serve: the replica's CPUs)")
    parser.add_argument("--allow-pickle", action="store_true", help="allow loading pytorch_model.bin (weights_only)")


__all__ = [
    "BACKENDS",
    "DTYPES",
    "Backend",
    "CacheRows",
    "DType",
    "Device",
    "EngineSettings",
    "Threads",
    "TokenBudget",
    "Window",
    "add_engine_arguments",
    "check_backend_name",
    "check_device",
]
