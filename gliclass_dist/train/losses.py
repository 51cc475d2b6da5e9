"""Losses over label logits ``[B, K]`` with a mask of the slots that count."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def focal_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    alpha: float = 0.5,
    gamma: float = 2.0,
) -> torch.Tensor:
    """Sigmoid focal loss averaged over masked-in slots; ``gamma=0, alpha<0`` is plain BCE.

    ``loss = -alpha_t * (1 - p_t) ** gamma * log(p_t)`` with ``p_t`` the probability of the
    target and ``alpha_t = alpha`` for positives, ``1 - alpha`` for negatives (no weighting when
    ``alpha < 0``).
    """
    mask = mask.to(logits.dtype)
    targets = targets.to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    loss = bce
    if gamma > 0:
        p = torch.sigmoid(logits)
        p_t = p * targets + (1 - p) * (1 - targets)
        loss = loss * (1 - p_t).pow(gamma)
    if alpha >= 0:
        loss = loss * (alpha * targets + (1 - alpha) * (1 - targets))
    return (loss * mask).sum() / mask.sum().clamp(min=1.0)


def bce_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy over masked-in slots."""
    return focal_loss(logits, targets, mask, alpha=-1.0, gamma=0.0)


def softmax_ce_loss(logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of a softmax over each row's labels; several true labels share the target mass.

    Rows without any true label (among the masked-in slots) are skipped.
    """
    valid = mask.bool()
    masked_logits = logits.masked_fill(~valid, torch.finfo(logits.dtype).min)
    pos = targets.to(logits.dtype) * valid.to(logits.dtype)
    count = pos.sum(dim=-1)
    keep = count > 0
    if not bool(keep.any()):
        return logits.sum() * 0.0
    log_probs = F.log_softmax(masked_logits[keep], dim=-1)
    dist = pos[keep] / count[keep].unsqueeze(-1)
    return -(dist * log_probs.masked_fill(~valid[keep], 0.0)).sum(dim=-1).mean()


def compute_loss(
    kind: str, logits: torch.Tensor, targets: torch.Tensor, mask: torch.Tensor, alpha: float, gamma: float
) -> torch.Tensor:
    """``focal`` | ``bce`` (multi-label) or ``ce`` (single-label)."""
    if kind == "focal":
        return focal_loss(logits, targets, mask, alpha, gamma)
    if kind == "bce":
        return bce_loss(logits, targets, mask)
    if kind == "ce":
        return softmax_ce_loss(logits, targets, mask)
    raise ValueError(f"loss must be 'focal', 'bce' or 'ce', got {kind!r}")
