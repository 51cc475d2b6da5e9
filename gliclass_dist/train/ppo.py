"""PPO for multi-label GLiClass: learn from partial labels or from a reward function (human feedback).

Written from the description in GLICLASS.md (not from the reference trainer):

- Policy: one independent Bernoulli per label, ``p = sigmoid(logit)``; an action is a 0/1 vector
  (the labels the model "predicts" for the item), ``samples_per_item`` actions per item.
- Reward: per-sample F1 of the sampled labels against the item's known labels
  (``true_labels`` positive, ``unknown_labels`` ignored, the rest negative), or a user-supplied
  ``reward_fn(record, predicted_labels) -> float``.
- Advantage: reward minus a baseline, the batch mean or a small value head on the (detached)
  text embedding; optionally normalised over the batch (zero mean, unit standard deviation).
- Objective per label: ``min(r * A, clip(r, 1 - eps, 1 + eps) * A)`` with ``r`` the probability
  ratio of the new to the sampling policy, averaged over label slots; plus ``kl_coef`` times the
  Bernoulli KL to the frozen starting model; minus ``entropy_coef`` times the entropy (off by default).
- A few inner iterations (``inner_iters``) of this loss on each sampled batch.

Dropout is off during PPO (the model stays in eval mode), so the first inner iteration has
ratio exactly 1 and the KL term measures only the weight change.
"""

from __future__ import annotations

import copy
import logging
import os
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from gliclass_dist.model.inputs import InputBuilder
from gliclass_dist.model.modeling import GLiClassModel
from gliclass_dist.train.data import Batch, TrainRecord, make_batch
from gliclass_dist.train.label_sampling import LabelSampler
from gliclass_dist.train.metrics import evaluate
from gliclass_dist.train.supervised import (
    RunSettings,
    TrainResult,
    build_optimizer,
    save_run,
    seed_everything,
)

logger = logging.getLogger(__name__)

RewardFn = Callable[[TrainRecord, list[str]], float]


@dataclass
class PPOConfig(RunSettings):
    """Settings of a PPO run."""

    steps: int = 50  # outer iterations: sample a batch, then ``inner_iters`` updates on it
    samples_per_item: int = 4
    inner_iters: int = 4
    clip: float = 0.2
    kl_coef: float = 0.05
    entropy_coef: float = 0.0
    baseline: str = "batch_mean"  # batch_mean | value_head
    normalize_advantage: bool = True
    encoder_lr: float = 1e-5
    head_lr: float = 1e-4
    weight_decay: float = 0.0
    eval_every: int = 10  # outer steps; 0 = only at the end
    eval_mode: str = "multi-label"


@dataclass
class PPOResult(TrainResult):
    """Mean reward per step (``history``), evaluations along the way, and where the model was saved."""

    evals: list[dict[str, Any]] = field(default_factory=list)


def f1_reward(record: TrainRecord, predicted: list[str]) -> float:
    """F1 of ``predicted`` against the record's known labels (unknown labels ignored); 1.0 if both are empty."""
    unknown = set(record.unknown_labels)
    truth = set(record.true_labels)
    guess = {p for p in predicted if p not in unknown}
    tp = len(guess & truth)
    denom = len(guess) + len(truth)
    return 1.0 if denom == 0 else 2 * tp / denom


class ValueHead(nn.Module):
    """Predicts an item's expected reward from its (detached) text embedding."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, 64), nn.Tanh(), nn.Linear(64, 1))

    def forward(self, embedding: torch.Tensor) -> torch.Tensor:
        return self.net(embedding).squeeze(-1)


def bernoulli_log_prob(logits: torch.Tensor, actions: torch.Tensor) -> torch.Tensor:
    return actions * F.logsigmoid(logits) + (1 - actions) * F.logsigmoid(-logits)


def bernoulli_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """KL(Bernoulli(sigmoid(p)) || Bernoulli(sigmoid(q))), elementwise."""
    p = torch.sigmoid(logits_p)
    return p * (F.logsigmoid(logits_p) - F.logsigmoid(logits_q)) + (1 - p) * (
        F.logsigmoid(-logits_p) - F.logsigmoid(-logits_q)
    )


def bernoulli_entropy(logits: torch.Tensor) -> torch.Tensor:
    p = torch.sigmoid(logits)
    return -(p * F.logsigmoid(logits) + (1 - p) * F.logsigmoid(-logits))


def actions_to_labels(batch: Batch, actions: torch.Tensor, n_records: int) -> list[list[str]]:
    """Predicted label lists per record from one sample of actions ``[U, K]`` (chunks merged)."""
    out: list[list[str]] = [[] for _ in range(n_records)]
    chosen = actions.bool().cpu().tolist()
    for u, (labels, owner) in enumerate(zip(batch.labels, batch.owners)):
        out[owner].extend(label for label, on in zip(labels, chosen[u]) if on)
    return out


def train_ppo(
    model: GLiClassModel,
    tokenizer: Any,
    train_records: Sequence[TrainRecord],
    eval_records: Sequence[TrainRecord] | None = None,
    cfg: PPOConfig | None = None,
    reward_fn: RewardFn | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    label_sampler: LabelSampler | None = None,
) -> PPOResult:
    """Run PPO on ``model`` in place; returns the reward history and evaluations (micro/macro F1).

    With ``label_sampler``, each item's label set is sampled afresh every step (vocabulary negatives
    join the action space; the item's unknown labels, their synonyms and near-synonyms are left out),
    and the reward is computed on the sampled record.
    """
    cfg = cfg or PPOConfig()
    if not train_records:
        raise ValueError("no training records")
    if cfg.baseline not in ("batch_mean", "value_head"):
        raise ValueError(f"baseline must be batch_mean or value_head, got {cfg.baseline!r}")
    seed_everything(cfg.seed)
    rng = random.Random(cfg.seed)
    generator = torch.Generator().manual_seed(cfg.seed)
    device = torch.device(cfg.device)
    model.to(device=device, dtype=torch.float32)
    model.config.problem_type = "multi_label_classification"
    builder = InputBuilder(tokenizer, model.config, cfg.max_length)
    reference = copy.deepcopy(model).eval()
    for param in reference.parameters():
        param.requires_grad_(False)
    optimizer = build_optimizer(model, cfg)  # type: ignore[arg-type]
    value_head: ValueHead | None = None
    value_optimizer = None
    if cfg.baseline == "value_head":
        value_head = ValueHead(model.config.encoder_config.hidden_size).to(device)
        value_optimizer = torch.optim.Adam(value_head.parameters(), lr=1e-3)
    reward = reward_fn or f1_reward
    uses_default_reward = reward_fn is None
    result = PPOResult()
    started = time.perf_counter()

    def run_eval(step: int) -> None:
        if not eval_records:
            return
        scores = evaluate(model, builder, eval_records, cfg.eval_mode, cfg.threshold, device=str(device))
        entry = {"step": step, "micro_f1": scores["micro_f1"], "macro_f1": scores["macro_f1"]}
        result.evals.append(entry)
        result.final_eval = scores
        logger.info("ppo step %d: held-out micro-F1 %.4f macro-F1 %.4f", step, scores["micro_f1"], scores["macro_f1"])

    run_eval(0)
    order: list[int] = []
    bar = tqdm(total=cfg.steps, desc="ppo", disable=not cfg.progress, leave=False)
    for step in range(1, cfg.steps + 1):
        model.eval()
        if len(order) < cfg.batch_size:
            fresh = list(range(len(train_records)))
            rng.shuffle(fresh)
            order.extend(fresh)
        members, order = order[: cfg.batch_size], order[cfg.batch_size :]
        records = [train_records[i] for i in members]
        if label_sampler is not None:
            records = label_sampler.sample_all(records, rng)
        batch = make_batch(builder, records, rng).to(device)
        with torch.no_grad():
            out_old = model(batch.input_ids, batch.attention_mask, return_embeddings=value_head is not None)
            old_logits = out_old.logits
            ref_logits = reference(batch.input_ids, batch.attention_mask).logits
            slots = out_old.label_mask & (batch.loss_mask if uses_default_reward else out_old.label_mask)
            probs = torch.sigmoid(old_logits).unsqueeze(0).expand(cfg.samples_per_item, -1, -1)
            actions = torch.bernoulli(probs.cpu(), generator=generator).to(device)
            actions = actions * out_old.label_mask.unsqueeze(0)
            rewards = torch.tensor(
                [
                    [reward(rec, labels) for rec, labels in zip(records, actions_to_labels(batch, actions[s], len(records)))]
                    for s in range(cfg.samples_per_item)
                ],
                dtype=torch.float32,
                device=device,
            )  # [S, R]
            if value_head is not None:
                pooled = out_old.text_embeddings.detach()
                record_embedding = torch.stack(
                    [pooled[[u for u, o in enumerate(batch.owners) if o == r]].mean(0) for r in range(len(records))]
                )
                baseline = value_head(record_embedding).detach().unsqueeze(0)
            else:
                baseline = rewards.mean()
            advantages = rewards - baseline
            if cfg.normalize_advantage and advantages.numel() > 1:
                advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-6)
            owners = torch.tensor(batch.owners, device=device)
            unit_adv = advantages[:, owners].unsqueeze(-1)  # [S, U, 1]
            old_logp = bernoulli_log_prob(old_logits.unsqueeze(0), actions)
        weights = slots.to(torch.float32).unsqueeze(0).expand_as(actions)
        stats: dict[str, float] = {}
        for _ in range(cfg.inner_iters):
            logits = model(batch.input_ids, batch.attention_mask).logits
            ratio = torch.exp(bernoulli_log_prob(logits.unsqueeze(0), actions) - old_logp)
            surrogate = torch.minimum(ratio * unit_adv, ratio.clamp(1 - cfg.clip, 1 + cfg.clip) * unit_adv)
            policy_loss = -(surrogate * weights).sum() / weights.sum().clamp(min=1)
            valid = out_old.label_mask.to(torch.float32)
            kl = (bernoulli_kl(logits, ref_logits) * valid).sum() / valid.sum().clamp(min=1)
            loss = policy_loss + cfg.kl_coef * kl
            entropy = (bernoulli_entropy(logits) * valid).sum() / valid.sum().clamp(min=1)
            if cfg.entropy_coef:
                loss = loss - cfg.entropy_coef * entropy
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if cfg.max_grad_norm:
                torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], cfg.max_grad_norm)
            optimizer.step()
            clipped = ((ratio - 1).abs() > cfg.clip).to(torch.float32)
            stats = {
                "policy_loss": float(policy_loss.detach()),
                "kl": float(kl.detach()),
                "entropy": float(entropy.detach()),
                "clip_fraction": float((clipped * weights).sum() / weights.sum().clamp(min=1)),
            }
        if value_head is not None and value_optimizer is not None:
            value_loss = F.mse_loss(value_head(record_embedding), rewards.mean(0))
            value_optimizer.zero_grad(set_to_none=True)
            value_loss.backward()
            value_optimizer.step()
            stats["value_loss"] = float(value_loss.detach())
        entry = {"step": step, "reward": float(rewards.mean()), **stats}
        result.history.append(entry)
        bar.update(1)
        bar.set_postfix(reward=f"{entry['reward']:.3f}", kl=f"{stats['kl']:.4f}")
        if eval_records and cfg.eval_every and step % cfg.eval_every == 0 and step != cfg.steps:
            run_eval(step)
    bar.close()
    run_eval(cfg.steps)
    model.eval()
    result.steps = cfg.steps
    result.seconds = time.perf_counter() - started
    if out_dir is not None:
        result.out_dir = str(save_run(model, tokenizer, out_dir, cfg, result, label_sampler))
    return result
