"""Small probes behind the figures in ``bench/NOTES.md`` (print only; no JSON).

    python bench/probes.py token-budget [--labels 5]   # engine / reference per token budget, 3 text sets
    python bench/probes.py label-cache                 # cached label ids vs whole-string tokenization speed
    python bench/probes.py chunks                      # label chunks and tokens per row vs the reference
    python bench/probes.py omp                         # OMP_WAIT_POLICY ACTIVE vs PASSIVE, alone and 2 processes
    python bench/probes.py plumbing --before DIR       # classify_arrow rows/s, tiny model, 1 thread: DIR vs this tree
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

SIZES = {"bbc_long": 48, "bbc_titles": 600, "bbc_mixed": 96}


def token_budget(labels_count: int, budgets: list[int], rounds: int) -> None:
    import peers

    common.set_threads(common.THREADS)
    sets = common.text_sets()
    labels = common.label_set(labels_count)
    ref = peers.ReferenceApproach(common.BENCH_MODEL)
    engines = {b: peers.EngineApproach(common.BENCH_MODEL, token_budget=b) for b in budgets}
    for name, n in SIZES.items():
        texts = sets[name][:n]
        ref.classify(texts[:4], labels)
        for engine in engines.values():
            engine.classify(texts[:4], labels)
        for _ in range(rounds):
            started = time.perf_counter()
            ref.classify(texts, labels)
            ref_s = time.perf_counter() - started
            line = [f"{name:10s} reference {n / ref_s:7.2f} texts/s; engine/reference by budget:"]
            for budget, engine in engines.items():
                started = time.perf_counter()
                engine.classify(texts, labels)
                line.append(f"{budget}: {ref_s / (time.perf_counter() - started):.2f}x")
            print(" ".join(line), flush=True)


def label_cache() -> None:
    from gliclass_dist.engine import Classifier

    builder = Classifier.from_pretrained(common.BENCH_MODEL, device="cpu").builder
    for name, n in (("bbc_titles", 2000), ("bbc_long", 300)):
        texts = common.text_sets()[name][:n]
        for count in (5, 32, 128):
            labels = common.label_set(count)
            builder.encode(texts[:10], [labels] * 10)
            started = time.perf_counter()
            builder.encode(texts, [labels] * len(texts))
            cached = time.perf_counter() - started
            whole = [builder.whole_string(t[:8192], labels, None, "") for t in texts]
            started = time.perf_counter()
            builder.tokenizer(whole, truncation=True, max_length=builder.max_length)
            full = time.perf_counter() - started
            print(f"{name:10s} {count:3d} labels: cached {n / cached:8.0f} rows/s, whole strings {n / full:8.0f} rows/s")


def chunks() -> None:
    from gliclass_dist.engine import Classifier

    builder = Classifier.from_pretrained(common.BENCH_MODEL, device="cpu").builder
    sets = common.text_sets()
    for count in common.LABEL_COUNTS:
        labels = common.label_set(count)
        block = sum(len(builder.label_ids(lb)) for lb in labels) + 1
        for name in ("bbc_long", "bbc_titles"):
            texts = sets[name][:200]
            rows = builder.encode(texts, [labels] * len(texts))
            n_chunks = sum(len(r.chunks) for r in rows) / len(rows)
            tokens = sum(len(c) for r in rows for c in r.chunks) / len(rows)
            text_lengths = [len(ids) for ids in builder.text_ids_batch(texts, None)]
            ref_tokens = sum(min(builder.max_length, 2 + block + t) for t in text_lengths) / len(texts)
            print(f"{count:3d} labels {name:10s} label block {block:3d} tokens: {n_chunks:.2f} chunks and "
                  f"{tokens:.0f} tokens per row (reference: 1 pass, {ref_tokens:.0f} tokens)")


def omp() -> None:
    probe = [sys.executable, __file__, "omp-probe"]
    for policy in ("ACTIVE", "PASSIVE"):
        env = dict(os.environ, OMP_WAIT_POLICY=policy)
        print(f"-- {policy}, one process:", flush=True)
        subprocess.run([*probe, "bbc_long", "60"], env=env, check=True)
        print(f"-- {policy}, two processes at once:", flush=True)
        both = [subprocess.Popen([*probe, "bbc_long", "40"], env=env),
                subprocess.Popen([*probe, "bbc_titles", "1500"], env=env)]
        for p in both:
            p.wait()


def omp_probe(text_set: str, n: int) -> None:
    import torch

    from gliclass_dist.engine import Classifier

    torch.set_num_threads(common.THREADS)
    clf = Classifier.from_pretrained(common.BENCH_MODEL, device="cpu")
    texts = common.text_sets()[text_set][:n]
    labels = common.label_set(5)
    clf.classify(texts[:4], labels)
    started = time.perf_counter()
    clf.classify(texts, labels)
    rate = n / (time.perf_counter() - started)
    print(f"   OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')} {text_set} {rate:.2f} texts/s", flush=True)


def plumbing(before: Path, rounds: int, rows: int, reps: int) -> None:
    """The engine's own overhead: ``classify_arrow`` rows/s with a tiny model on one thread (the model costs
    little, so the rate is mostly encoding, planning and building results), for another checkout ``before``
    (e.g. ``git worktree add /tmp/before <commit>``) and this tree, alternating child processes."""
    import json
    import statistics
    import tempfile

    from gliclass_dist.model.tiny import build_tiny_checkpoint

    model = build_tiny_checkpoint(Path(tempfile.mkdtemp(prefix="plumbing_")) / "tiny", backbone="bert", seed=0)
    trees = {"before": before.resolve(), "after": common.ROOT}
    rates: dict[str, list[float]] = {name: [] for name in trees}
    for r in range(rounds):
        for name, tree in trees.items():
            env = dict(os.environ, PYTHONPATH=str(tree), OMP_NUM_THREADS="1")
            cmd = [sys.executable, __file__, "plumbing-child", str(model), str(rows), str(reps)]
            out = subprocess.run(cmd, env=env, cwd=tree, capture_output=True, text=True, check=True)
            result = json.loads(out.stdout.strip().splitlines()[-1])
            rates[name] += result["rows_per_s"]
            print(f"round {r} {name:6s} {result['rows_per_s']} rows/s (engine from {result['engine']})", flush=True)
    before_rate, after_rate = (statistics.median(rates[name]) for name in trees)
    print(f"median rows/s: before {before_rate:.0f}, after {after_rate:.0f}, after/before {after_rate / before_rate:.3f} "
          "(machine shared with other jobs)")


def plumbing_child(model: str, rows: int, reps: int) -> None:
    import json
    import random

    import pyarrow as pa
    import torch

    import gliclass_dist.engine as engine
    from gliclass_dist.labels import LabelSpec

    torch.set_num_threads(1)
    clf = engine.Classifier.from_pretrained(model, device="cpu")
    vocab = [w for w in clf.builder.tokenizer.get_vocab() if w.isalpha() and len(w) > 2]
    rng = random.Random(0)
    texts = [" ".join(rng.choices(vocab, k=rng.randint(4, 30))) for _ in range(rows)]  # distinct rows
    table = pa.table({"id": list(range(rows)), "text": texts})
    spec = LabelSpec(labels=["sports", "politics", "tech", "business", "music"])
    clf.classify_arrow(table.slice(0, 64), spec, keep=["id"])
    out = []
    for _ in range(reps):
        started = time.perf_counter()
        for i in range(0, rows, 256):
            clf.classify_arrow(table.slice(i, 256), spec, keep=["id"])
        out.append(round(rows / (time.perf_counter() - started), 1))
    print(json.dumps({"rows_per_s": out, "engine": engine.__file__}))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="probe", required=True)
    tb = sub.add_parser("token-budget")
    tb.add_argument("--labels", type=int, default=5)
    tb.add_argument("--budgets", type=int, nargs="+", default=[512, 1024, 2048, 4096, 16384])
    tb.add_argument("--rounds", type=int, default=2)
    sub.add_parser("label-cache")
    sub.add_parser("chunks")
    sub.add_parser("omp")
    op = sub.add_parser("omp-probe")
    op.add_argument("text_set")
    op.add_argument("n", type=int)
    pl = sub.add_parser("plumbing")
    pl.add_argument("--before", type=Path, required=True, help="another checkout (git worktree) to compare with")
    pl.add_argument("--rounds", type=int, default=3)
    pl.add_argument("--rows", type=int, default=2048)
    pl.add_argument("--reps", type=int, default=2)
    pc = sub.add_parser("plumbing-child")
    pc.add_argument("model")
    pc.add_argument("rows", type=int)
    pc.add_argument("reps", type=int)
    args = parser.parse_args(argv)
    if args.probe == "plumbing":
        plumbing(args.before, args.rounds, args.rows, args.reps)
        return 0
    if args.probe == "plumbing-child":
        plumbing_child(args.model, args.rows, args.reps)
        return 0
    common.bench_checkpoint()
    if args.probe == "token-budget":
        token_budget(args.labels, args.budgets, args.rounds)
    elif args.probe == "label-cache":
        label_cache()
    elif args.probe == "chunks":
        chunks()
    elif args.probe == "omp":
        omp()
    else:
        omp_probe(args.text_set, args.n)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
