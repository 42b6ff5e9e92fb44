"""Geometric video transforms on float tensors."""

import torch
import torch.nn.functional as F


def resize_center_crop(video: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
    """Resize keeping the aspect ratio so the frames cover ``size``, then crop the centre.

    For a square target this is "shorter side to target"; in general the scale is the smallest
    one at which neither side falls short of the target.

    Args:
        video: float tensor [T, C, H, W].
        size: target (height, width).

    Returns:
        Float tensor [T, C, height, width].
    """
    height, width = size
    in_height, in_width = video.shape[-2:]
    scale = max(height / in_height, width / in_width)
    # max() guards against rounding a side just below the target.
    new_height = max(height, round(in_height * scale))
    new_width = max(width, round(in_width * scale))
    if (new_height, new_width) != (in_height, in_width):
        # antialias avoids aliasing when downscaling; it is a no-op when upscaling.
        video = F.interpolate(
            video,
            size=(new_height, new_width),
            mode="bilinear",
            align_corners=False,
            antialias=True,
        )
    top, left = (new_height - height) // 2, (new_width - width) // 2
    return video[..., top : top + height, left : left + width]
