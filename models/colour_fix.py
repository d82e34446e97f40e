"""Colour correction of a restored image against its LQ image (dpir-reference §4).

The released test script applies StableSR's wavelet colour fix once to the
whole output, after decoding: the output keeps its own high frequencies and
takes the LQ image's low frequencies (its colours and large-scale tones).
AdaIN (per-channel mean/std transfer) is the other fix StableSR ships; ``lab``
does the same transfer in CIELAB (D65, sRGB input), where the channels are
lightness and two colour axes, so the colour balance moves without the RGB
channels' cross-talk (the colour transfer of Reinhard et al. 2001, in Lab).
Apply either once, globally, after tiles are stitched: a per-tile fix gives
each tile its own colour cast and shows the seams.

Images here are torch tensors ``(B, 3, H, W)``, float, values in ``[0, 1]``
(ComfyUI's ``IMAGE`` is ``(B, H, W, 3)``: callers move the channel axis).
``content`` is the restored image, ``style`` the LQ image whose colours are
kept. ``style`` may have another size (the LQ is often smaller than the
output): it is resized to ``content``'s size with bicubic interpolation
(antialiased when any side shrinks) and clamped to ``[0, 1]`` to drop the
overshoot. A style batch of 1 serves every content image; otherwise both
batches must be equal. The work is done in float32 whatever the input dtype;
the result is clamped to ``[0, 1]`` and has ``content``'s dtype and device.
"""
from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

from .errors import DPIRInputError

COLOUR_FIX_METHODS = ("wavelet", "adain", "lab", "none")
WAVELET_LEVELS = 5
ADAIN_EPS = 1e-5
STRIP_BYTES = 128 * 2**20  # wavelet fix: rows worked on at once (float32, with the blurs' halo)

# StableSR's "a trous" wavelet kernel [[1,2,1],[2,4,2],[1,2,1]] / 16 is
# outer(_TAPS, _TAPS): the blur is applied as two 1-D passes.
_TAPS = (0.25, 0.5, 0.25)


def _check_image(name: str, x) -> None:
    if not isinstance(x, torch.Tensor):
        raise DPIRInputError(f"the {name} image must be a torch tensor, got {type(x).__name__}")
    if x.ndim != 4 or x.shape[1] != 3:
        raise DPIRInputError(f"the {name} image must be RGB (B, 3, H, W), got shape {tuple(x.shape)}")
    if x.shape[0] < 1 or x.shape[2] < 1 or x.shape[3] < 1:
        raise DPIRInputError(f"the {name} image is empty: shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise DPIRInputError(f"the {name} image must be a float tensor with values in [0, 1], got {x.dtype}")


def _resize(style: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Bicubic to (height, width); antialiased if a side shrinks; clamped to [0, 1]."""
    if style.shape[-2:] == (height, width):
        return style
    shrinks = height < style.shape[-2] or width < style.shape[-1]
    out = F.interpolate(style, size=(height, width), mode="bicubic", align_corners=False, antialias=shrinks)
    return out.clamp_(0.0, 1.0)


def _prepare(content, style) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate; return float32 content and style resized to content's size on content's device."""
    _check_image("content (restored)", content)
    _check_image("style (LQ)", style)
    bc, bs = content.shape[0], style.shape[0]
    if bs != bc and bs != 1:
        raise DPIRInputError(f"cannot colour-fix {bc} restored image(s) against {bs} LQ images: "
                             "give one LQ image, or as many LQ images as restored images")
    c = content.to(dtype=torch.float32)
    s = style.to(device=content.device, dtype=torch.float32)
    return c, _resize(s, c.shape[-2], c.shape[-1])


def _finish(result: torch.Tensor, content: torch.Tensor) -> torch.Tensor:
    return result.clamp_(0.0, 1.0).to(content.dtype)


def _blur_axis(x: torch.Tensor, radius: int, dim: int) -> torch.Tensor:
    """``[1/4, 1/2, 1/4]`` with taps ``radius`` apart along ``dim``; outside taps read the edge pixel."""
    n = x.shape[dim]
    idx = torch.arange(n, device=x.device)
    before = x.index_select(dim, (idx - radius).clamp_(min=0))
    after = x.index_select(dim, (idx + radius).clamp_(max=n - 1))
    return before.add_(after).mul_(_TAPS[0]).add_(x, alpha=_TAPS[1])


def wavelet_blur(image: torch.Tensor, radius: int) -> torch.Tensor:
    """One level of the wavelet decomposition: StableSR's ``wavelet_blur``.

    StableSR pads by ``radius`` with replicated edges and convolves each
    channel with the 3x3 kernel ``[[1,2,1],[2,4,2],[1,2,1]] / 16`` dilated by
    ``radius``. That kernel is separable and replicate padding is
    per-axis index clamping, so this does the same as two 1-D passes whose
    out-of-image taps read the nearest edge pixel (scipy's
    ``mode="nearest"``). Clamped indices are valid for any ``radius``, also
    larger than the image (a 1x1 or 2x3 image just sees its edges), so the
    dilation is never clamped; the result equals StableSR's up to float
    rounding (and avoids the slow grouped dilated conv on CPU).
    ``image``: (B, C, H, W) float; channels are independent.
    """
    return _blur_axis(_blur_axis(image, radius, -2), radius, -1)


def wavelet_low_freq(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> torch.Tensor:
    """The residual low-frequency band after ``levels`` blurs with dilations 1, 2, 4, ..."""
    for i in range(levels):
        image = wavelet_blur(image, 2 ** i)
    return image


def wavelet_decomposition(image: torch.Tensor, levels: int = WAVELET_LEVELS) -> tuple[torch.Tensor, torch.Tensor]:
    """(high, low) with ``high + low == image``: StableSR's ``wavelet_decomposition``.

    StableSR accumulates ``high += image_i - low_i`` level by level; the sum
    telescopes to ``image - low``, which is what is returned (same values up
    to float rounding, one fewer full-size buffer).
    """
    low = wavelet_low_freq(image, levels)
    return image - low, low


def _check_levels(levels) -> int:
    try:
        n = operator.index(levels)
    except TypeError:
        n = 0
    if isinstance(levels, bool) or n < 1:
        raise DPIRInputError(f"wavelet levels must be a whole number of at least 1, got {levels!r}")
    return n


def wavelet_colour_fix(content: torch.Tensor, style: torch.Tensor, levels: int = WAVELET_LEVELS,
                       strip_bytes: int = STRIP_BYTES, out: torch.Tensor | None = None) -> torch.Tensor:
    """Content's high frequencies + style's low frequencies (StableSR ``wavelet_reconstruction``).

    ``content``: restored images (B, 3, H, W) in [0, 1]; ``style``: LQ images
    (1 or B, 3, h, w) in [0, 1], resized to (H, W) if needed; values outside [0, 1] are clamped first. ``levels``
    blurs with dilations 1, 2, ..., 2**(levels-1) (5 in the release).
    Images larger than ``strip_bytes`` are done in strips of rows, with the same result.
    Returns (B, 3, H, W) in [0, 1] with content's dtype and device; with ``out`` (float32, content's shape,
    any strides: a channels-last view of a ComfyUI IMAGE) the result is written there and ``out`` returned,
    and the inputs may be views of larger images: only strips are copied (an 8K image is 0.8 GB a copy).
    """
    levels = _check_levels(levels)
    c, s = _prepare(content, style)
    if out is not None and (out.shape != c.shape or out.dtype != torch.float32):
        raise DPIRInputError(f"the colour fix's output must be float32 of shape {tuple(c.shape)}, got "
                             f"{out.dtype} {tuple(out.shape)}")
    # the blurs reach 1 + 2 + ... + 2**(levels-1) rows: strips with that halo give the whole image's values exactly,
    # and the work buffers stay the size of a strip (an 8K image would need about 7 image-size buffers at once)
    def rows_fixed(a: int, b: int) -> torch.Tensor:
        cs, ss = c[..., a:b, :].clamp(0.0, 1.0), s[..., a:b, :].clamp(0.0, 1.0)
        return cs - wavelet_low_freq(cs, levels) + wavelet_low_freq(ss, levels)

    halo, height = 2 ** levels - 1, c.shape[-2]
    rows = max(1, strip_bytes // (c[..., :1, :].numel() * c.element_size()))
    result = torch.empty_like(c) if out is None else out
    for y0 in range(0, height, rows):
        y1 = min(height, y0 + rows)
        a = max(0, y0 - halo)
        result[..., y0:y1, :] = rows_fixed(a, min(height, y1 + halo))[..., y0 - a:y1 - a, :].clamp_(0.0, 1.0)
    return result if out is not None else result.to(content.dtype)


def calc_mean_std(feat: torch.Tensor, eps: float = ADAIN_EPS) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and ``sqrt(var + eps)`` over H*W, shapes (B, C, 1, 1).

    The variance is unbiased (torch's default, as StableSR's
    ``calc_mean_std``); a single-pixel image has no unbiased variance, so its
    variance is taken as 0 there instead of NaN.
    """
    b, c = feat.shape[:2]
    flat = feat.reshape(b, c, -1)
    correction = 1 if flat.shape[-1] > 1 else 0
    var = flat.var(dim=-1, correction=correction) + eps
    return flat.mean(dim=-1).view(b, c, 1, 1), var.sqrt().view(b, c, 1, 1)


def adain_colour_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Replace each content channel's mean/std by the style's (StableSR ``adaptive_instance_normalization``).

    Same shapes, resizing, batching and output conventions as
    ``wavelet_colour_fix``. Constant images are safe: the eps keeps the std
    positive, so a constant content channel becomes the style's mean.
    """
    c, s = _prepare(content, style)
    c_mean, c_std = calc_mean_std(c)
    s_mean, s_std = calc_mean_std(s)
    result = (c - c_mean) / c_std * s_std + s_mean
    return _finish(result, content)


def lab_colour_fix(content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
    """Match each CIELAB channel's mean and std (``calc_mean_std``) of content to the style's, back to sRGB.

    sRGB <-> Lab (D65, 2 degree observer) is kornia's (a ComfyUI requirement); out-of-gamut results are clipped
    to [0, 1]. Same shapes, resizing, batching and output conventions as ``adain_colour_fix``.
    """
    try:
        from kornia.color import lab_to_rgb, rgb_to_lab
    except ImportError:
        raise DPIRInputError("the 'lab' colour fix needs kornia, which ComfyUI installs with its requirements: "
                             "run 'pip install kornia' in ComfyUI's Python, or choose 'wavelet' or 'adain'") from None
    c, s = _prepare(content, style)
    c_lab, s_lab = rgb_to_lab(c), rgb_to_lab(s)
    c_mean, c_std = calc_mean_std(c_lab)
    s_mean, s_std = calc_mean_std(s_lab)
    return _finish(lab_to_rgb((c_lab - c_mean) / c_std * s_std + s_mean, clip=True), content)


def colour_fix(content: torch.Tensor, style: torch.Tensor, method: str = "wavelet") -> torch.Tensor:
    """Dispatch on ``method`` in ``COLOUR_FIX_METHODS``; ``"none"`` returns content unchanged."""
    if method == "wavelet":
        return wavelet_colour_fix(content, style)
    if method == "adain":
        return adain_colour_fix(content, style)
    if method == "lab":
        return lab_colour_fix(content, style)
    if method == "none":
        return content
    raise DPIRInputError(f"unknown colour fix {method!r}: choose one of {', '.join(COLOUR_FIX_METHODS)}")
