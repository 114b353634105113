"""The class-weighted smooth-L1 loss on hand-computed examples."""
import pytest
import torch

from wsicl.training.losses import weighted_smooth_l1


def test_hand_computed_example():
    mask = torch.tensor([1.0, 0.0, 0.0, 0.0]).reshape(1, 1, 1, 2, 2)
    raw = torch.tensor([0.0, 0.5, 2.0, 0.0]).reshape(1, 1, 1, 2, 2)
    # frequencies 0.75 / 0.25 -> weights 1/0.75, 1/0.25 (eps negligible) -> mean weight 2
    # -> foreground weight 2, background weight 2/3.
    # smooth-L1 (beta 1): |0-1| = 1 -> 0.5; 0.5 -> 0.125; 2 -> 1.5; 0 -> 0.
    expected = (2.0 * 0.5 + (2 / 3) * (0.125 + 1.5 + 0.0)) / 4
    assert weighted_smooth_l1(raw, mask).item() == pytest.approx(expected, rel=1e-4)


def test_single_class_is_plain_smooth_l1():
    raw = torch.tensor([0.2, -0.3, 3.0]).reshape(1, 1, 1, 1, 3)
    mask = torch.zeros_like(raw)
    plain = torch.nn.functional.smooth_l1_loss(raw, mask)
    assert weighted_smooth_l1(raw, mask).item() == pytest.approx(plain.item(), rel=1e-5)


def test_perfect_output_has_zero_loss_and_shapes_must_match():
    mask = (torch.rand(1, 1, 4, 4, 4) > 0.7).float()
    assert weighted_smooth_l1(mask.clone(), mask).item() == 0.0
    with pytest.raises(ValueError, match="differ in shape"):
        weighted_smooth_l1(torch.zeros(1, 1, 4, 4, 4), torch.zeros(1, 1, 4, 4, 2))
