"""The class-frequency-weighted smooth-L1 loss of Neuroverse3D."""
import torch
import torch.nn.functional as F


def weighted_smooth_l1(raw: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Smooth-L1 between the raw output and the 0/1 mask, each class weighted inversely to
    its frequency in the batch.

    Class weights ``w_c = 1 / (f_c + eps)`` (``f_c`` the fraction of voxels of class ``c``)
    are rescaled so that the mean weight over all voxels is 1; the loss is the mean of the
    weighted element-wise smooth-L1 (beta 1). Shapes of ``raw`` and ``mask`` must match.
    """
    if raw.shape != mask.shape:
        raise ValueError(f"output {list(raw.shape)} and mask {list(mask.shape)} differ in shape")
    target = (mask > 0.5).to(raw.dtype)
    foreground = target.mean()
    frequencies = torch.stack([1 - foreground, foreground])
    class_weights = 1.0 / (frequencies + eps)
    weight_map = class_weights[target.long()]
    weight_map = (weight_map / weight_map.mean()).detach()
    return (F.smooth_l1_loss(raw, target, reduction="none") * weight_map).mean()
