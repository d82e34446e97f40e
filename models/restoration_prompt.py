"""SPIRE-style restoration prompts: the degradation as text appended to the T5 prompt.

One formatter for the trainer (``train.py`` with ``restoration_prompts: true``
writes it from the parameters the degradation drew) and for the node (from
values the artist sets or ``models/degradation_estimate.py`` measures), so the
two can never drift. E.g. ``"upscale 4x, deblur sigma 2.1, denoise 8.0, jpeg 40"``.
"""
from __future__ import annotations


def format_restoration_prompt(upscale: float | None = None, blur_sigma: float | None = None, ringing: bool = False,
                              noise_sigma: float | None = None, poisson_scale: float | None = None,
                              jpeg_quality: float | None = None) -> str:
    """The restoration text; a value that is None (and an upscale of at most 1) is left out.

    ``blur_sigma``: Gaussian kernel sigma in HQ pixels; ``noise_sigma``: Gaussian
    noise std in 8-bit units; ``poisson_scale``: Real-ESRGAN's Poisson scale;
    ``jpeg_quality``: the JPEG quality (1–100).
    """
    parts = []
    if upscale and upscale > 1:
        parts.append(f"upscale {upscale:g}x")
    if blur_sigma is not None:
        parts.append(f"deblur sigma {blur_sigma:.1f}")
    if ringing:
        parts.append("remove ringing")
    if noise_sigma is not None:
        parts.append(f"denoise {noise_sigma:.1f}")
    if poisson_scale is not None:
        parts.append(f"poisson {poisson_scale:.1f}")
    if jpeg_quality is not None:
        parts.append(f"jpeg {round(jpeg_quality)}")
    return ", ".join(parts)


def degradation_values(p: dict, scale: int | None = None) -> dict:
    """The formatter's arguments from one image's drawn degradation (``training/degradation.py``).

    Blur: the larger mean kernel sigma of both passes (sinc kernels count as
    ringing); noise: the larger Gaussian std / Poisson scale of both passes;
    JPEG: the lower quality.
    """
    blurs = (p.get("blur1"), p.get("blur2"))
    sigmas = [(b["sigma_x"] + b["sigma_y"]) / 2 for b in blurs if b and "sigma_x" in b]
    noises = [n for n in (p.get("noise1"), p.get("noise2")) if n]
    gauss = [n["sigma"] for n in noises if n["kind"] == "gaussian"]
    pois = [n["scale"] for n in noises if n["kind"] == "poisson"]
    qs = [q for q in (p.get("jpeg1"), p.get("jpeg2")) if q is not None]
    return {
        "upscale": scale,
        "blur_sigma": max(sigmas) if sigmas else None,
        "ringing": any(b and b["kind"] == "sinc" for b in (*blurs, p.get("final_sinc"))),
        "noise_sigma": max(gauss) if gauss else None,
        "poisson_scale": max(pois) if pois else None,
        "jpeg_quality": min(qs) if qs else None,
    }


def restoration_prompt(p: dict, scale: int | None = None) -> str:
    """The restoration text the trainer appends for one image's drawn degradation."""
    return format_restoration_prompt(**degradation_values(p, scale))
