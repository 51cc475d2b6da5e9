"""Supervised fine-tuning of a GLiClass model (few-shot or full data).

Focal loss (or BCE) over sigmoid logits for multi-label, softmax cross-entropy for single-label,
both masked by the label mask (padded slots and ``unknown_labels`` do not count). AdamW with one
learning rate for the encoder and another for the heads (projectors, scorer, logit scale), linear
warm-up then linear decay, gradient accumulation and clipping, evaluation (micro/macro F1) every
``eval_every`` epochs, and checkpoints in the published layout. Runs are reproducible on CPU for a
given seed: item order, label shuffles and dropout all draw from seeded generators. ``average_runs``
trains several runs from the same start and keeps the mean of their weights (a uniform model soup).
"""

from __future__ import annotations

import json
import logging
import math
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from gliclass_dist.model.inputs import InputBuilder
from gliclass_dist.model.loading import save_pretrained
from gliclass_dist.model.modeling import GLiClassModel
from gliclass_dist.train.data import TrainRecord, make_batch
from gliclass_dist.train.label_sampling import LabelSampler
from gliclass_dist.train.losses import compute_loss
from gliclass_dist.train.metrics import evaluate

logger = logging.getLogger(__name__)

RUN_SEED_STRIDE = 1000  # run k of an averaged training uses seed + k * RUN_SEED_STRIDE


@dataclass
class RunSettings:
    """Settings every training run has (supervised and PPO)."""

    batch_size: int = 8
    max_grad_norm: float = 1.0
    max_length: int | None = 256
    freeze_encoder: bool = False
    seed: int = 0
    threshold: float = 0.5
    device: str = "cpu"
    progress: bool = True


@dataclass
class SupervisedConfig(RunSettings):
    """Settings of a supervised run (defaults: the few-shot recipe described in bench/README.md)."""

    epochs: int = 10
    min_steps: int = 0  # few-shot: repeat the data until at least this many optimizer steps
    max_steps: int | None = None
    grad_accum: int = 1
    encoder_lr: float = 3e-5
    head_lr: float = 1e-3
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    loss: str = "focal"  # focal | bce | ce
    focal_alpha: float = 0.5
    focal_gamma: float = 2.0
    shuffle_labels: bool = True
    eval_every: int = 1  # epochs; 0 = only after the last epoch
    eval_mode: str = "auto"
    average_runs: int = 1  # > 1: that many runs from the same start (seeds seed, seed + 1000, ...), weights averaged


@dataclass
class TrainResult:
    """What a run did: per-epoch history, the final evaluation, wall time and where it was saved."""

    history: list[dict[str, Any]] = field(default_factory=list)
    final_eval: dict[str, Any] | None = None
    steps: int = 0
    seconds: float = 0.0
    out_dir: str | None = None


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def head_parameters(model: GLiClassModel) -> tuple[list[nn.Parameter], list[nn.Parameter]]:
    """Split trainable parameters into (encoder, heads)."""
    encoder, heads = [], []
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (encoder if name.startswith("model.encoder_model.") else heads).append(param)
    return encoder, heads


def build_optimizer(model: GLiClassModel, cfg: SupervisedConfig) -> torch.optim.Optimizer:
    """AdamW with separate learning rates; no weight decay on biases, norms and the logit scale."""
    groups: list[dict[str, Any]] = []
    for is_encoder, lr in ((True, cfg.encoder_lr), (False, cfg.head_lr)):
        decay, no_decay = [], []
        for name, param in model.named_parameters():
            if not param.requires_grad or name.startswith("model.encoder_model.") != is_encoder:
                continue
            if param.ndim < 2 or "norm" in name.lower() or name.endswith("logit_scale"):
                no_decay.append(param)
            else:
                decay.append(param)
        if is_encoder and (cfg.freeze_encoder or lr <= 0):
            for p in decay + no_decay:
                p.requires_grad_(False)
            continue
        if decay:
            groups.append({"params": decay, "lr": lr, "weight_decay": cfg.weight_decay})
        if no_decay:
            groups.append({"params": no_decay, "lr": lr, "weight_decay": 0.0})
    return torch.optim.AdamW(groups)


def linear_schedule(optimizer: torch.optim.Optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over ``warmup`` steps, then linear decay to 0 at ``total``."""

    def factor(step: int) -> float:
        if warmup > 0 and step < warmup:
            return (step + 1) / warmup
        return max(0.0, (total - step) / max(1, total - warmup))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def plan_epochs(n_items: int, cfg: SupervisedConfig) -> tuple[int, int]:
    """(epochs, optimizer steps): ``cfg.epochs``, raised to reach ``min_steps``, capped by ``max_steps``."""
    steps_per_epoch = max(1, math.ceil(math.ceil(n_items / cfg.batch_size) / cfg.grad_accum))
    epochs = max(cfg.epochs, math.ceil(cfg.min_steps / steps_per_epoch) if cfg.min_steps else 0)
    total = epochs * steps_per_epoch
    if cfg.max_steps is not None:
        total = min(total, cfg.max_steps)
        epochs = min(epochs, math.ceil(total / steps_per_epoch))
    return epochs, total


def train_supervised(
    model: GLiClassModel,
    tokenizer: Any,
    train_records: Sequence[TrainRecord],
    eval_records: Sequence[TrainRecord] | None = None,
    cfg: SupervisedConfig | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    on_step: Callable[[int, float], None] | None = None,
    label_sampler: LabelSampler | None = None,
) -> TrainResult:
    """Fine-tune ``model`` in place on ``train_records``; evaluate on ``eval_records``; save to ``out_dir``.

    With ``label_sampler``, each item is scored against a freshly sampled label set every time it is
    batched (its true labels, some of its other labels, vocabulary negatives); evaluation uses the
    records' own label sets. With ``cfg.average_runs`` N > 1, N runs start from the same weights with seeds
    ``seed``, ``seed + 1000``, ... and the model ends as the mean of their weights (a uniform model soup),
    which is then evaluated.
    """
    cfg = cfg or SupervisedConfig()
    if not train_records:
        raise ValueError("no training records")
    if cfg.loss not in ("focal", "bce", "ce"):
        raise ValueError(f"loss must be focal, bce or ce; got {cfg.loss!r}")
    if cfg.average_runs < 1:
        raise ValueError(f"average_runs must be >= 1, got {cfg.average_runs}")
    device = torch.device(cfg.device)
    model.to(device=device, dtype=torch.float32)
    model.config.problem_type = "single_label_classification" if cfg.loss == "ce" else "multi_label_classification"
    builder = InputBuilder(tokenizer, model.config, cfg.max_length)
    result = TrainResult()
    started = time.perf_counter()
    start = {k: v.detach().clone() for k, v in model.state_dict().items()} if cfg.average_runs > 1 else None
    total: dict[str, torch.Tensor] = {}
    for run in range(cfg.average_runs):
        if start is not None:
            model.load_state_dict(start)
            logger.info("run %d of %d (seed %d)", run + 1, cfg.average_runs, cfg.seed + RUN_SEED_STRIDE * run)
        # one run alone evaluates as it goes; averaged runs are evaluated once, after the average
        _fit(model, builder, train_records, eval_records if start is None else None, cfg,
             cfg.seed + RUN_SEED_STRIDE * run, device, result, on_step, label_sampler, run)
        if start is not None:
            for k, v in model.state_dict().items():
                if v.is_floating_point():
                    total[k] = total[k] + v.detach() if k in total else v.detach().clone()
    if start is not None:
        model.load_state_dict({**model.state_dict(), **{k: v / cfg.average_runs for k, v in total.items()}})
        entry: dict[str, Any] = {"averaged_runs": cfg.average_runs, "step": result.steps}
        if eval_records:
            result.final_eval = evaluate(model, builder, eval_records, cfg.eval_mode, cfg.threshold, device=str(device))
            entry.update(micro_f1=result.final_eval["micro_f1"], macro_f1=result.final_eval["macro_f1"])
            logger.info("mean of %d runs: micro-F1 %.4f macro-F1 %.4f", cfg.average_runs,
                        entry["micro_f1"], entry["macro_f1"])
        result.history.append(entry)
    model.eval()
    result.seconds = time.perf_counter() - started
    if out_dir is not None:
        result.out_dir = str(save_run(model, tokenizer, out_dir, cfg, result, label_sampler))
    return result


def _fit(
    model: GLiClassModel,
    builder: InputBuilder,
    train_records: Sequence[TrainRecord],
    eval_records: Sequence[TrainRecord] | None,
    cfg: SupervisedConfig,
    seed: int,
    device: torch.device,
    result: TrainResult,
    on_step: Callable[[int, float], None] | None,
    label_sampler: LabelSampler | None,
    run: int,
) -> None:
    """One training run from the model's current weights; appends to ``result`` (history, steps, final_eval)."""
    seed_everything(seed)
    rng = random.Random(seed)
    optimizer = build_optimizer(model, cfg)
    epochs, total_steps = plan_epochs(len(train_records), cfg)
    scheduler = linear_schedule(optimizer, int(cfg.warmup_ratio * total_steps), total_steps)
    logger.info(
        "training on %d records for %d epochs (%d steps), batch %d x %d, lr encoder %.1e heads %.1e, loss %s",
        len(train_records), epochs, total_steps, cfg.batch_size, cfg.grad_accum, cfg.encoder_lr, cfg.head_lr, cfg.loss,
    )
    step = 0
    desc = "train" if cfg.average_runs == 1 else f"train {run + 1}/{cfg.average_runs}"
    bar = tqdm(total=total_steps, desc=desc, disable=not cfg.progress, leave=False)
    for epoch in range(1, epochs + 1):
        model.train()
        order = list(range(len(train_records)))
        rng.shuffle(order)
        batches = [order[i : i + cfg.batch_size] for i in range(0, len(order), cfg.batch_size)]
        epoch_losses: list[float] = []
        optimizer.zero_grad(set_to_none=True)
        for b, members in enumerate(batches):
            records = [train_records[i] for i in members]
            if label_sampler is not None:
                records = label_sampler.sample_all(records, rng)
            batch = make_batch(builder, records, rng if cfg.shuffle_labels else None).to(device)
            out = model(batch.input_ids, batch.attention_mask)
            mask = batch.loss_mask & out.label_mask
            loss = compute_loss(cfg.loss, out.logits, batch.targets, mask, cfg.focal_alpha, cfg.focal_gamma)
            (loss / cfg.grad_accum).backward()
            epoch_losses.append(float(loss.detach()))
            if (b + 1) % cfg.grad_accum == 0 or b + 1 == len(batches):
                if cfg.max_grad_norm:
                    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)
                step += 1
                bar.update(1)
                bar.set_postfix(epoch=epoch, loss=f"{epoch_losses[-1]:.4f}")
                if on_step is not None:
                    on_step(result.steps + step, epoch_losses[-1])
                if step >= total_steps:
                    break
        entry: dict[str, Any] = {"epoch": epoch, "step": step, "loss": sum(epoch_losses) / len(epoch_losses)}
        if cfg.average_runs > 1:
            entry["run"] = run + 1
        last = epoch == epochs or step >= total_steps
        if eval_records and ((cfg.eval_every and epoch % cfg.eval_every == 0) or last):
            scores = evaluate(model, builder, eval_records, cfg.eval_mode, cfg.threshold, device=str(device))
            entry.update(micro_f1=scores["micro_f1"], macro_f1=scores["macro_f1"])
            if last:
                result.final_eval = scores
            logger.info("epoch %d: loss %.4f micro-F1 %.4f macro-F1 %.4f", epoch, entry["loss"],
                        scores["micro_f1"], scores["macro_f1"])
        else:
            logger.info("epoch %d: loss %.4f", epoch, entry["loss"])
        result.history.append(entry)
        if step >= total_steps:
            break
    bar.close()
    result.steps += step


def save_run(
    model: GLiClassModel, tokenizer: Any, out_dir: str | os.PathLike[str], cfg: Any, result: Any,
    label_sampler: LabelSampler | None = None,
) -> Path:
    """Save the checkpoint (published layout) plus ``training_metrics.json`` beside it."""
    path = save_pretrained(model, out_dir, tokenizer)
    summary = {"config": asdict(cfg), "history": result.history, "steps": result.steps,
               "seconds": round(result.seconds, 1)}
    if label_sampler is not None:
        summary["label_sampling"] = label_sampler.describe()
    if getattr(result, "final_eval", None):
        summary["final_eval"] = result.final_eval
    (path / "training_metrics.json").write_text(json.dumps(summary, indent=2))
    logger.info("saved the fine-tuned model to %s", path)
    return path
