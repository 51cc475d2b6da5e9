"""Create the input of ``iceberg_filter.yaml``: the Iceberg table ``raw.reviews`` in the example's local SQL catalog.

    .venv/bin/python jobs/examples/iceberg_reviews.py          # run from the repository root, like the job
    .venv/bin/python jobs/ray_classify.py --spec jobs/examples/iceberg_filter.yaml

The catalog properties are read from the spec itself (``input.catalog``), so the table lands where the job reads
it: ``lakehouse/catalog.db`` (relative to the current directory) with its warehouse under ``/tmp/lakehouse``.
A few product reviews (``review_id``, ``review``, ``stars``); the table is replaced when it exists.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pyarrow as pa
import yaml
from gliclass_dist.connectors.iceberg import catalog

SPEC = Path(__file__).with_name("iceberg_filter.yaml")
REVIEWS = [
    ("I was charged twice for the same order and nobody answers my emails.", 1),
    ("The parcel arrived three weeks late and the box was crushed.", 2),
    ("Great blender, smoothies in seconds. Would buy again.", 5),
    ("My invoice shows a subscription fee I never agreed to.", 1),
    ("The support agent was rude and hung up on me.", 2),
    ("Works as described; the manual could be clearer.", 4),
    ("The handle broke after two days of normal use.", 2),
    ("Refund promised a month ago, still not on my card.", 1),
]


def main() -> int:
    spec = yaml.safe_load(SPEC.read_text())
    props = dict(spec["input"]["catalog"])
    uri = props.get("uri", "")
    if uri.startswith("sqlite:///"):
        Path(uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    table_id = spec["input"]["table"]
    cat = catalog(props)
    cat.create_namespace_if_not_exists(table_id.split(".")[0])
    data = pa.table({
        "review_id": pa.array(range(1, len(REVIEWS) + 1), pa.int64()),
        "review": [text for text, _ in REVIEWS],
        "stars": pa.array([stars for _, stars in REVIEWS], pa.int32()),
    })
    if cat.table_exists(table_id):
        cat.drop_table(table_id)
    cat.create_table(table_id, schema=data.schema).append(data)
    print(f"wrote {data.num_rows} reviews to {table_id} (catalog {uri})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
