"""Latent tile planning for tiled sampling of large images (dpir-reference §4).

All sizes are latent pixels (image pixels / 8 for SD3). A plan is a
row-major list of ``Tile(top, left, height, width)``; the windows of one axis
come from ``dual_prompt.tile_starts``: stride ``tile - overlap``, the last
window flush with the edge, one window clamped to the side when the side is
no longer than the tile. The release samples with tiles of 128 and an
overlap of 8 (``RELEASE_TILE``, ``RELEASE_OVERLAP``).

Tiles are blended with MultiDiffusion-style Gaussian weights, normalised so
that the weights of the tiles covering a pixel sum to 1 (``blend_weights``).

Seam hiding: the release's ``sw_shift`` pipeline rolls latent and LQ by a
random offset (below a quarter tile) every 5 steps, samples the same plan on
the rolled latent and rolls back; that needs nothing from the planner
(``torch.roll`` + ``plan_tiles``) but puts tiles across the wrap-around,
where opposite image edges meet inside one tile. ``shifted_plan`` moves
the seams without wrapping instead: see its docstring.
"""
from __future__ import annotations

import math
import operator
from typing import NamedTuple, Sequence

import torch

from .dual_prompt import tile_starts
from .errors import DPIRInputError

RELEASE_TILE = 128
RELEASE_OVERLAP = 8
TILE_VAR = 0.01


class Tile(NamedTuple):
    """A window in latent pixels: rows ``top:top+height``, columns ``left:left+width``."""

    top: int
    left: int
    height: int
    width: int

    @property
    def bottom(self) -> int:
        return self.top + self.height

    @property
    def right(self) -> int:
        return self.left + self.width

    @property
    def slices(self) -> tuple[slice, slice]:
        """``x[..., *tile.slices]`` crops the tile from a (..., H, W) tensor."""
        return slice(self.top, self.bottom), slice(self.left, self.right)


class Blend(NamedTuple):
    """``weights[i]`` (tile i's size) is already divided by ``total``: accumulate
    ``out[..., *tiles[i].slices] += weights[i] * tile_out`` and no division is
    left; ``total`` (H, W) is the raw sum of the Gaussian maps."""

    weights: list
    total: torch.Tensor


def _whole(name: str, value, minimum: int | None) -> int:
    """``value`` as an int >= ``minimum`` (ints and numpy ints; not bools or floats)."""
    try:
        n = operator.index(value)
    except TypeError:
        n = None
    if n is None or isinstance(value, bool):
        raise DPIRInputError(f"{name} must be a whole number, got {value!r}")
    if minimum is not None and n < minimum:
        raise DPIRInputError(f"{name} must be a whole number of at least {minimum}, got {value!r}")
    return n


def _check_plan(height, width, tile, overlap) -> tuple[int, int, int, int]:
    height = _whole("height", height, 1)
    width = _whole("width", width, 1)
    tile = _whole("tile size", tile, 1)
    overlap = _whole("tile overlap", overlap, 0)
    if overlap >= tile:
        raise DPIRInputError(f"tile overlap {overlap} must be smaller than the tile size {tile}")
    return height, width, tile, overlap


def _grid(rows: Sequence[int], cols: Sequence[int], height: int, width: int, tile: int) -> list[Tile]:
    th, tw = min(tile, height), min(tile, width)
    return [Tile(top, left, th, tw) for top in rows for left in cols]


def plan_tiles(height: int, width: int, tile: int = 128, overlap: int = 16) -> list[Tile]:
    """Row-major tiles covering a (height, width) latent; the fewest the stride allows.

    Every tile is ``min(tile, height) x min(tile, width)``; along each side
    starts are ``0, s, 2s, ...`` (``s = tile - overlap``) and the last tile
    is flush with the edge, so neighbours overlap by at least ``overlap``.
    """
    height, width, tile, overlap = _check_plan(height, width, tile, overlap)
    return _grid(tile_starts(height, tile, overlap), tile_starts(width, tile, overlap), height, width, tile)


def shifted_starts(size: int, tile: int, overlap: int, shift: int) -> list[int]:
    """Window starts of one side with the interior grid moved back by ``shift``.

    The grid ``k * s - (shift mod s)`` (``s = tile - overlap``) is clamped to
    ``[0, size - tile]``: the first window stays at 0, the last flush with the
    edge, consecutive starts are at most ``s`` apart (so overlaps stay at
    least ``overlap``) and no window wraps around. A shift that is a
    multiple of the stride gives ``tile_starts``; any other shift costs at most
    one more window on the side.
    """
    size = _whole("size", size, 1)
    tile = _whole("tile size", tile, 1)
    overlap = _whole("tile overlap", overlap, 0)
    shift = _whole("shift", shift, None)
    base = tile_starts(size, tile, overlap)
    stride = tile - overlap
    offset = shift % stride
    if size <= tile or offset == 0:
        return base
    last = size - tile
    starts = [0]
    k = 1
    while k * stride - offset < last:
        starts.append(k * stride - offset)
        k += 1
    starts.append(last)
    return starts


def shifted_plan(height: int, width: int, tile: int = 128, overlap: int = 16,
                 shift_y: int = 0, shift_x: int = 0) -> list[Tile]:
    """Like ``plan_tiles`` with the seams moved by (``shift_y``, ``shift_x``), in image coordinates.

    Instead of rolling the latent (the release), the grid of interior tile
    starts is moved by the shift while the first and last tiles stay flush
    with the image edges (``shifted_starts``). Tiles keep their size, never
    wrap around, still cover every pixel and stay inside the image, so the
    caller samples and blends them exactly as ``plan_tiles``' tiles (and can
    crop per-tile LQ/prompts without wrap-around). Changing the shift every
    few steps moves the seams; shift 0 gives ``plan_tiles``.
    """
    height, width, tile, overlap = _check_plan(height, width, tile, overlap)
    rows = shifted_starts(height, tile, overlap, shift_y)
    cols = shifted_starts(width, tile, overlap, shift_x)
    return _grid(rows, cols, height, width, tile)


def estimate_tiles(height: int, width: int, tile: int = 128, overlap: int = 16, downscale: int = 1) -> int:
    """Number of tiles ``plan_tiles`` makes, without building them.

    ``height`` and ``width`` are divided by ``downscale`` first (floor, as
    ComfyUI's VAE encode crops to its downscale ratio): pass image pixels with
    ``downscale=8`` for an SD3 preview.
    """
    downscale = _whole("downscale", downscale, 1)
    height = _whole("height", height, 1) // downscale
    width = _whole("width", width, 1) // downscale
    if height < 1 or width < 1:
        raise DPIRInputError(f"an image under {downscale} px on a side has no latent to tile")
    height, width, tile, overlap = _check_plan(height, width, tile, overlap)
    return len(tile_starts(height, tile, overlap)) * len(tile_starts(width, tile, overlap))


def _check_var(var) -> float:
    try:
        v = float(var)
    except (TypeError, ValueError):
        raise DPIRInputError(f"the tile weight variance must be a number, got {var!r}") from None
    if not (math.isfinite(v) and v > 0):
        raise DPIRInputError(f"the tile weight variance must be positive and finite, got {var!r}")
    return v


def _gaussian_1d(n: int, var: float) -> torch.Tensor:
    x = torch.arange(n, dtype=torch.float64)
    mid = (n - 1) / 2
    return torch.exp(-((x - mid) ** 2) / (n * n) / (2 * var)) / math.sqrt(2 * math.pi * var)


def gaussian_weights(height: int, width: int, var: float = TILE_VAR, dtype: torch.dtype = torch.float32,
                     device=None) -> torch.Tensor:
    """Gaussian tile weights (height, width): ``outer(g_height, g_width)``.

    ``g_n(x) = exp(-(x - (n-1)/2)**2 / n**2 / (2 var)) / sqrt(2 pi var)`` for
    ``x = 0 .. n-1``: the release's (MultiDiffusion / mixture-of-diffusers)
    ``_gaussian_weights`` with var 0.01 (edge weight ~exp(-12.5) of the
    centre's). The release centres the rows on ``n/2`` and the columns on
    ``(n-1)/2``; both axes use the symmetric ``(n-1)/2`` here. Computed in
    float64 and floored at the smallest normal number of ``dtype``, so a tiny
    ``var`` cannot underflow to zero weights.
    """
    height = _whole("height", height, 1)
    width = _whole("width", width, 1)
    var = _check_var(var)
    w = torch.outer(_gaussian_1d(height, var), _gaussian_1d(width, var))
    floor = torch.finfo(dtype).tiny if dtype.is_floating_point else 0.0
    return w.clamp_min_(max(floor, torch.finfo(torch.float64).tiny)).to(dtype=dtype, device=device)


def _as_tile(t) -> Tile:
    try:
        values = tuple(t)
    except TypeError:
        values = ()
    if len(values) != 4:
        raise DPIRInputError(f"a tile is (top, left, height, width), got {t!r}")
    return Tile(*(_whole(f"tile {name}", v, None) for name, v in zip(Tile._fields, values)))


def blend_weights(tiles: Sequence[Tile], height: int, width: int, var: float = TILE_VAR,
                  dtype: torch.dtype = torch.float32, device=None) -> Blend:
    """Normalised per-tile Gaussian maps whose sum over the tiles is 1 at every pixel.

    ``tiles`` must lie inside the (height, width) latent and cover it (any
    plan from this module does). See ``Blend`` for how to use the result.
    """
    height = _whole("height", height, 1)
    width = _whole("width", width, 1)
    var = _check_var(var)
    try:
        tiles = list(tiles)
    except TypeError:
        raise DPIRInputError(f"tiles must be a list of (top, left, height, width), got {tiles!r}") from None
    tiles = [_as_tile(t) for t in tiles]
    if not tiles:
        raise DPIRInputError("no tiles to blend")
    for t in tiles:
        if t.height < 1 or t.width < 1 or t.top < 0 or t.left < 0 or t.bottom > height or t.right > width:
            raise DPIRInputError(f"tile {tuple(t)} is not inside the {height}x{width} latent")
    cache: dict[tuple[int, int], torch.Tensor] = {}
    total = torch.zeros(height, width, dtype=torch.float64)
    for t in tiles:
        g = cache.get((t.height, t.width))
        if g is None:
            g = cache[(t.height, t.width)] = gaussian_weights(t.height, t.width, var, dtype=torch.float64)
        total[t.slices] += g
    if not bool((total > 0).all()):
        rows, cols = torch.nonzero(total == 0)[0].tolist()
        raise DPIRInputError(f"the tiles leave latent pixel ({rows}, {cols}) uncovered")
    weights = [(cache[(t.height, t.width)] / total[t.slices]).to(dtype=dtype, device=device) for t in tiles]
    return Blend(weights, total.to(dtype=dtype, device=device))
