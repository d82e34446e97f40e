"""ComfyUI IMAGE tensors (B, H, W, C in [0, 1]) to and from the core's (B, 3, H, W)."""
import torch

from ..models.errors import DPIRInputError


def to_bchw(image: torch.Tensor, what: str = "image") -> torch.Tensor:
    """RGB (B, 3, H, W) float32 from an IMAGE; greyscale is repeated, alpha dropped, NaN/Inf refused."""
    if image.ndim == 3:
        image = image[None]
    if image.ndim != 4 or image.shape[-1] not in (1, 2, 3, 4) or image.shape[1] < 1 or image.shape[2] < 1:
        raise DPIRInputError(f"the {what} must be a ComfyUI IMAGE (batch, height, width, channels), got "
                             f"{tuple(image.shape)}; wire the output of Load Image or another image node")
    x = image.float()
    if not torch.isfinite(x).all():
        raise DPIRInputError(f"the {what} contains NaN or infinite values; check the node that produced it")
    c = x.shape[-1]
    x = x[..., :3] if c >= 3 else x[..., :1].expand(*x.shape[:-1], 3)
    return x.clamp(0, 1).movedim(-1, 1).contiguous()


def to_bhwc(images: torch.Tensor) -> torch.Tensor:
    return images.movedim(1, -1).clamp(0, 1).contiguous()
