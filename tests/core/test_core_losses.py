"""Losses against arithmetic written out by hand on a four-pixel example (one pixel ignored,
non-uniform class weights), plus identities (focal γ=0 is CE, Tversky ½/½ is Dice), the
all-ignored case, finite gradients, training behaviour and reduced-precision inputs."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from geoseg.core.losses import build_loss, inverse_frequency_weights
from geoseg.core.options import IGNORE_INDEX, LOSSES

# Four pixels, three classes. Logits are log-probabilities, so softmax gives these exactly.
PROBS = [
    (0.70, 0.20, 0.10),  # target 0: p_t = 0.70
    (0.10, 0.60, 0.30),  # target 2: p_t = 0.30
    (0.25, 0.25, 0.50),  # target 1: p_t = 0.25
    (0.20, 0.30, 0.50),  # ignored
]
TARGET = [0, 2, 1, IGNORE_INDEX]
WEIGHTS = [1.0, 2.0, 0.5]
# Σ_i w_{y_i} over the valid pixels: w0 + w2 + w1
W_PIX = 1.0 + 0.5 + 2.0
# Σ_c w_c
W_CLS = 1.0 + 2.0 + 0.5
# Per class over the three valid pixels (p_c at pixels 0, 1, 2; the class's pixel in brackets):
#   class 0: p = .70 [.70 at pixel 0], .10, .25 -> TP = .70, FP = .10 + .25 = .35, FN = 1 - .70 = .30
#   class 1: p = .20, .60, .25 [pixel 2]        -> TP = .25, FP = .20 + .60 = .80, FN = .75
#   class 2: p = .10, .30 [pixel 1], .50        -> TP = .30, FP = .10 + .50 = .60, FN = .70
TP = (0.70, 0.25, 0.30)
FP = (0.35, 0.80, 0.60)
FN = (0.30, 0.75, 0.70)


def example(n_images: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits [N, 3, 1, 4 / N] and target [N, 1, 4 / N] of the four pixels."""
    logits = torch.tensor([[math.log(p) for p in px] for px in PROBS], dtype=torch.float32)  # [4, 3]
    target = torch.tensor(TARGET)
    w = 4 // n_images
    return logits.T.reshape(3, n_images, 1, w).permute(1, 0, 2, 3).contiguous(), target.reshape(n_images, 1, w)


def loss_value(name: str, n_images: int = 1, **kw) -> float:
    logits, target = example(n_images)
    return build_loss(name, 3, torch.tensor(WEIGHTS), **kw)(logits, target).item()


def expected_ce() -> float:
    return (1.0 * -math.log(0.70) + 0.5 * -math.log(0.30) + 2.0 * -math.log(0.25)) / W_PIX


def expected_dice(eps: float = 1.0) -> float:
    # dice_c = (2 I_c + eps) / (Σ p_c + Σ g_c + eps); Σ g_c = 1 for every class here
    d0 = (2 * 0.70 + eps) / (0.70 + 0.10 + 0.25 + 1 + eps)
    d1 = (2 * 0.25 + eps) / (0.20 + 0.60 + 0.25 + 1 + eps)
    d2 = (2 * 0.30 + eps) / (0.10 + 0.30 + 0.50 + 1 + eps)
    return (1.0 * (1 - d0) + 2.0 * (1 - d1) + 0.5 * (1 - d2)) / W_CLS


@pytest.mark.parametrize("n_images", [1, 2, 4])
def test_cross_entropy_by_hand(n_images):
    assert loss_value("ce", n_images) == pytest.approx(expected_ce(), rel=1e-6)


def test_cross_entropy_matches_torch():
    logits, target = example()
    ref = torch.nn.functional.cross_entropy(logits, target, weight=torch.tensor(WEIGHTS), ignore_index=IGNORE_INDEX)
    assert loss_value("ce") == pytest.approx(ref.item(), rel=1e-6)


def test_focal_by_hand():
    expected = (
        1.0 * 0.30**2 * -math.log(0.70) + 0.5 * 0.70**2 * -math.log(0.30) + 2.0 * 0.75**2 * -math.log(0.25)
    ) / W_PIX
    assert loss_value("focal") == pytest.approx(expected, rel=1e-5)
    expected_g1 = (1.0 * 0.30 * -math.log(0.70) + 0.5 * 0.70 * -math.log(0.30) + 2.0 * 0.75 * -math.log(0.25)) / W_PIX
    assert loss_value("focal", gamma=1.0) == pytest.approx(expected_g1, rel=1e-5)


@pytest.mark.parametrize("n_images", [1, 2, 4])
def test_dice_by_hand(n_images):
    """Statistics are summed over the whole batch, so splitting the pixels into images changes nothing."""
    assert loss_value("dice", n_images) == pytest.approx(expected_dice(), rel=1e-5)
    assert loss_value("dice", n_images, eps=0.1) == pytest.approx(expected_dice(0.1), rel=1e-5)


def test_dice_ce_by_hand():
    assert loss_value("dice_ce") == pytest.approx(expected_dice() + expected_ce(), rel=1e-5)


@pytest.mark.parametrize("n_images", [1, 4])
def test_tversky_by_hand(n_images):
    # TI_c = (TP + 1) / (TP + 0.3 FP + 0.7 FN + 1)
    t0 = (0.70 + 1) / (0.70 + 0.3 * 0.35 + 0.7 * 0.30 + 1)
    t1 = (0.25 + 1) / (0.25 + 0.3 * 0.80 + 0.7 * 0.75 + 1)
    t2 = (0.30 + 1) / (0.30 + 0.3 * 0.60 + 0.7 * 0.70 + 1)
    expected = (1.0 * (1 - t0) + 2.0 * (1 - t1) + 0.5 * (1 - t2)) / W_CLS
    assert loss_value("tversky", n_images) == pytest.approx(expected, rel=1e-5)


def test_unified_focal_by_hand():
    # mF: δ = 0.6, exponent 1 - γ = 0.5
    m_f = (
        1.0 * 0.6 * 0.30**0.5 * -math.log(0.70)
        + 0.5 * 0.6 * 0.70**0.5 * -math.log(0.30)
        + 2.0 * 0.6 * 0.75**0.5 * -math.log(0.25)
    ) / W_PIX
    # mTI_c = (TP + 1) / (TP + 0.6 FN + 0.4 FP + 1), eps = 1
    m0 = (0.70 + 1) / (0.70 + 0.6 * 0.30 + 0.4 * 0.35 + 1)
    m1 = (0.25 + 1) / (0.25 + 0.6 * 0.75 + 0.4 * 0.80 + 1)
    m2 = (0.30 + 1) / (0.30 + 0.6 * 0.70 + 0.4 * 0.60 + 1)
    m_ft = (1.0 * (1 - m0) ** 0.5 + 2.0 * (1 - m1) ** 0.5 + 0.5 * (1 - m2) ** 0.5) / W_CLS
    assert loss_value("unified_focal") == pytest.approx(0.5 * m_f + 0.5 * m_ft, rel=1e-5)
    assert loss_value("unified_focal", lambda_=1.0) == pytest.approx(m_f, rel=1e-5)
    assert loss_value("unified_focal", lambda_=0.0) == pytest.approx(m_ft, rel=1e-5)


def test_hand_constants_are_consistent():
    """The TP/FP/FN table above follows from PROBS and TARGET (guards the hand arithmetic)."""
    for c in range(3):
        valid = [(p, t) for p, t in zip(PROBS, TARGET, strict=True) if t != IGNORE_INDEX]
        assert sum(p[c] for p, t in valid if t == c) == pytest.approx(TP[c])
        assert sum(p[c] for p, t in valid if t != c) == pytest.approx(FP[c])
        assert sum(1 - p[c] for p, t in valid if t == c) == pytest.approx(FN[c])


@pytest.mark.parametrize("name", LOSSES)
def test_ignored_pixel_has_no_effect(name):
    logits, target = example()
    loss = build_loss(name, 3, torch.tensor(WEIGHTS))
    other = logits.clone()
    other[0, :, 0, 3] = torch.tensor([9.0, -4.0, 2.0])
    other.requires_grad_(True)
    value = loss(other, target)
    assert value.item() == pytest.approx(loss(logits, target).item(), rel=1e-6)
    value.backward()
    assert torch.all(other.grad[0, :, 0, 3] == 0)
    assert torch.any(other.grad[0, :, 0, :3] != 0)


def test_focal_gamma_zero_is_ce():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = IGNORE_INDEX
    w = torch.tensor([0.5, 1.0, 2.0, 1.5])
    focal = build_loss("focal", 4, w, gamma=0.0)(logits, target)
    ce = build_loss("ce", 4, w)(logits, target)
    assert focal.item() == pytest.approx(ce.item(), rel=1e-6)


def test_tversky_half_half_is_dice():
    """(TP + ε) / (TP + FP/2 + FN/2 + ε) = (2TP + 2ε) / (2TP + FP + FN + 2ε): Dice with smoothing 2ε."""
    torch.manual_seed(1)
    logits = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[1, 3:] = IGNORE_INDEX
    w = torch.tensor([0.5, 1.0, 2.0, 1.5])
    for eps in (0.5, 1.0):
        tversky = build_loss("tversky", 4, w, alpha=0.5, beta=0.5, eps=eps)(logits, target)
        dice = build_loss("dice", 4, w, eps=2 * eps)(logits, target)
        assert tversky.item() == pytest.approx(dice.item(), rel=1e-6)


@pytest.mark.parametrize("name", LOSSES)
def test_all_ignored_gives_zero_and_backward_works(name):
    logits = torch.randn(2, 3, 4, 4, requires_grad=True)
    target = torch.full((2, 4, 4), IGNORE_INDEX)
    value = build_loss(name, 3, torch.tensor(WEIGHTS))(logits, target)
    assert value.item() == 0.0
    value.backward()
    assert torch.all(logits.grad == 0)


@pytest.mark.parametrize("name", LOSSES)
def test_gradients_finite_even_when_saturated(name):
    """Logits of ±100 make p_t exactly 1 (and 1 - mTI exactly 0) in float32, where fractional
    powers have infinite derivatives."""
    target = torch.tensor([[[0, 1, 2, IGNORE_INDEX]]])
    perfect = torch.full((1, 3, 1, 4), -100.0)
    for i, c in enumerate([0, 1, 2, 0]):
        perfect[0, c, 0, i] = 100.0
    torch.manual_seed(2)
    for logits in (perfect, torch.randn(1, 3, 1, 4) * 30, torch.randn(1, 3, 1, 4)):
        x = logits.clone().requires_grad_(True)
        value = build_loss(name, 3, torch.tensor(WEIGHTS))(x, target)
        value.backward()
        assert torch.isfinite(value)
        assert torch.all(torch.isfinite(x.grad))


@pytest.mark.parametrize("name", LOSSES)
def test_sgd_steps_reduce_loss(name):
    torch.manual_seed(3)
    target = torch.randint(0, 3, (2, 6, 6))
    target[0, 0] = IGNORE_INDEX
    logits = torch.randn(2, 3, 6, 6, requires_grad=True)
    loss = build_loss(name, 3, torch.tensor(WEIGHTS))
    opt = torch.optim.SGD([logits], lr=100.0)  # mean losses: per-logit gradients scale as 1 / 71 pixels
    values = []
    for _ in range(30):
        opt.zero_grad()
        value = loss(logits, target)
        value.backward()
        opt.step()
        values.append(value.item())
    assert values[-1] < 0.3 * values[0]
    assert all(b < a for a, b in itertools.pairwise(values))
    hits = (logits.argmax(1) == target)[target != IGNORE_INDEX]
    assert hits.float().mean() > 0.9


@pytest.mark.parametrize("name", LOSSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_logits(name, dtype):
    torch.manual_seed(4)
    logits = torch.randn(2, 3, 8, 8) * 3
    target = torch.randint(0, 3, (2, 8, 8))
    target[:, :2] = IGNORE_INDEX
    loss = build_loss(name, 3, torch.tensor(WEIGHTS))
    low = logits.to(dtype).requires_grad_(True)
    value = loss(low, target)
    assert value.dtype == torch.float32
    # computed in float32: identical to the float32 loss of the same rounded logits ...
    assert value.item() == pytest.approx(loss(low.detach().float(), target).item(), rel=1e-6)
    # ... and close to the float32 loss of the unrounded ones
    assert value.item() == pytest.approx(loss(logits, target).item(), rel=2e-2)
    value.backward()
    assert low.grad.dtype == dtype and torch.all(torch.isfinite(low.grad.float()))


def test_build_loss_names_and_errors():
    assert set(LOSSES) == {"ce", "dice", "dice_ce", "focal", "tversky", "unified_focal"}
    for name in LOSSES:
        assert isinstance(build_loss(name, 3), torch.nn.Module)
    with pytest.raises(ValueError, match="ce, dice, dice_ce, focal, tversky, unified_focal"):
        build_loss("lovasz", 3)
    with pytest.raises(ValueError, match="3 classes"):
        build_loss("ce", 3, torch.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        build_loss("dice", 2, torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="gamma"):
        build_loss("focal", 2, gamma=-1.0)
    with pytest.raises(TypeError):
        build_loss("ce", 2, gamma=2.0)


def test_input_checks():
    loss = build_loss("dice_ce", 3)
    with pytest.raises(ValueError, match="outside"):
        loss(torch.zeros(1, 3, 2, 2), torch.tensor([[[0, 1], [3, 2]]]))
    with pytest.raises(ValueError, match="logits"):
        loss(torch.zeros(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="target shape"):
        loss(torch.zeros(1, 3, 2, 2), torch.zeros(1, 2, 3, dtype=torch.long))
    # the unweighted default equals all-ones weights
    logits, target = example()
    assert build_loss("dice_ce", 3)(logits, target).item() == pytest.approx(
        build_loss("dice_ce", 3, torch.ones(3))(logits, target).item()
    )


def test_weights_are_copied_non_persistent_buffers():
    w = torch.tensor(WEIGHTS)
    loss = build_loss("tversky", 3, w)
    w[0] = 100.0  # the caller's tensor is not shared
    assert loss(*example()).item() == pytest.approx(loss_value("tversky"), rel=1e-6)
    assert "weight" in dict(loss.named_buffers())  # moves with .to(device)
    assert loss.state_dict() == {}  # derived from the data, not saved with a checkpoint


def test_inverse_frequency_weights():
    # 1/n ∝ 6, 2, 1 (over 600) for the present classes; their mean is 3, so the weights are 2, 2/3, 1/3
    w = inverse_frequency_weights([100, 300, 0, 600])
    assert w.dtype == torch.float32
    assert w.tolist() == pytest.approx([2.0, 2 / 3, 0.0, 1 / 3], rel=1e-6)
    # the unnormalised form N / (K n_c) = 1000 / (3 n_c) has the same ratios
    raw = [1000 / (3 * 100), 1000 / (3 * 300), 1000 / (3 * 600)]
    assert [w[0] / w[1], w[1] / w[3]] == pytest.approx([raw[0] / raw[1], raw[1] / raw[2]])
    assert inverse_frequency_weights(np.array([5, 5])).tolist() == [1.0, 1.0]
    with pytest.raises(ValueError):
        inverse_frequency_weights([0, 0])
    with pytest.raises(ValueError):
        inverse_frequency_weights([3, -1])
