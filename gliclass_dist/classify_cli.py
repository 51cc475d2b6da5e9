"""``gliclass-dist classify``: classify a Parquet / CSV / JSONL file into a Parquet file, in-process."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.json as pa_json
import pyarrow.parquet as pq
from tqdm import tqdm

from gliclass_dist.labels import LabelSpec

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "classify",
        help="classify a file of texts (parquet, csv or jsonl) into a parquet file",
        description=(
            "Score every row of INPUT against a label set and write the output schema "
            "(id/passthrough columns, labels, scores, top_label, top_score, status, model, label_set) to OUTPUT. "
            "Example: gliclass-dist classify --model models/gliclass-minilm-bbc --labels business,sport,tech "
            "--input news.parquet --output topics.parquet"
        ),
    )
    p.add_argument("--model", required=True, help="checkpoint folder, or a hub id (needs hub access)")
    source = p.add_mutually_exclusive_group(required=True)
    source.add_argument("--labels", help="comma-separated labels shared by every row, e.g. 'billing,delivery,praise'")
    source.add_argument("--labels-column", help="input column holding each row's list of labels")
    source.add_argument("--label-set", metavar="FILE:NAME", help="a named label set from a YAML/JSON file")
    p.add_argument("--input", required=True, type=Path, help="input file: .parquet, .csv, .jsonl/.json")
    p.add_argument("--output", required=True, type=Path, help="output .parquet file")
    p.add_argument("--text-column", default="text", help="column with the text (default: text)")
    p.add_argument("--id-column", default=None, help="id column to carry into the output (default: id if present)")
    p.add_argument("--keep", default="", help="comma-separated extra input columns to carry into the output")
    p.add_argument("--mode", choices=["multi-label", "single-label"], default="multi-label")
    p.add_argument("--threshold", type=float, default=0.5, help="multi-label decision threshold (default 0.5)")
    p.add_argument("--prompt", default=None, help="optional task description placed after the labels")
    p.add_argument("--batch-rows", type=int, default=512, help="rows handed to the engine at a time")
    p.add_argument("--token-budget", type=int, default=None,
                   help="padded tokens per forward pass (default: 2048 on CPU, 16384 on GPU)")
    p.add_argument("--max-length", type=int, default=None, help="model window in tokens (default: the model's)")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--dtype", default="auto", help="auto, float32, bfloat16 or float16")
    p.add_argument("--allow-pickle", action="store_true", help="allow loading pytorch_model.bin (weights_only)")
    p.set_defaults(func=run)


def read_input(path: Path) -> pa.Table:
    """Read a parquet, csv or jsonl file into Arrow."""
    if not path.exists():
        raise FileNotFoundError(f"input {str(path)!r} does not exist")
    suffix = path.suffix.lower()
    if suffix == ".parquet" or path.is_dir():
        return pq.read_table(path)
    if suffix == ".csv":
        return pa_csv.read_csv(path)
    if suffix in (".jsonl", ".json", ".ndjson"):
        return pa_json.read_json(path)
    raise ValueError(f"input {str(path)!r}: unsupported format (use .parquet, .csv or .jsonl)")


def label_spec_from_args(args: argparse.Namespace) -> LabelSpec:
    common = {"mode": args.mode, "threshold": args.threshold, "prompt": args.prompt}
    if args.labels is not None:
        return LabelSpec(labels=[x for x in args.labels.split(",")], **common)
    if args.labels_column is not None:
        return LabelSpec(column=args.labels_column, **common)
    file, _, name = args.label_set.rpartition(":")
    if not file or not name:
        raise ValueError("--label-set takes FILE:NAME, e.g. labels.yaml:topics")
    return LabelSpec(file=file, name=name, **common)


def run(args: argparse.Namespace) -> int:
    from gliclass_dist.engine import Classifier
    from gliclass_dist.model.loading import CheckpointError

    try:
        spec = label_spec_from_args(args)
        table = read_input(args.input)
    except (ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    id_column = args.id_column or ("id" if "id" in table.column_names else None)
    keep = [c for c in [id_column, *[k for k in args.keep.split(",") if k]] if c]
    missing = [c for c in [*keep, args.text_column] if c not in table.column_names]
    if missing:
        print(f"error: columns {missing} not in the input (columns: {table.column_names})", file=sys.stderr)
        return 2
    try:
        clf = Classifier.from_pretrained(
            args.model,
            device=args.device,
            dtype=args.dtype,
            max_length=args.max_length,
            token_budget=args.token_budget,
            allow_pickle=args.allow_pickle,
        )
    except CheckpointError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    args.output.parent.mkdir(parents=True, exist_ok=True)
    statuses: Counter[str] = Counter()
    writer: pq.ParquetWriter | None = None
    tmp = args.output.with_name(args.output.name + ".tmp")
    with tqdm(total=table.num_rows, unit="rows", desc="classify", file=sys.stderr) as bar:
        for batch in table.to_batches(max_chunksize=args.batch_rows):
            out = clf.classify_arrow(batch, spec, text_column=args.text_column, keep=keep)
            if writer is None:
                writer = pq.ParquetWriter(tmp, out.schema)
            writer.write_table(out)
            statuses.update(out.column("status").to_pylist())
            bar.update(batch.num_rows)
    if writer is None:  # empty input: still write the schema
        from gliclass_dist.schema import output_schema

        writer = pq.ParquetWriter(tmp, output_schema(table.schema, keep))
    writer.close()
    tmp.replace(args.output)  # the output appears whole or not at all
    elapsed = time.perf_counter() - started
    summary = {
        "rows": table.num_rows,
        "status_counts": dict(statuses),
        "seconds": round(elapsed, 2),
        "rows_per_s": round(table.num_rows / elapsed, 1) if elapsed > 0 else None,
        "output": str(args.output),
        "model": clf.model_name,
        "label_set": spec.label_set_id,
    }
    print(json.dumps(summary, indent=2))
    return 0
