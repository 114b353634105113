"""The WS-ICL network: the dual-branch 3D U-Net of Neuroverse3D.

Tensors are channel-first volumes in array-index order: ``[B, C, D, H, W]`` for one image
per batch item and ``[B, L, C, D, H, W]`` for L context images per batch item.

Three parts share the stage layout ``channels[0] .. channels[-1]`` (one stage per entry,
each stage below the first at half the resolution of the one above):

- the *target encoder* embeds the target and keeps one feature map per stage;
- the *context U-Net* embeds image + prompt (2 channels), mixes the target's features into
  every encoder stage, and returns its bottleneck and decoder features;
- the *target decoder* mixes the context features, averaged over all context images, into
  every decoder stage and ends in a residual unit and a 1x1x1 convolution.

Attribute names follow the reference implementation so that the released WS-ICL and
Neuroverse3D weights load unchanged (``PerImage`` plays the role of the reference's
``Vmap``, which is why its parameter names carry ``.module.``).
"""
from typing import Callable, List, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

FeatureList = List[torch.Tensor]


class PerImage(nn.Module):
    """Applies ``module`` to every image of a ``[B, L, C, ...]`` tensor (B and L folded)."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, images = x.shape[:2]
        y = self.module(x.reshape(batch * images, *x.shape[2:]))
        return y.reshape(batch, images, *y.shape[1:])


def _cpu_autocast() -> bool:
    """Whether CPU autocast is on (the call's name changed in torch 2.4)."""
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:                                   # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def pointwise(x: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor] = None
              ) -> torch.Tensor:
    """``F.conv3d(x, weight, bias)`` for a 1x1x1 ``weight`` ``[O, C, 1, 1, 1]`` and ``x``
    ``[N, C, D, H, W]``: the same sums over channels.

    On the CPU in float32 PyTorch sends 1x1x1 3D convolutions to its im2col kernel, whose
    output is channels-first, so the channels-last layers around it convert every such
    feature map back and forth. ``x`` viewed as ``[N, D, H, W, C]`` (no copy when it is
    channels-last) is a matrix, and one matrix product gives the same sums, channels-last,
    about 4x faster with its backward. bfloat16 (autocast) and GPUs keep the convolution,
    which oneDNN and cuDNN run well there.
    """
    if x.device.type == "cpu" and x.dtype == torch.float32 and not _cpu_autocast():
        return F.linear(x.permute(0, 2, 3, 4, 1), weight.flatten(1), bias).permute(0, 4, 1, 2, 3)
    return F.conv3d(x, weight, bias)


class Pointwise(nn.Conv3d):
    """A 1x1x1 convolution module computed by :func:`pointwise` (parameters and their
    names as ``nn.Conv3d``'s, so checkpoints load unchanged)."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return pointwise(x, self.weight, self.bias)


def conv1(in_channels: int, out_channels: int) -> nn.Conv3d:
    """A 1x1x1 convolution."""
    return Pointwise(in_channels, out_channels)


def down(in_channels: int, out_channels: int) -> nn.Conv3d:
    """A 4x4x4 stride-2 convolution that halves each spatial size."""
    return nn.Conv3d(in_channels, out_channels, kernel_size=4, stride=2, padding=1)


def up(x: torch.Tensor) -> torch.Tensor:
    """Trilinear x2 upsampling of ``[N, C, D, H, W]`` (half-pixel centres)."""
    return F.interpolate(x, scale_factor=2, mode="trilinear", align_corners=False)


def mix(conv: nn.Conv3d, own: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """``conv(cat([own, other], channels))`` without materialising the concatenation.

    ``own`` is ``[N, C, ...]``; ``other`` is ``[M, C, ...]`` with ``N`` a multiple of ``M``
    (one ``other`` shared by ``N / M`` consecutive ``own`` items). The 1x1x1 convolution is
    split into its two halves, so the shared term is computed once and broadcast.
    """
    channels = own.shape[1]
    weight = conv.weight
    own_term = pointwise(own, weight[:, :channels], conv.bias)
    other_term = pointwise(other, weight[:, channels:])
    repeats = own.shape[0] // other.shape[0]
    own_term = own_term.reshape(other.shape[0], repeats, *own_term.shape[1:])
    return (own_term + other_term.unsqueeze(1)).reshape(own.shape[0], *own_term.shape[2:])


class ResidualUnit(nn.Module):
    """``gelu(x + conv(gelu(conv(...(x)))))`` with ``convs`` 3x3x3 'same' convolutions."""

    def __init__(self, channels: int, convs: int) -> None:
        super().__init__()
        layers: List[nn.Module] = []
        for index in range(convs):
            layers.append(nn.Conv3d(channels, channels, kernel_size=3, padding=1))
            if index < convs - 1:
                layers.append(nn.GELU())
        self.layers = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.layers(x).add_(x))


class TargetStage(nn.Module):
    """Target-encoder stage: a residual unit."""

    def __init__(self, channels: int, convs: int) -> None:
        super().__init__()
        self.target_conv = ResidualUnit(channels, convs)


class ContextStage(nn.Module):
    """Context stage; with ``mixes_target`` it adds a 1x1x1 mix-in of the target features."""

    def __init__(self, channels: int, convs: int, mixes_target: bool) -> None:
        super().__init__()
        self.context_conv = PerImage(ResidualUnit(channels, convs))
        if mixes_target:
            self.combine_conv_context = PerImage(conv1(2 * channels, channels))

    def forward(self, context: torch.Tensor, target: torch.Tensor = None) -> torch.Tensor:
        """``context`` ``[B*L, C, ...]`` (folded), ``target`` ``[B, C, ...]`` or None."""
        context = self.context_conv.module(context)
        if target is None:
            return context
        return F.gelu(mix(self.combine_conv_context.module, context, target).add_(context))


class DecoderStage(nn.Module):
    """Target-decoder stage: residual unit, then a mix-in of the mean context features."""

    def __init__(self, channels: int, convs: int) -> None:
        super().__init__()
        self.target_conv = ResidualUnit(channels, convs)
        self.combine_conv_target = PerImage(conv1(2 * channels, channels))

    def forward(self, context_mean: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``context_mean`` and ``target`` both ``[B, C, ...]``."""
        target = self.target_conv(target)
        return F.gelu(mix(self.combine_conv_target.module, context_mean, target).add_(target))


class DownSample(nn.Module):
    """Holds the stride-2 convolution under the reference's attribute name."""

    def __init__(self, in_channels: int, out_channels: int, branch: str) -> None:
        super().__init__()
        if branch == "context":
            self.context_linear_layer = PerImage(down(in_channels, out_channels))
        else:
            self.target_linear_layer = down(in_channels, out_channels)


class UpSample(nn.Module):
    """Holds the 1x1x1 convolution applied after upsampling and concatenating the shortcut."""

    def __init__(self, in_channels: int, shortcut_channels: int, out_channels: int,
                 branch: str) -> None:
        super().__init__()
        if branch == "context":
            self.context_conv_layer = PerImage(conv1(in_channels + shortcut_channels, out_channels))
        else:
            self.target_conv_layer = conv1(in_channels + shortcut_channels, out_channels)


def upsample_concat(conv: nn.Conv3d, x: torch.Tensor, shortcut: torch.Tensor) -> torch.Tensor:
    """``conv(cat([up(x), shortcut], channels))``, computed without the concatenation.

    Trilinear upsampling and a 1x1x1 convolution are both linear and commute, so the part
    of ``conv`` that reads ``x`` runs at the coarse resolution and is upsampled after it
    (fewer channels to upsample, no full-resolution concatenation).
    """
    channels = x.shape[1]
    coarse = pointwise(x, conv.weight[:, :channels])
    result = pointwise(shortcut, conv.weight[:, channels:], conv.bias)
    return result.add_(up(coarse))


class TargetEncoder(nn.Module):
    def __init__(self, channels: Sequence[int], convs: int, in_channels: int) -> None:
        super().__init__()
        self.target_embedding = conv1(in_channels, channels[0])
        self.enc_blocks = nn.ModuleList(TargetStage(c, convs) for c in channels[:-1])
        self.downsample_blocks = nn.ModuleList(
            DownSample(a, b, "target") for a, b in zip(channels[:-1], channels[1:]))

    def forward(self, target: torch.Tensor) -> Tuple[FeatureList, torch.Tensor]:
        """Returns the per-stage features (full resolution first) and the bottleneck input."""
        x = self.target_embedding(target)
        features = []
        for stage, downsample in zip(self.enc_blocks, self.downsample_blocks):
            x = stage.target_conv(x)
            features.append(x)
            x = downsample.target_linear_layer(x)
        return features, x


class ContextUNet(nn.Module):
    def __init__(self, channels: Sequence[int], convs: int, in_channels: int,
                 out_channels: int) -> None:
        super().__init__()
        stages = len(channels)
        self.context_embedding = PerImage(conv1(in_channels + out_channels, channels[0]))
        self.enc_blocks = nn.ModuleList(
            ContextStage(c, convs, mixes_target=i < stages - 1) for i, c in enumerate(channels))
        self.downsample_blocks = nn.ModuleList(
            DownSample(a, b, "context") for a, b in zip(channels[:-1], channels[1:]))
        reversed_channels = list(channels[::-1])
        self.dec_blocks = nn.ModuleList(
            ContextStage(c, convs, mixes_target=False) for c in reversed_channels[1:])
        self.upsample_blocks = nn.ModuleList(
            UpSample(a, b, b, "context") for a, b in zip(reversed_channels[:-1],
                                                         reversed_channels[1:]))

    def forward(self, images: torch.Tensor, prompts: torch.Tensor,
                target_features: FeatureList) -> FeatureList:
        """Context features for ``images`` and ``prompts`` ``[B, L, 1, ...]``.

        Returns the per-image mean over L of the bottleneck and each decoder stage's output
        (coarsest first), each ``[B, C, ...]``.
        """
        batch, images_per_item = images.shape[:2]
        x = torch.cat([images, prompts.to(images.dtype)], dim=2)
        x = x.reshape(batch * images_per_item, *x.shape[2:])
        x = self.context_embedding.module(x)
        shortcuts = []
        for stage, downsample, target in zip(self.enc_blocks, self.downsample_blocks,
                                             target_features):
            x = stage(x, target)
            shortcuts.append(x)
            x = downsample.context_linear_layer.module(x)
        x = self.enc_blocks[-1](x)
        features = [x]
        for upsample, stage, shortcut in zip(self.upsample_blocks, self.dec_blocks,
                                             reversed(shortcuts)):
            x = stage(upsample_concat(upsample.context_conv_layer.module, x, shortcut))
            features.append(x)
        if images_per_item == 1:
            return features
        return [f.reshape(batch, images_per_item, *f.shape[1:]).mean(dim=1) for f in features]


class OutputBlock(nn.Module):
    def __init__(self, channels: int, convs: int, out_channels: int) -> None:
        super().__init__()
        self.block = nn.Sequential(ResidualUnit(channels, convs), conv1(channels, out_channels))


class TargetDecoder(nn.Module):
    def __init__(self, channels: Sequence[int], convs: int, out_channels: int) -> None:
        super().__init__()
        reversed_channels = list(channels[::-1])
        self.enc_blocks = nn.ModuleList([DecoderStage(channels[-1], convs)])
        self.dec_blocks = nn.ModuleList(DecoderStage(c, convs) for c in reversed_channels[1:])
        self.upsample_blocks = nn.ModuleList(
            UpSample(a, b, b, "target") for a, b in zip(reversed_channels[:-1],
                                                        reversed_channels[1:]))
        self.output_block = OutputBlock(channels[0], convs, out_channels)

    def forward(self, bottleneck: torch.Tensor, context_means: FeatureList,
                target_features: FeatureList) -> torch.Tensor:
        x = self.enc_blocks[0](context_means[0], bottleneck)
        for upsample, stage, context_mean, shortcut in zip(
                self.upsample_blocks, self.dec_blocks, context_means[1:],
                reversed(target_features)):
            x = stage(context_mean, upsample_concat(upsample.target_conv_layer, x, shortcut))
        return self.output_block.block(x)


EncodedTarget = Tuple[FeatureList, torch.Tensor]
"""The target encoder's per-stage features (full resolution first) and bottleneck input."""


class WSICLNet(nn.Module):
    """The WS-ICL / Neuroverse3D network.

    Args:
        channels: feature channels per stage, e.g. ``(32, 64, 128, 256, 512)`` for the
            released weights. Spatial input sizes must be divisible by
            ``2 ** (len(channels) - 1)``.
        convs_per_stage: 3x3x3 convolutions in each residual unit.
        in_channels, out_channels: image and prompt/output channels (1 and 1).
    """

    def __init__(self, channels: Sequence[int] = (32, 64, 128, 256, 512), convs_per_stage: int = 2,
                 in_channels: int = 1, out_channels: int = 1) -> None:
        super().__init__()
        if len(channels) < 2 or min(channels) < 1 or convs_per_stage < 1:
            raise ValueError(f"invalid architecture: channels={list(channels)}, "
                             f"convs_per_stage={convs_per_stage}")
        self.channels = [int(c) for c in channels]
        self.convs_per_stage = int(convs_per_stage)
        self.context_unet = ContextUNet(self.channels, convs_per_stage, in_channels, out_channels)
        self.target_encoder = TargetEncoder(self.channels, convs_per_stage, in_channels)
        self.target_decoder = TargetDecoder(self.channels, convs_per_stage, out_channels)

    @property
    def size_multiple(self) -> int:
        """Each spatial input size must be a multiple of this."""
        return 2 ** (len(self.channels) - 1)

    def encode_target(self, target: torch.Tensor) -> "EncodedTarget":
        """The target encoder's features, which depend on the target alone: computed once,
        they serve every context set and prompt update on the same target (``encoded``)."""
        return self.target_encoder(target)

    def forward(self, target: torch.Tensor, context_in: torch.Tensor, context_out: torch.Tensor,
                mini_context: int = 1,
                after_chunk: Optional[Callable[[int], None]] = None,
                encoded: Optional["EncodedTarget"] = None) -> torch.Tensor:
        """Segments ``target`` given the context images and their prompt channels.

        Args:
            target: ``[B, 1, D, H, W]`` normalised target image.
            context_in: ``[B, L, 1, D, H, W]`` normalised context images (may live on the CPU
                while the network is on a GPU: each mini-context is moved when it is used).
            context_out: ``[B, L, 1, D, H, W]`` prompt channels of the context images.
            mini_context: context images processed at once (``l``); the context features are
                folded into a running mean, so peak memory depends on ``l``, not on ``L``.
                Gradients flow only through the last mini-context, as in the reference.
            after_chunk: called with the number of context images done after each
                mini-context (progress reports; an exception raised there cancels).
            encoded: ``encode_target(target)`` computed earlier (not modified here).

        Returns:
            ``[B, 1, D, H, W]`` raw output; threshold at 0.5 for the mask.
        """
        self._check_inputs(target, context_in, context_out, mini_context)
        device = target.device
        target_features, bottleneck = encoded if encoded is not None else \
            self.encode_target(target)
        total = context_in.shape[1]
        starts = list(range(0, total, mini_context))
        means: FeatureList = []
        for start in starts:
            chunk = slice(start, start + mini_context)
            images = context_in[:, chunk].to(device, target.dtype)
            prompts = context_out[:, chunk].to(device)
            last = start == starts[-1]
            with torch.set_grad_enabled(torch.is_grad_enabled() and last):
                chunk_means = [f.float() for f in
                               self.context_unet(images, prompts, target_features)]
            count = images.shape[1]
            if not means:
                means = chunk_means
            else:
                weight = count / (start + count)
                means = [m.mul_(1.0 - weight).add_(c, alpha=weight)
                         for m, c in zip(means, chunk_means)]
            del chunk_means
            if after_chunk is not None:
                after_chunk(start + count)
        return self.target_decoder(bottleneck, means, target_features)

    def _check_inputs(self, target: torch.Tensor, context_in: torch.Tensor,
                      context_out: torch.Tensor, mini_context: int) -> None:
        if target.dim() != 5:
            raise ValueError(f"target must be [B, 1, D, H, W], got shape {list(target.shape)}")
        if context_in.dim() != 6 or context_out.dim() != 6:
            raise ValueError("context_in and context_out must be [B, L, 1, D, H, W], got "
                             f"{list(context_in.shape)} and {list(context_out.shape)}")
        if context_in.shape[1] == 0:
            raise ValueError("the context is empty: give at least one context image")
        if context_in.shape[:2] != context_out.shape[:2] or \
                context_in.shape[3:] != target.shape[2:] or \
                context_out.shape[3:] != target.shape[2:]:
            raise ValueError("target, context_in and context_out disagree in shape: "
                             f"{list(target.shape)}, {list(context_in.shape)}, "
                             f"{list(context_out.shape)}")
        if any(s % self.size_multiple for s in target.shape[2:]):
            raise ValueError(f"spatial size {list(target.shape[2:])} is not a multiple of "
                             f"{self.size_multiple} (needed by {len(self.channels)} stages)")
        if mini_context < 1:
            raise ValueError(f"mini_context must be at least 1, got {mini_context}")
