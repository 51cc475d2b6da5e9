"""gliclass-dist train: fine-tune a GLiClass model (few-shot supervised, or PPO from partial labels).

Records are {"text", "all_labels": [...], "true_labels": [...]} in JSONL or Parquet (optional prompt,
examples, unknown_labels). --base is a GLiClass checkpoint folder or a plain encoder (BERT / DeBERTa /
ModernBERT folder or hub id), in which case new heads are initialised. The same module holds the
calibrate and suggest-thresholds commands.

Example:
    gliclass-dist train --base models/gliclass-minilm-bbc --data train.jsonl --eval eval.jsonl --out models/my-model --shots-per-label 8
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any

import torch

from gliclass_dist.cli import add_command
from gliclass_dist.train.data import DataError, load_records, sample_shots

logger = logging.getLogger(__name__)


def register(subparsers: argparse._SubParsersAction) -> None:
    p = add_command(subparsers, "train", __doc__)
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
    sup.add_argument("--average-runs", type=int, default=1, metavar="N",
                     help="train N runs from the same start (seeds SEED, SEED+1000, ...) and save the mean of their "
                          "weights (steadier on label names it never saw; N times the training time)")
    sup.add_argument(
        "--head-init",
        choices=["similarity", "random"],
        default="similarity",
        help="new heads on a plain encoder: start as embedding similarity (default) or random (reference)",
    )
    aug = p.add_argument_group(
        "label-set augmentation",
        "score each item, every step, against a sampled label set: its true labels, some of its other labels and "
        "negatives from a label vocabulary (never its true labels' synonyms or near-synonyms), in random order",
    )
    aug.add_argument("--label-sampling", action="store_true",
                     help="turn label-set augmentation on (implied by --negative-labels, --synonyms, --paraphrases)")
    aug.add_argument("--negative-labels", type=Path, action="append", default=[], metavar="FILE",
                     help="more vocabulary labels, one a line ('#' comments); repeatable")
    aug.add_argument("--no-builtin-vocabulary", action="store_true",
                     help="draw negatives from --negative-labels files only")
    aug.add_argument("--synonyms", type=Path, default=None, metavar="FILE",
                     help='JSON {"label": ["synonym", ...]}: never negatives for that label; see --paraphrase-prob')
    aug.add_argument("--paraphrases", type=Path, default=None, metavar="FILE",
                     help='JSON {"label": ["name", ...]}: what --paraphrase-prob renames a true label to (default: '
                          "the --synonyms map); never negatives either")
    aug.add_argument("--paraphrase-prob", type=float, default=0.0,
                     help="chance that a true label is renamed to one of its paraphrases (default 0)")
    aug.add_argument("--negatives", type=int, nargs=2, default=[2, 8], metavar=("MIN", "MAX"),
                     help="vocabulary negatives per item (default 2 8)")
    aug.add_argument("--min-other-labels", type=int, default=1,
                     help="fewest of the item's other labels kept (default 1; at most all of them)")
    aug.add_argument("--similarity-encoder", default=None,
                     help="encoder folder for label similarity (default: all-MiniLM-L6-v2 of the demo extra)")
    aug.add_argument("--similarity-threshold", type=float, default=0.45,
                     help="vocabulary labels with cosine >= this to a true label are never negatives (default 0.45)")
    aug.add_argument("--no-similarity-filter", action="store_true",
                     help="filter negatives with the synonym map only")
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
    register_calibration(subparsers)


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


def label_sampler_from_args(args: argparse.Namespace, device: str = "cpu") -> Any:
    """The ``LabelSampler`` the flags ask for, or None when label-set augmentation is off."""
    if not (args.label_sampling or args.negative_labels or args.synonyms or args.paraphrases):
        return None
    from gliclass_dist.train.label_sampling import LabelSamplingConfig, build_label_sampler, default_embedder

    config = LabelSamplingConfig(min_other=args.min_other_labels, min_negatives=args.negatives[0],
                                 max_negatives=args.negatives[1], paraphrase_prob=args.paraphrase_prob,
                                 similarity_threshold=args.similarity_threshold)
    embed = None if args.no_similarity_filter else default_embedder(args.similarity_encoder, device=device)
    return build_label_sampler(builtin=not args.no_builtin_vocabulary, negative_label_files=args.negative_labels,
                               synonyms_file=args.synonyms, paraphrases_file=args.paraphrases, embed=embed,
                               config=config)


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
    device = resolve_device(args.device)
    try:
        sampler = label_sampler_from_args(args, device)
    except (DataError, ValueError, ImportError, OSError) as exc:
        print(f"error: label sampling: {exc}", file=sys.stderr)
        return 2
    model, tokenizer = load_base(args.base, args.head_init, args.seed)
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
            average_runs=args.average_runs,
            **common,
        )
        result = train_supervised(model, tokenizer, train_records, eval_records, cfg, out_dir=args.out,
                                  label_sampler=sampler)
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
        result = train_ppo(model, tokenizer, train_records, eval_records, pcfg, out_dir=args.out,
                           label_sampler=sampler)
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


# -- calibrate / suggest-thresholds (gliclass_dist.train.calibrate) ---------------------------------------
def register_calibration(subparsers: argparse._SubParsersAction) -> None:
    """The ``calibrate`` and ``suggest-thresholds`` subcommands."""
    from gliclass_dist.train.calibrate import AUTO, FIT_METHODS

    rows_help = "labelled rows (.jsonl or .parquet, the training record format; unknown_labels are left out)"
    p = add_command(
        subparsers,
        "calibrate",
        (
            "Fit temperature / Platt / per-label Platt scaling of the model's logits on labelled rows and write "
            "MODEL/calibration.json, which every front end applies. --method auto picks the method (or none) by "
            "k-fold held-out log loss. Example: python -m gliclass_dist.train calibrate --model models/my-model "
            "--data labelled.jsonl"
        ),
    )
    p.add_argument("--model", required=True, type=Path, help="local GLiClass model folder (calibration.json goes here)")
    p.add_argument("--data", required=True, type=Path, help=rows_help)
    p.add_argument("--method", choices=[AUTO, "none", *FIT_METHODS], default=AUTO)
    p.add_argument("--mode", choices=["auto", "multi-label", "single-label"], default="auto",
                   help="the mode jobs run in (auto: single-label when every row has exactly one true label)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds for --method auto")
    p.add_argument("--min-label-support", type=int, default=3,
                   help="per-label-platt: positives and negatives a label needs for its own pair")
    p.add_argument("--dry-run", action="store_true", help="fit and print, write nothing")
    p.add_argument("--device", default="cpu")
    p.add_argument("--max-length", type=int, default=None, help="tokens per input (default: the model's window)")
    p.set_defaults(func=run_calibrate)

    t = add_command(
        subparsers,
        "suggest-thresholds",
        (
            "Score labelled rows as multi-label jobs do (with the model's calibration, if any) and pick per label "
            "the threshold with the best F1 on them. Labels with fewer than --min-support positives (or no "
            "negative) keep the job's threshold. Writes label set NAME into OUT (YAML; other sets are kept), for "
            "a job spec's labels: {file: OUT, name: NAME}. Example: python -m gliclass_dist.train "
            "suggest-thresholds --model models/my-model --data labelled.jsonl --out labels.yaml --name topics"
        ),
    )
    t.add_argument("--model", required=True, help="GLiClass model folder or hub id")
    t.add_argument("--data", required=True, type=Path, help=rows_help)
    t.add_argument("--out", required=True, type=Path, help="label-set YAML file to write (created or updated)")
    t.add_argument("--name", required=True, help="label set name")
    t.add_argument("--version", default=None, help="label set version (default: the entry's version + 1, or 1)")
    t.add_argument("--min-support", type=int, default=3, help="positives a label needs for its own threshold")
    t.add_argument("--default-threshold", type=float, default=0.5, help="the jobs' threshold, kept for the others")
    t.add_argument("--device", default="cpu")
    t.add_argument("--max-length", type=int, default=None, help="tokens per input (default: the model's window)")
    t.set_defaults(func=run_suggest_thresholds)


def run_calibrate(args: argparse.Namespace) -> int:
    from gliclass_dist.train.calibrate import calibrate

    try:
        records = load_records(args.data)
        result = calibrate(args.model, records, method=args.method, mode=args.mode, save=not args.dry_run,
                           device=args.device, max_length=args.max_length, folds=args.folds,
                           min_label_support=args.min_label_support)
    except ValueError as exc:  # DataError, bad model folder, bad calibration.json, too few rows
        print(f"error: {exc}", file=sys.stderr)
        return 2
    summary = result.summary()
    summary["saved"] = None if args.dry_run else str(args.model / "calibration.json")
    print(json.dumps(summary))
    return 0


def run_suggest_thresholds(args: argparse.Namespace) -> int:
    from gliclass_dist.engine import Classifier
    from gliclass_dist.train.calibrate import suggest_thresholds, write_label_set

    try:
        records = load_records(args.data)
        clf = Classifier.from_pretrained(args.model, device=args.device, dtype="float32", max_length=args.max_length)
        found = suggest_thresholds(clf, records, min_support=args.min_support, default=args.default_threshold)
        calibrated = f"calibration {clf.calibration.method}" if clf.calibration else "no calibration"
        header = (f"thresholds suggested by `python -m gliclass_dist.train suggest-thresholds` for model "
                  f"{clf.model_name} ({calibrated}) on {len(records)} rows of {args.data.name}")
        version = write_label_set(args.out, args.name, found.labels, found.thresholds, version=args.version,
                                  header=header)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps({"out": str(args.out), "name": args.name, "version": version, "thresholds": found.thresholds,
                      "labels": found.report}))
    return 0


def main(argv: list[str] | None = None) -> int:
    """``python -m gliclass_dist.train {train,calibrate,suggest-thresholds} ...``."""
    parser = argparse.ArgumentParser(prog="python -m gliclass_dist.train",
                                     description="Fine-tune, calibrate and pick thresholds for GLiClass models.")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    register(subparsers)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    args = parser.parse_args(argv)
    return int(args.func(args) or 0)
