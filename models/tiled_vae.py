"""One-pass tiled VAE encode and decode with feathered overlaps.

ComfyUI's ``VAEDecodeTiled`` / ``VAE.encode_tiled`` run three tilings of the
image (tile × tile, tile/2 × 2 tile, 2 tile × tile/2) and average them: about
three times the work of one pass. Here every pixel region is decoded (or
encoded) once: the tiles of one axis are spread evenly over the side (all of
one length, the fewest the overlap allows), and neighbours are blended with
linear ramps across their overlap. The ramps are normalised per axis, so
their outer product sums to 1 at every output pixel: no weight map of the
image size is kept.

Plans are in latent pixels; ``scale`` is the VAE's spatial ratio (8 for SD3):
a decode tile of ``n`` latent px gives ``n * scale`` image px, an encode tile
of ``n * scale`` image px gives ``n`` latent px. Pure PyTorch: the caller
passes the per-tile encode/decode function.
"""
from __future__ import annotations

import math
from typing import Callable, NamedTuple

import torch

from .errors import DPIRInputError


class Window(NamedTuple):
    start: int
    length: int


def axis_windows(size: int, tile: int, overlap: int) -> list[Window]:
    """The fewest windows of one length (at most ``tile``) that cover ``[0, size)`` with neighbours overlapping by
    at least ``overlap``, spread evenly: first flush with 0, last flush with ``size``."""
    if size < 1 or tile < 1:
        raise DPIRInputError(f"cannot tile a side of {size} latent px with tiles of {tile}")
    if not 0 <= overlap < tile:
        raise DPIRInputError(f"tile overlap {overlap} must be at least 0 and smaller than the tile {tile}")
    if size <= tile:
        return [Window(0, size)]
    n = math.ceil((size - overlap) / (tile - overlap))
    length = min(tile, math.ceil((size + (n - 1) * overlap) / n))
    return [Window(round(i * (size - length) / (n - 1)), length) for i in range(n)]


def axis_ramps(windows: list[Window], scale: int = 1) -> list[torch.Tensor]:
    """Per window, its weights along the output axis (``length * scale`` values): a linear ramp up across the
    overlap with the previous window and down across the overlap with the next, divided by the sum of all windows'
    weights, so every output position's weights sum to 1."""
    size = (windows[-1].start + windows[-1].length) * scale
    raw = []
    for i, w in enumerate(windows):
        n = w.length * scale
        r = torch.ones(n, dtype=torch.float64)
        if i > 0:
            prev = windows[i - 1]
            ov = (prev.start + prev.length - w.start) * scale
            if ov > 0:
                r[:ov] = torch.minimum(r[:ov], (torch.arange(ov, dtype=torch.float64) + 0.5) / ov)
        if i < len(windows) - 1:
            ov = (w.start + w.length - windows[i + 1].start) * scale
            if ov > 0:
                r[n - ov:] = torch.minimum(r[n - ov:], (ov - torch.arange(ov, dtype=torch.float64) - 0.5) / ov)
        raw.append(r)
    total = torch.zeros(size, dtype=torch.float64)
    for w, r in zip(windows, raw):
        total[w.start * scale:(w.start + w.length) * scale] += r
    return [(r / total[w.start * scale:(w.start + w.length) * scale]).float() for w, r in zip(windows, raw)]


class Plan(NamedTuple):
    """Row and column windows in latent px; the tiles are their product, row-major."""
    rows: list
    cols: list

    @property
    def count(self) -> int:
        return len(self.rows) * len(self.cols)

    @property
    def tiled(self) -> bool:
        return self.count > 1


def plan(height: int, width: int, tile: int, overlap: int) -> Plan:
    """Windows for a (height, width) latent with square tiles of at most ``tile`` latent px."""
    return Plan(axis_windows(height, tile, overlap), axis_windows(width, tile, overlap))


def tiled_decode(z: torch.Tensor, decode: Callable[[torch.Tensor], torch.Tensor], p: Plan, scale: int,
                 on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """Decode latent ``z`` (B, C, h, w) tile by tile: ``decode`` maps (B, C, th, tw) to images (B, th*scale,
    tw*scale, channels); returns (B, h*scale, w*scale, channels) in float32 on ``decode``'s output device."""
    ry, rx = axis_ramps(p.rows, scale), axis_ramps(p.cols, scale)
    out = None
    for (wy, ay) in zip(p.rows, ry):
        for (wx, ax) in zip(p.cols, rx):
            img = decode(z[:, :, wy.start:wy.start + wy.length, wx.start:wx.start + wx.length])
            if out is None:
                out = torch.zeros((z.shape[0], z.shape[2] * scale, z.shape[3] * scale, img.shape[-1]),
                                  dtype=torch.float32, device=img.device)
            weight = (ay.to(img.device)[:, None] * ax.to(img.device)[None, :])[..., None]
            out[:, wy.start * scale:(wy.start + wy.length) * scale,
                wx.start * scale:(wx.start + wx.length) * scale] += img.float() * weight
            if on_tile is not None:
                on_tile()
    return out


def tiled_encode(x: torch.Tensor, encode: Callable[[torch.Tensor], torch.Tensor], p: Plan, scale: int,
                 on_tile: Callable[[], None] | None = None) -> torch.Tensor:
    """Encode images ``x`` (B, H, W, channels), H and W multiples of ``scale``, tile by tile: ``encode`` maps
    (B, th*scale, tw*scale, channels) to latents (B, C, th, tw); ``p`` is planned on the latent (H/scale, W/scale).
    Returns (B, C, H/scale, W/scale) in float32 on ``encode``'s output device."""
    ry, rx = axis_ramps(p.rows), axis_ramps(p.cols)
    out = None
    for (wy, ay) in zip(p.rows, ry):
        for (wx, ax) in zip(p.cols, rx):
            lat = encode(x[:, wy.start * scale:(wy.start + wy.length) * scale,
                           wx.start * scale:(wx.start + wx.length) * scale])
            if out is None:
                out = torch.zeros((x.shape[0], lat.shape[1], x.shape[1] // scale, x.shape[2] // scale),
                                  dtype=torch.float32, device=lat.device)
            weight = ay.to(lat.device)[:, None] * ax.to(lat.device)[None, :]
            out[:, :, wy.start:wy.start + wy.length, wx.start:wx.start + wx.length] += lat.float() * weight
            if on_tile is not None:
                on_tile()
    return out


def largest_tile(fits: Callable[[int], bool], limit: int, step: int = 8, minimum: int = 32) -> int:
    """The largest tile side (latent px, a multiple of ``step``, at most ``limit``) for which ``fits(side)``;
    ``minimum`` when none fits (the caller tries it anyway: ComfyUI's estimates are upper bounds)."""
    lo, hi = 1, max(1, limit // step)
    if not fits(step):
        return min(minimum, limit)
    while lo < hi:  # fits(lo * step) holds
        mid = (lo + hi + 1) // 2
        if fits(mid * step):
            lo = mid
        else:
            hi = mid - 1
    return max(min(minimum, limit), lo * step)
