"""ComfyUI IMAGE tensors (B, H, W, C in [0, 1]) to and from the core's (B, 3, H, W)."""
import torch
import torch.nn.functional as F

from ..models.errors import DPIRInputError


def bchw_view(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """RGB (B, 3, H, W) float32 view of an IMAGE (a copy only if it is not float32), values as they are;
    greyscale is repeated, alpha dropped, NaN/Inf refused."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 2, 3, 4) or min(image.shape[:3]) < 1:
        raise DPIRInputError(f"the {what} must be a ComfyUI IMAGE (batch, height, width, channels), got "
                             f"{tuple(image.shape)}; wire the output of Load Image or another image node")
    x = image.float()
    # max and min carry NaN and ±inf through: no image-size mask (an 8K image's would be 0.2 GB)
    if not (torch.isfinite(x.amax()) and torch.isfinite(x.amin())):
        raise DPIRInputError(f"the {what} contains NaN or infinite values; check the node that produced it")
    c = x.shape[-1]
    x = x[..., :3] if c >= 3 else x[..., :1].expand(*x.shape[:-1], 3)
    return x.movedim(-1, 1)


def to_bchw(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """``bchw_view`` as a contiguous copy clamped to [0, 1]."""
    return _clamped_copy(bchw_view(image, what))


def to_bhwc(images: torch.Tensor) -> torch.Tensor:
    return _clamped_copy(images.movedim(1, -1))


def _clamped_copy(view: torch.Tensor) -> torch.Tensor:
    """A contiguous copy of ``view`` clamped to [0, 1], made in one pass over the image's size (an 8K image is
    0.8 GB): never the caller's own storage."""
    return view.clamp(0, 1) if view.is_contiguous() else view.contiguous().clamp_(0, 1)


PREVIEW_SIDE = 2048  # px, longest side of the pack's preview pictures: an 8K PNG is slow to write and to show


def preview_of(images: torch.Tensor, side: int = PREVIEW_SIDE) -> torch.Tensor:
    """(B, C, H, W) images shrunk (antialiased) to at most ``side`` px on the longest side; smaller ones as they are."""
    h, w = images.shape[-2:]
    k = side / max(h, w)
    if k >= 1:
        return images
    size = (max(1, round(h * k)), max(1, round(w * k)))
    return F.interpolate(images, size=size, mode="bilinear", antialias=True, align_corners=False).clamp(0, 1)
