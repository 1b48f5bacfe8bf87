"""Segmentation losses with class weights and an ignored label.

Every loss takes logits [N, C, *] (any float dtype; computed in float32 so AMP training with
bfloat16/float16 logits stays stable) and an integer target [N, *] whose values are class
indices or `ignore_index`. Ignored pixels contribute to no numerator and no denominator.
Region losses (Dice, Tversky, the focal-Tversky part of unified focal) sum their per-class
statistics over every valid pixel of the whole batch, so a class absent from one chip does
not produce a degenerate per-image ratio. Nothing synchronises with the device except the
check that targets are in range.

Notation: p_ic = softmax(logits)_ic, g_ic = 1 if target_i == c, y_i = target_i, p_t = p_{i,y_i},
w = class weights ([C], all ones when None), sums over valid pixels i only.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from .options import IGNORE_INDEX, LOSSES


def inverse_frequency_weights(counts: list[int] | np.ndarray) -> torch.Tensor:
    """Class weights that make every present class weigh the same in total.

    w_c = N_total / (K * n_c) for the K classes with n_c > 0 and 0 for absent classes (they
    never occur as targets, and a zero keeps them out of the region-loss averages), then
    scaled so that the mean over present classes is 1, keeping the loss on its usual scale.
    """
    n = np.asarray(counts, dtype=np.float64).reshape(-1)
    if n.size == 0 or not np.all(np.isfinite(n)) or (n < 0).any():
        raise ValueError(f"class counts must be non-negative and finite (got {list(np.asarray(counts).tolist())}).")
    present = n > 0
    if not present.any():
        raise ValueError("every class count is zero: there is nothing to weight.")
    w = np.zeros_like(n)
    w[present] = n.sum() / (present.sum() * n[present])
    w /= w[present].mean()
    return torch.as_tensor(w, dtype=torch.float32)


def _safe_pow(x: torch.Tensor, exponent: float) -> torch.Tensor:
    """x ** exponent for x >= 0, with 0 (and a zero gradient) where x == 0.

    A fractional exponent has an infinite derivative at 0, which would turn into NaN gradients
    for perfectly classified pixels or classes; the double `where` keeps them finite.
    """
    if exponent == 0:
        return torch.ones_like(x)
    positive = x > 0
    return torch.where(positive, torch.where(positive, x, torch.ones_like(x)) ** exponent, torch.zeros_like(x))


class _SegLoss(nn.Module):
    """Shared input checks, float32 log-probabilities, valid mask and class weights."""

    weight: torch.Tensor  # a non-persistent buffer (register_buffer in __init__)

    def __init__(
        self, num_classes: int, class_weights: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX
    ) -> None:
        super().__init__()
        if num_classes < 1:
            raise ValueError(f"num_classes must be at least 1 (got {num_classes}).")
        if class_weights is None:
            weight = torch.ones(num_classes, dtype=torch.float32)
        else:
            weight = torch.as_tensor(class_weights, dtype=torch.float32).detach().clone().reshape(-1)
            if weight.numel() != num_classes:
                raise ValueError(f"class_weights has {weight.numel()} values for {num_classes} classes.")
            if not torch.isfinite(weight).all() or (weight < 0).any() or weight.sum() <= 0:
                raise ValueError("class_weights must be finite, non-negative and not all zero.")
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.register_buffer("weight", weight, persistent=False)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Scalar loss of logits [N, C, *] (any float dtype) against target [N, *] (long)."""
        return self._loss(*self._prepare(logits, target))

    def _loss(self, log_p: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """The loss from `_prepare`'s outputs, so a combined loss prepares its inputs once."""
        raise NotImplementedError

    def _prepare(self, logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """float32 log-softmax [N, C, *], target with ignored pixels set to class 0, valid mask [N, *]."""
        if logits.dim() < 2 or logits.shape[1] != self.num_classes:
            raise ValueError(f"logits must be [N, {self.num_classes}, ...] (got {tuple(logits.shape)}).")
        if target.shape != logits.shape[:1] + logits.shape[2:]:
            raise ValueError(f"target shape {tuple(target.shape)} does not match logits {tuple(logits.shape)}.")
        if target.dtype.is_floating_point or target.dtype.is_complex:
            raise ValueError(f"target must hold integer class indices (got {target.dtype}).")
        target = target.long()
        valid = target != self.ignore_index
        if (valid & ((target < 0) | (target >= self.num_classes))).any():
            raise ValueError(
                f"target holds values outside [0, {self.num_classes}) other than " f"ignore_index {self.ignore_index}."
            )
        safe = torch.where(valid, target, torch.zeros_like(target))
        log_p = torch.log_softmax(logits.float(), dim=1)
        return log_p, safe, valid

    def _pixel_mean(self, per_pixel: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        """sum_i w_{y_i} per_pixel_i / sum_i w_{y_i} over valid pixels; 0 (with grad) when that sum is 0."""
        pw = self.weight[safe] * valid
        den = pw.sum()
        return (pw * per_pixel).sum() / torch.where(den > 0, den, torch.ones_like(den))

    def _class_mean(self, per_class: torch.Tensor) -> torch.Tensor:
        """sum_c w_c per_class_c / sum_c w_c."""
        return (self.weight * per_class).sum() / self.weight.sum()

    @staticmethod
    def _nll(log_p: torch.Tensor, safe: torch.Tensor) -> torch.Tensor:
        """-log p_t per pixel [N, *]."""
        return -log_p.gather(1, safe.unsqueeze(1)).squeeze(1)

    def _region_stats(
        self, log_p: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """TP_c = Σ p g, FP_c = Σ p (1 - g), FN_c = Σ (1 - p) g over the batch's valid pixels, each [C]."""
        shape = (1, self.num_classes) + (1,) * (log_p.dim() - 2)
        classes = torch.arange(self.num_classes, device=log_p.device).view(shape)
        v = valid.unsqueeze(1).float()
        g = (safe.unsqueeze(1) == classes).float() * v
        p = log_p.exp() * v
        dims = [0, *range(2, log_p.dim())]
        tp = (p * g).sum(dims)
        fp = (p * (1 - g)).sum(dims)  # (1 - g) is 1 at ignored pixels, but p is 0 there
        fn = ((1 - p) * g).sum(dims)
        return tp, fp, fn


class CrossEntropyLoss(_SegLoss):
    """Weighted cross-entropy, torch semantics (= F.cross_entropy(weight=w, ignore_index=...)).

    L = Σ_i w_{y_i} (-log p_t) / Σ_i w_{y_i}. Returns 0 (with a zero gradient) when no valid
    pixel has a positive weight, where torch would return NaN: an all-nodata chip is not an error.
    """

    def _loss(self, log_p: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self._pixel_mean(self._nll(log_p, safe), safe, valid)


class FocalLoss(_SegLoss):
    """Focal loss (Lin et al. 2017): down-weights pixels that are already well classified.

    L = Σ_i w_{y_i} (1 - p_t)^γ (-log p_t) / Σ_i w_{y_i}, γ = `gamma` (default 2); γ = 0 is CE.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        gamma: float = 2.0,
    ) -> None:
        super().__init__(num_classes, class_weights, ignore_index)
        if gamma < 0:
            raise ValueError(f"gamma must be non-negative (got {gamma}).")
        self.gamma = float(gamma)

    def _loss(self, log_p: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        nll = self._nll(log_p, safe)
        factor = _safe_pow(-torch.expm1(-nll), self.gamma)  # 1 - p_t, accurate when p_t is near 1
        return self._pixel_mean(factor * nll, safe, valid)


class DiceLoss(_SegLoss):
    """Soft Dice over the batch: optimises region overlap directly, robust to class imbalance.

    I_c = Σ_i p_ic g_ic, S_c = Σ_i p_ic + Σ_i g_ic, dice_c = (2 I_c + ε) / (S_c + ε),
    L = Σ_c w_c (1 - dice_c) / Σ_c w_c, ε = `eps` (default 1). The smoothing makes a class
    absent from the batch and not predicted score dice 1, and an all-ignored batch give 0.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        eps: float = 1.0,
    ) -> None:
        super().__init__(num_classes, class_weights, ignore_index)
        if eps <= 0:
            raise ValueError(f"eps must be positive (got {eps}).")
        self.eps = float(eps)

    def _loss(self, log_p: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = self._region_stats(log_p, safe, valid)
        dice = (2 * tp + self.eps) / (2 * tp + fp + fn + self.eps)  # S_c = Σp + Σg = 2TP + FP + FN
        return self._class_mean(1 - dice)


class DiceCELoss(_SegLoss):
    """Dice + cross-entropy: CE's well-behaved pixel gradients plus Dice's region balance.

    L = Dice (ε = `eps`, default 1) + CE, a plain sum, both with the same class weights.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        eps: float = 1.0,
    ) -> None:
        super().__init__(num_classes, class_weights, ignore_index)
        self.dice = DiceLoss(num_classes, class_weights, ignore_index, eps=eps)
        self.ce = CrossEntropyLoss(num_classes, class_weights, ignore_index)

    def _loss(self, log_p: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        return self.dice._loss(log_p, safe, valid) + self.ce._loss(log_p, safe, valid)


class TverskyLoss(_SegLoss):
    """Tversky loss (Salehi et al. 2017): Dice with separate weights on false positives and negatives.

    TP_c = Σ p g, FP_c = Σ p (1 - g), FN_c = Σ (1 - p) g over the batch,
    TI_c = (TP_c + ε) / (TP_c + α FP_c + β FN_c + ε), L = Σ_c w_c (1 - TI_c) / Σ_c w_c;
    α = `alpha` (default 0.3, on FP), β = `beta` (default 0.7, on FN: favours recall), ε = `eps`
    (default 1). With α = β = 0.5 this is DiceLoss with twice this ε (equal when ε = 0).
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        alpha: float = 0.3,
        beta: float = 0.7,
        eps: float = 1.0,
    ) -> None:
        super().__init__(num_classes, class_weights, ignore_index)
        if alpha < 0 or beta < 0:
            raise ValueError(f"alpha and beta must be non-negative (got {alpha}, {beta}).")
        if eps <= 0:
            raise ValueError(f"eps must be positive (got {eps}).")
        self.alpha, self.beta, self.eps = float(alpha), float(beta), float(eps)

    def _loss(self, log_p: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        tp, fp, fn = self._region_stats(log_p, safe, valid)
        ti = (tp + self.eps) / (tp + self.alpha * fp + self.beta * fn + self.eps)
        return self._class_mean(1 - ti)


class UnifiedFocalLoss(_SegLoss):
    """Symmetric unified focal loss (Yeung et al. 2022): focal CE plus focal Tversky, one δ and γ.

    L = λ mF + (1 - λ) mFT with
    mF = Σ_i w_{y_i} δ (1 - p_t)^(1-γ) (-log p_t) / Σ_i w_{y_i},
    mFT = Σ_c w_c (1 - mTI_c)^γ / Σ_c w_c, mTI_c = (TP_c + ε) / (TP_c + δ FN_c + (1 - δ) FP_c + ε),
    TP/FP/FN as in TverskyLoss; λ = `lambda_` 0.5, δ = `delta` 0.6, γ = `gamma` 0.5. Unlike the
    paper's background/foreground split, δ applies to every class (class weights do the
    balancing). ε = `eps` defaults to 1, the same smoothing as Dice and Tversky here: with a
    tiny ε a class absent from the batch scores mTI ≈ 0 for any stray probability and
    dominates mFT. Where 1 - p_t or 1 - mTI is exactly 0 the term and its gradient are 0.
    """

    def __init__(
        self,
        num_classes: int,
        class_weights: torch.Tensor | None = None,
        ignore_index: int = IGNORE_INDEX,
        lambda_: float = 0.5,
        delta: float = 0.6,
        gamma: float = 0.5,
        eps: float = 1.0,
    ) -> None:
        super().__init__(num_classes, class_weights, ignore_index)
        for name, value in (("lambda_", lambda_), ("delta", delta), ("gamma", gamma)):
            if not 0 <= value <= 1:
                raise ValueError(f"{name} must be in [0, 1] (got {value}).")
        if eps <= 0:
            raise ValueError(f"eps must be positive (got {eps}).")
        self.lambda_, self.delta, self.gamma, self.eps = float(lambda_), float(delta), float(gamma), float(eps)

    def _loss(self, log_p: torch.Tensor, safe: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
        nll = self._nll(log_p, safe)
        factor = _safe_pow(-torch.expm1(-nll), 1 - self.gamma)
        m_f = self._pixel_mean(self.delta * factor * nll, safe, valid)
        tp, fp, fn = self._region_stats(log_p, safe, valid)
        miss = self.delta * fn + (1 - self.delta) * fp
        one_minus_mti = miss / (tp + miss + self.eps)  # exactly 1 - mTI, never negative
        m_ft = self._class_mean(_safe_pow(one_minus_mti, self.gamma))
        return self.lambda_ * m_f + (1 - self.lambda_) * m_ft


_LOSS_CLASSES: dict[str, type[_SegLoss]] = {
    "ce": CrossEntropyLoss,
    "dice": DiceLoss,
    "dice_ce": DiceCELoss,
    "focal": FocalLoss,
    "tversky": TverskyLoss,
    "unified_focal": UnifiedFocalLoss,
}


def build_loss(
    name: str, num_classes: int, class_weights: torch.Tensor | None = None, ignore_index: int = IGNORE_INDEX, **kw
) -> nn.Module:
    """The loss module called `name` (one of options.LOSSES); `kw` are its own parameters
    (gamma, eps, alpha, beta, lambda_, delta)."""
    cls = _LOSS_CLASSES.get(name)
    if cls is None:
        raise ValueError(f"Unknown loss '{name}' (use one of {', '.join(LOSSES)}).")
    return cls(num_classes, class_weights, ignore_index, **kw)
