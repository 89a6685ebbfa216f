"""Image encoders for vision-language-action policies: images -> prefix tokens.

:class:`ConvPatchEncoder` is trained from scratch (a compact conv stem followed by a patchifying
convolution, so every token keeps its place in the image: the policy can read *where* things
are). :class:`PretrainedEncoder` wraps a backbone the user loaded from a local file. Both take
images as floats in [0, 1], ``[B, C, H, W]``, and return ``[B, n, width]`` tokens.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from pushforward._validate import check_positive_int


class ConvPatchEncoder(nn.Module):
    """Compact conv encoder: ``[B, C, H, W] -> [B, (H / patch) (W / patch), width]``.

    Two stride-2 3x3 convolutions (GroupNorm, SiLU) halve the image twice, then a
    ``patch / 4``-strided convolution cuts the feature map into non-overlapping patches (ViT's
    patch embedding, Dosovitskiy et al. 2021, on conv features as in the hybrid ViT); a learned
    position embedding per patch follows. ``patch`` must be a multiple of 4 dividing H and W.
    """

    def __init__(self, image_shape: tuple[int, int, int], width: int, patch: int = 16, channels: int = 32):
        super().__init__()
        c, h, w = image_shape
        patch = check_positive_int(patch, "patch")
        if patch % 4 or h % patch or w % patch:
            raise ValueError(f"patch must be a multiple of 4 dividing the image height and width, "
                             f"got patch={patch} for image_shape={tuple(image_shape)}")
        self.tokens = (h // patch) * (w // patch)
        self.stem = nn.Sequential(
            nn.Conv2d(c, channels, 3, stride=2, padding=1), nn.GroupNorm(8, channels), nn.SiLU(),
            nn.Conv2d(channels, 2 * channels, 3, stride=2, padding=1), nn.GroupNorm(8, 2 * channels), nn.SiLU(),
            nn.Conv2d(2 * channels, width, patch // 4, stride=patch // 4),
        )
        self.pos = nn.Parameter(torch.randn(self.tokens, width) * 0.02)

    def forward(self, images: Tensor) -> Tensor:  # noqa: D102
        return self.stem(images).flatten(2).transpose(1, 2) + self.pos


class PretrainedEncoder(nn.Module):
    """A user's backbone (e.g. a ResNet loaded from a local file) -> ``[B, n, width]`` tokens.

    ``backbone(images [B, C, H, W] in [0, 1])`` may return ``[B, D]`` (one token),
    ``[B, n, D]`` or a feature map ``[B, D, h, w]`` (``h w`` tokens); a linear layer maps D to
    the policy width and a learned position embedding is added. ``freeze=True`` keeps the
    backbone's weights fixed (no gradient). The number of tokens is found with one probe image.
    """

    def __init__(self, backbone: nn.Module, image_shape: tuple[int, int, int], width: int, freeze: bool = False):
        super().__init__()
        if not isinstance(backbone, nn.Module):
            raise TypeError(f"vision_backbone must be an nn.Module, got {type(backbone).__name__}")
        self.backbone = backbone
        if freeze:
            for p in backbone.parameters():
                p.requires_grad_(False)
        with torch.no_grad():
            p = next(backbone.parameters(), None)
            probe = torch.zeros(1, *image_shape, dtype=p.dtype if p is not None else torch.float32)
            feats = self._tokens(backbone(probe))
        self.tokens, dim = feats.shape[1], feats.shape[2]
        self.proj = nn.Linear(dim, width)
        self.pos = nn.Parameter(torch.randn(self.tokens, width) * 0.02)

    @staticmethod
    def _tokens(f: Tensor) -> Tensor:
        if f.dim() == 2:
            return f[:, None]
        if f.dim() == 4:
            return f.flatten(2).transpose(1, 2)
        if f.dim() == 3:
            return f
        raise ValueError(f"the vision backbone must return [B, D], [B, n, D] or [B, D, h, w], got {list(f.shape)}")

    def forward(self, images: Tensor) -> Tensor:  # noqa: D102
        return self.proj(self._tokens(self.backbone(images))) + self.pos
