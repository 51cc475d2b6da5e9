"""What the Spark test modules share: a SparkSession on 127.0.0.1, quiet, with offline executors."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from typing import Any

# Every session of the tests: no UI or progress bars, bound to 127.0.0.1, executors that never call the hub.
BASE_CONF = {
    "spark.ui.enabled": "false",
    "spark.ui.showConsoleProgress": "false",
    "spark.driver.host": "127.0.0.1",
    "spark.driver.bindAddress": "127.0.0.1",
    "spark.executorEnv.HF_HUB_OFFLINE": "1",
    "spark.executorEnv.TOKENIZERS_PARALLELISM": "false",
}


@contextlib.contextmanager
def spark_session(master: str, app_name: str, conf: Mapping[str, str] = ()) -> Iterator[Any]:
    """A new SparkSession (an active one is stopped first) with ``BASE_CONF`` and ``conf``; stopped after."""
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None:
        active.stop()
    builder = SparkSession.builder.master(master).appName(app_name)
    for key, value in {**BASE_CONF, **dict(conf)}.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    try:
        yield session
    finally:
        session.stop()
