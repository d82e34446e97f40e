"""Measure the degradation of a low-quality photo, for the restoration prompt.

Three blind estimators on (B, 3, H, W) images in [0, 1], each per image:

* ``estimate_noise_sigma`` — Donoho's wavelet estimator: the median absolute
  deviation of the finest diagonal Haar coefficients / 0.6745, in 8-bit units;
* ``estimate_blur_sigma`` — the re-blur gradient ratio at edges (Zhuo & Sim
  2011): a step edge blurred by a Gaussian of sigma s has its gradient peak
  fall by sqrt(s² + s0²) / s when blurred again by s0, so s = s0 / sqrt(R² − 1);
  in the image's own pixels;
* ``estimate_jpeg_quality`` — the JPEG quality whose luminance quantisation
  table the 8×8 DCT coefficients of the image lie on (libjpeg's table scaling);
  None where no such lattice is found (never JPEG-coded, or resized after it).

Their errors on images degraded by ``training/degradation.py`` are measured by
``bench/estimators.py`` (docs/usage.md, "Automatic prompts").
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# libjpeg's (Annex K) luminance quantisation table
JPEG_LUMA = torch.tensor([
    [16, 11, 10, 16, 24, 40, 51, 61], [12, 12, 14, 19, 26, 58, 60, 55],
    [14, 13, 16, 24, 40, 57, 69, 56], [14, 17, 22, 29, 51, 87, 80, 62],
    [18, 22, 37, 56, 68, 109, 103, 77], [24, 35, 55, 64, 81, 104, 113, 92],
    [49, 64, 78, 87, 103, 121, 120, 101], [72, 92, 95, 98, 112, 100, 103, 99]], dtype=torch.float64)
REBLUR_SIGMA = 1.0
MAD_TO_SIGMA = 0.6745


def _luma(img: torch.Tensor) -> torch.Tensor:
    """(B, 3, H, W) → (B, H, W) luminance (JFIF weights), float64."""
    x = img.detach().to("cpu", torch.float64)
    return 0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]


def estimate_noise_sigma(img: torch.Tensor) -> list[float]:
    """Gaussian noise std per image, 8-bit units (median over the three channels)."""
    x = img.detach().to("cpu", torch.float64) * 255
    h, w = x.shape[-2] // 2 * 2, x.shape[-1] // 2 * 2
    x = x[..., :h, :w]
    hh = (x[..., 0::2, 0::2] - x[..., 0::2, 1::2] - x[..., 1::2, 0::2] + x[..., 1::2, 1::2]) / 2
    mad = hh.abs().flatten(2).median(dim=2).values / MAD_TO_SIGMA  # (B, C)
    return [float(v) for v in mad.median(dim=1).values]


def _gauss1d(sigma: float) -> torch.Tensor:
    r = max(1, math.ceil(3 * sigma))
    t = torch.arange(-r, r + 1, dtype=torch.float64)
    k = torch.exp(-0.5 * (t / sigma) ** 2)
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = _gauss1d(sigma)
    r = k.numel() // 2
    x = F.pad(x[:, None], (r, r, r, r), mode="replicate")
    x = F.conv2d(x, k.view(1, 1, 1, -1))
    return F.conv2d(x, k.view(1, 1, -1, 1))[:, 0]


def _gradient(x: torch.Tensor) -> torch.Tensor:
    gx = (x[:, 1:-1, 2:] - x[:, 1:-1, :-2]) / 2
    gy = (x[:, 2:, 1:-1] - x[:, :-2, 1:-1]) / 2
    return torch.sqrt(gx * gx + gy * gy)


def estimate_blur_sigma(img: torch.Tensor, edge_fraction: float = 0.02) -> list[float | None]:
    """Gaussian blur sigma per image in its own pixels; None where the image has no edges to measure.

    The ratio is read at the strongest ``edge_fraction`` of local gradient maxima;
    the median of the per-edge sigmas is returned.
    """
    y = _luma(img)
    g1, g2 = _gradient(y), _gradient(_blur(y, REBLUR_SIGMA))
    peak = F.max_pool2d(g1[:, None], 3, stride=1, padding=1)[:, 0] == g1
    out = []
    for a, b, p in zip(g1, g2, peak):
        vals = a[p]
        if vals.numel() < 16 or float(vals.max()) < 4 / 255:
            out.append(None)
            continue
        thr = torch.quantile(vals, 1 - edge_fraction) if vals.numel() > 1 / edge_fraction else vals.min()
        sel = p & (a >= max(float(thr), 4 / 255))
        r = (a[sel] / b[sel].clamp_min(1e-12)).clamp_min(1 + 1e-6)
        out.append(float((REBLUR_SIGMA / torch.sqrt(r * r - 1)).median()))
    return out


def jpeg_table(quality: float) -> torch.Tensor:
    """libjpeg's luminance table for a quality (1–100), baseline (steps clamped to 1..255)."""
    q = min(max(quality, 1.0), 100.0)
    scale = 5000 / q if q < 50 else 200 - 2 * q
    return torch.clamp(torch.floor((JPEG_LUMA * scale + 50) / 100), 1, 255)


def _dct_matrix() -> torch.Tensor:
    n = torch.arange(8, dtype=torch.float64)
    m = torch.cos((2 * n[None] + 1) * n[:, None] * math.pi / 16) * math.sqrt(2 / 8)
    m[0] /= math.sqrt(2)
    return m


def _block_dct(y: torch.Tensor) -> torch.Tensor:
    """(H, W) → (N, 8, 8) orthonormal DCT of the 8×8 blocks of JPEG's grid (level-shifted luminance)."""
    h, w = y.shape[0] // 8 * 8, y.shape[1] // 8 * 8
    blocks = (y[:h, :w] * 255 - 128).reshape(h // 8, 8, w // 8, 8).permute(0, 2, 1, 3).reshape(-1, 8, 8)
    d = _dct_matrix()
    return d @ blocks @ d.T


# the 3×3 lowest AC frequencies: their steps differ between qualities and they are rarely all zero
_AC = [(u, v) for u in range(3) for v in range(3) if (u, v) != (0, 0)]


def _lattice_misfit(coef: torch.Tensor, table: torch.Tensor) -> tuple[float, int]:
    """How far the coefficients that the table leaves non-zero lie from its lattice, relative to random numbers
    (1 ≈ no lattice, 0 = exactly on it); and how many coefficients were compared. Steps below 3 are skipped:
    8-bit rounding alone moves coefficients by about half a level."""
    dist, expect, n = 0.0, 0.0, 0
    for u, v in _AC:
        c, t = coef[:, u, v], float(table[u, v])
        c = c[c.abs() >= t / 2]
        if t < 3 or c.numel() == 0:
            continue
        dist += float((c - t * torch.round(c / t)).abs().sum())
        expect += c.numel() * t / 4  # mean distance of random numbers to a lattice of step t
        n += c.numel()
    return (dist / expect if expect else 1.0), n


def estimate_jpeg_quality(img: torch.Tensor, max_misfit: float = 0.5, min_coefficients: int = 64) -> list[float | None]:
    """The lowest JPEG quality whose luminance lattice the image's DCT coefficients fit, per image; None if none.

    Searching from quality 1 upwards, the first lattice the coefficients fit
    (misfit below ``max_misfit``) is the coarsest one they lie on: the one they
    were quantised with. Above quality ≈ 90 the steps of these frequencies are
    too fine to tell from 8-bit rounding, and such images read as not JPEG-coded.
    """
    out = []
    for y in _luma(img):
        coef = _block_dct(y)
        found = None
        if coef.shape[0] >= 4:
            for q in range(1, 96):
                misfit, n = _lattice_misfit(coef, jpeg_table(q))
                if n >= min_coefficients and misfit < max_misfit:
                    found = float(q)
                    break
        out.append(found)
    return out
