"""``gliclass-dist train``: fine-tune a GLiClass model (supervised or PPO) from JSONL/Parquet records."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from gliclass_dist.train.data import DataError, load_records, sample_shots

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "train",
        help="fine-tune a GLiClass model (few-shot supervised, or PPO from partial labels)",
        description=(
            "Fine-tune GLiClass on records {\"text\", \"all_labels\": [...], \"true_labels\": [...]} "
            "(JSONL or Parquet; optional prompt, examples, unknown_labels). --base is a GLiClass checkpoint "
            "folder or a plain encoder (BERT/DeBERTa/ModernBERT folder or hub id), in which case new heads are "
            "initialised. Example: gliclass-dist train --base models/gliclass-minilm-bbc --data train.jsonl "
            "--eval eval.jsonl --out models/my-model --shots-per-label 8"
        ),
    )
    p.add_argument("--base", required=True, help="GLiClass checkpoint folder, or a plain encoder folder / hub id")
    p.add_argument("--data", required=True, type=Path, help="training records (.jsonl or .parquet)")
    p.add_argument("--eval", type=Path, default=None, help="held-out records for micro/macro F1 (optional)")
    p.add_argument("--out", required=True, type=Path, help="output checkpoint folder (published layout)")
    p.add_argument("--method", choices=["supervised", "ppo"], default="supervised")
    p.add_argument("--shots-per-label", type=int, default=None, help="sample N training items per label first")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--max-length", type=int, default=256, help="tokens per input; texts are cut, labels never")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--encoder-lr", type=float, default=None, help="default 3e-5 (supervised), 1e-5 (ppo)")
    p.add_argument("--head-lr", type=float, default=None, help="default 1e-3 (supervised), 1e-4 (ppo)")
    p.add_argument("--freeze-encoder", action="store_true", help="train the heads only")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    sup = p.add_argument_group("supervised")
    sup.add_argument("--epochs", type=int, default=10)
    sup.add_argument(
        "--min-steps", type=int, default=75,
        help="repeat small (few-shot) data until at least this many optimizer steps (default 75)",
    )
    sup.add_argument("--grad-accum", type=int, default=1)
    sup.add_argument("--warmup-ratio", type=float, default=0.1)
    sup.add_argument("--loss", choices=["focal", "bce", "ce"], default="focal", help="ce = single-label softmax")
    sup.add_argument("--focal-alpha", type=float, default=0.5)
    sup.add_argument("--focal-gamma", type=float, default=2.0)
    sup.add_argument("--eval-every", type=int, default=1, help="evaluate every N epochs (0: at the end only)")
    sup.add_argument(
        "--head-init",
        choices=["similarity", "random"],
        default="similarity",
        help="new heads on a plain encoder: start as embedding similarity (default) or random (reference)",
    )
    ppo = p.add_argument_group("ppo")
    ppo.add_argument("--ppo-steps", type=int, default=50, help="outer PPO iterations")
    ppo.add_argument("--samples-per-item", type=int, default=4)
    ppo.add_argument("--inner-iters", type=int, default=4)
    ppo.add_argument("--clip", type=float, default=0.2)
    ppo.add_argument("--kl-coef", type=float, default=0.05)
    ppo.add_argument("--entropy-coef", type=float, default=0.0)
    ppo.add_argument("--value-head", action="store_true", help="baseline from a value head, not the batch mean")
    ppo.add_argument("--ppo-eval-every", type=int, default=10, help="evaluate every N PPO steps")
    ppo.add_argument("--threshold", type=float, default=0.5, help="multi-label threshold for evaluation")
    p.set_defaults(func=run)


def is_gliclass_checkpoint(ref: str) -> bool:
    config = Path(ref) / "config.json"
    if not config.exists():
        return False
    try:
        return json.loads(config.read_text()).get("model_type") == "GLiClass"
    except (OSError, json.JSONDecodeError):
        return False


def load_base(ref: str, head_init: str = "similarity", seed: int = 0) -> tuple[Any, Any]:
    """A GLiClass checkpoint as is, or a plain encoder wrapped in new heads."""
    if is_gliclass_checkpoint(ref):
        from gliclass_dist.model.loading import load_model, load_tokenizer

        model = load_model(ref)
        return model, load_tokenizer(ref, model.config)
    from gliclass_dist.train.init_model import init_from_encoder

    return init_from_encoder(ref, head_init=head_init, seed=seed)  # type: ignore[arg-type]


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def run(args: argparse.Namespace) -> int:
    try:
        train_records = load_records(args.data)
        eval_records = load_records(args.eval) if args.eval else None
    except DataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.shots_per_label:
        train_records = sample_shots(train_records, args.shots_per_label, args.seed)
        logger.info("sampled %d training records (%d per label)", len(train_records), args.shots_per_label)
    model, tokenizer = load_base(args.base, args.head_init, args.seed)
    device = resolve_device(args.device)
    common = dict(
        batch_size=args.batch_size,
        max_length=args.max_length,
        freeze_encoder=args.freeze_encoder,
        seed=args.seed,
        device=device,
        progress=not args.no_progress,
    )
    if args.method == "supervised":
        from gliclass_dist.train.supervised import SupervisedConfig, train_supervised

        cfg = SupervisedConfig(
            epochs=args.epochs,
            min_steps=args.min_steps,
            grad_accum=args.grad_accum,
            encoder_lr=3e-5 if args.encoder_lr is None else args.encoder_lr,
            head_lr=1e-3 if args.head_lr is None else args.head_lr,
            warmup_ratio=args.warmup_ratio,
            loss=args.loss,
            focal_alpha=args.focal_alpha,
            focal_gamma=args.focal_gamma,
            eval_every=args.eval_every,
            threshold=args.threshold,
            **common,
        )
        result = train_supervised(model, tokenizer, train_records, eval_records, cfg, out_dir=args.out)
    else:
        from gliclass_dist.train.ppo import PPOConfig, train_ppo

        pcfg = PPOConfig(
            steps=args.ppo_steps,
            samples_per_item=args.samples_per_item,
            inner_iters=args.inner_iters,
            clip=args.clip,
            kl_coef=args.kl_coef,
            entropy_coef=args.entropy_coef,
            baseline="value_head" if args.value_head else "batch_mean",
            encoder_lr=1e-5 if args.encoder_lr is None else args.encoder_lr,
            head_lr=1e-4 if args.head_lr is None else args.head_lr,
            eval_every=args.ppo_eval_every,
            threshold=args.threshold,
            **common,
        )
        result = train_ppo(model, tokenizer, train_records, eval_records, pcfg, out_dir=args.out)
    if result.final_eval:
        print(
            json.dumps(
                {"out": str(args.out), "micro_f1": round(result.final_eval["micro_f1"], 4),
                 "macro_f1": round(result.final_eval["macro_f1"], 4)}
            )
        )
    else:
        print(json.dumps({"out": str(args.out)}))
    return 0
