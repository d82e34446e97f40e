"""Latent tile planning: coverage, minimality, Gaussian blend weights, seam shifting."""
import math

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from dpir_pack.models.dual_prompt import tile_starts
from dpir_pack.models.errors import DPIRInputError
from dpir_pack.models.tiling import (
    RELEASE_OVERLAP,
    RELEASE_TILE,
    Blend,
    Tile,
    blend_weights,
    estimate_tiles,
    gaussian_weights,
    plan_tiles,
    shifted_plan,
    shifted_starts,
)

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def close(actual, expected, atol=1e-5, rtol=1.3e-6):
    """Like torch.testing.assert_close (shape included) without its slow first import."""
    a, e = torch.as_tensor(actual), torch.as_tensor(expected)
    assert a.shape == e.shape, (a.shape, e.shape)
    np.testing.assert_allclose(a.double().cpu().numpy(), e.double().cpu().numpy(), atol=atol, rtol=rtol)
FEWER = settings(FAST, max_examples=60)


@st.composite
def plans(draw, max_size=2000, max_tile=256):
    height = draw(st.integers(1, max_size))
    width = draw(st.integers(1, max_size))
    tile = draw(st.integers(1, max_tile))
    overlap = draw(st.integers(0, tile - 1))
    return height, width, tile, overlap


def coverage(tiles, height, width):
    """How many tiles cover each pixel (2-D difference array, O(tiles + pixels))."""
    diff = np.zeros((height + 1, width + 1), dtype=np.int64)
    for t in tiles:
        diff[t.top, t.left] += 1
        diff[t.top, t.left + t.width] -= 1
        diff[t.top + t.height, t.left] -= 1
        diff[t.top + t.height, t.left + t.width] += 1
    return diff.cumsum(0).cumsum(1)[:height, :width]


def axis_starts(tiles, axis):
    return sorted({t.top if axis == 0 else t.left for t in tiles})


def check_plan_geometry(tiles, height, width, tile, overlap):
    assert tiles and all(isinstance(t, Tile) for t in tiles)
    th, tw = min(tile, height), min(tile, width)
    for t in tiles:
        assert (t.height, t.width) == (th, tw)
        assert 0 <= t.top and t.bottom <= height and 0 <= t.left and t.right <= width
    assert (coverage(tiles, height, width) >= 1).all()
    assert tiles == sorted(tiles, key=lambda t: (t.top, t.left))  # row-major
    rows, cols = axis_starts(tiles, 0), axis_starts(tiles, 1)
    assert len(tiles) == len(rows) * len(cols)
    for starts, size, n in ((rows, height, th), (cols, width, tw)):
        assert starts[0] == 0 and starts[-1] == size - n  # last tile flush with the edge
        if len(starts) > 1:  # neighbours overlap by at least `overlap`
            assert max(b - a for a, b in zip(starts, starts[1:])) <= tile - overlap
    return rows, cols


def minimal_count(size, tile, overlap):
    """Fewest windows of `tile` overlapping by >= `overlap` covering `size` (by search, not formula)."""
    if size <= tile:
        return 1
    n = 1
    while tile + (n - 1) * (tile - overlap) < size:
        n += 1
    return n


# ---------------------------------------------------------------- plan_tiles

def test_plan_examples():
    assert plan_tiles(256, 256, 128, 16) == [Tile(r, c, 128, 128) for r in (0, 112, 128) for c in (0, 112, 128)]
    assert plan_tiles(128, 128) == [Tile(0, 0, 128, 128)]
    assert plan_tiles(50, 300, 128, 16) == [Tile(0, 0, 50, 128), Tile(0, 112, 50, 128), Tile(0, 172, 50, 128)]
    assert plan_tiles(1, 1) == [Tile(0, 0, 1, 1)]
    t = Tile(3, 4, 5, 6)
    assert (t.bottom, t.right) == (8, 10)
    assert torch.zeros(1, 20, 20)[(...,) + t.slices].shape == (1, 5, 6)


@FAST
@given(plans())
def test_plan_covers_stays_inside_and_is_minimal(p):
    height, width, tile, overlap = p
    assume(estimate_tiles(height, width, tile, overlap) <= 5000)
    tiles = plan_tiles(height, width, tile, overlap)
    rows, cols = check_plan_geometry(tiles, height, width, tile, overlap)
    assert len(rows) == minimal_count(height, tile, overlap)
    assert len(cols) == minimal_count(width, tile, overlap)
    assert estimate_tiles(height, width, tile, overlap) == len(tiles)
    assert rows == tile_starts(height, tile, overlap) and cols == tile_starts(width, tile, overlap)


def release_sliding_windows(size, tile, stride):
    """The release pipeline's `_sliding_windows` for one axis (valid when size >= tile)."""
    starts = list(range(0, size - tile + 1, stride))
    if (size - tile) % stride != 0:
        starts.append(size - tile)
    return starts


@FAST
@given(st.integers(RELEASE_TILE, 3000))
def test_plan_matches_release_windows(size):
    rows = axis_starts(plan_tiles(size, 1, RELEASE_TILE, RELEASE_OVERLAP), 0)
    assert rows == release_sliding_windows(size, RELEASE_TILE, RELEASE_TILE - RELEASE_OVERLAP)


def test_estimate_tiles_downscale():
    assert estimate_tiles(2048, 2048, 128, 16, downscale=8) == len(plan_tiles(256, 256, 128, 16)) == 9
    assert estimate_tiles(1023, 1031, 128, 8, downscale=8) == len(plan_tiles(127, 128, 128, 8)) == 1
    with pytest.raises(DPIRInputError, match="latent"):
        estimate_tiles(7, 100, downscale=8)


# ---------------------------------------------------------------- shifted_plan

@FAST
@given(plans(), st.integers(-1000, 1000), st.integers(-1000, 1000))
def test_shifted_plan_covers_and_stays_inside(p, shift_y, shift_x):
    height, width, tile, overlap = p
    assume(estimate_tiles(height, width, tile, overlap) <= 2000)
    tiles = shifted_plan(height, width, tile, overlap, shift_y, shift_x)
    rows, cols = check_plan_geometry(tiles, height, width, tile, overlap)
    assert len(rows) <= len(tile_starts(height, tile, overlap)) + 1
    assert len(cols) <= len(tile_starts(width, tile, overlap)) + 1
    assert len(set(tiles)) == len(tiles)


@FAST
@given(plans(), st.integers(-5, 5))
def test_shift_of_whole_strides_is_the_plain_plan(p, k):
    height, width, tile, overlap = p
    assume(estimate_tiles(height, width, tile, overlap) <= 5000)
    stride = tile - overlap
    assert shifted_plan(height, width, tile, overlap, k * stride, -k * stride) == plan_tiles(height, width, tile, overlap)


def test_shift_moves_the_interior_seams():
    plain = tile_starts(1000, 128, 16)
    moved = shifted_starts(1000, 128, 16, 20)
    assert plain == [0, 112, 224, 336, 448, 560, 672, 784, 872]
    assert moved == [0, 92, 204, 316, 428, 540, 652, 764, 872]
    assert shifted_starts(1000, 128, 16, 20 + 112) == moved
    assert shifted_starts(1000, 128, 16, -92) == moved
    assert shifted_starts(100, 128, 16, 20) == [0]  # a side within one tile has nothing to shift
    tiles = shifted_plan(1000, 300, 128, 16, 20, 5)
    assert axis_starts(tiles, 0) == moved and axis_starts(tiles, 1) == shifted_starts(300, 128, 16, 5)


# ---------------------------------------------------------------- weights

def test_gaussian_weights_formula():
    h, w, var = 7, 10, 0.01

    def g(n):
        mid = (n - 1) / 2
        return np.array([math.exp(-(x - mid) ** 2 / n ** 2 / (2 * var)) / math.sqrt(2 * math.pi * var)
                         for x in range(n)])

    got = gaussian_weights(h, w, var, dtype=torch.float64)
    np.testing.assert_allclose(got.numpy(), np.outer(g(h), g(w)), rtol=1e-12)
    assert gaussian_weights(h, w).dtype == torch.float32
    big = gaussian_weights(128, 128)
    assert torch.equal(big, big.flip(0)) and torch.equal(big, big.flip(1)) and torch.equal(big, big.T)
    assert big.min() > 0 and big[63, 63] == big.max()
    assert gaussian_weights(1, 1).item() == pytest.approx(1 / (2 * math.pi * var))
    for dtype in (torch.float64, torch.float32, torch.float16):  # floored: no zero weight
        assert gaussian_weights(8, 8, var=1e-6, dtype=dtype).min() > 0


@FEWER
@given(plans(max_size=200, max_tile=96), st.integers(0, 200), st.integers(0, 200),
       st.sampled_from([0.01, 0.1, 1e-4]))
def test_blend_weights_sum_to_one(p, shift_y, shift_x, var):
    height, width, tile, overlap = p
    assume(estimate_tiles(height, width, tile, overlap) <= 150)
    tiles = shifted_plan(height, width, tile, overlap, shift_y, shift_x)
    blend = blend_weights(tiles, height, width, var=var, dtype=torch.float64)
    assert isinstance(blend, Blend) and len(blend.weights) == len(tiles)
    acc = torch.zeros(height, width, dtype=torch.float64)
    for t, wt in zip(tiles, blend.weights):
        assert wt.shape == (t.height, t.width) and torch.isfinite(wt).all() and (wt > 0).all()
        acc[t.slices] += wt
    close(acc, torch.ones_like(acc), atol=1e-12, rtol=0)
    assert (blend.total > 0).all()


def test_blend_reassembles_a_latent_and_matches_release_normalisation():
    latent = torch.randn(2, 16, 150, 260)
    tiles = plan_tiles(150, 260, 64, 8)
    blend = blend_weights(tiles, 150, 260)
    out = torch.zeros_like(latent)
    for t, wt in zip(tiles, blend.weights):
        out[(...,) + t.slices] += latent[(...,) + t.slices] * wt
    close(out, latent, atol=1e-5, rtol=0)
    # the release divides the raw weighted sum by the summed raw weights: same result
    g = gaussian_weights(64, 64, dtype=torch.float64)
    num = torch.zeros(150, 260, dtype=torch.float64)
    for t, wt in zip(tiles, blend.weights):
        num[t.slices] += g
        close(wt.double(), g / blend.total.double()[t.slices], atol=1e-6, rtol=1e-5)
    close(num.float(), blend.total)


def test_blend_rejects_bad_tiles():
    with pytest.raises(DPIRInputError, match="uncovered"):
        blend_weights([Tile(0, 0, 10, 10)], 10, 20)
    with pytest.raises(DPIRInputError, match="inside"):
        blend_weights([Tile(0, 15, 10, 10)], 10, 20)
    with pytest.raises(DPIRInputError, match="inside"):
        blend_weights([(-1, 0, 10, 10)], 10, 20)
    with pytest.raises(DPIRInputError, match="no tiles"):
        blend_weights([], 10, 20)
    with pytest.raises(DPIRInputError, match="top, left"):
        blend_weights([(0, 0, 10)], 10, 20)
    with pytest.raises(DPIRInputError):
        blend_weights(None, 10, 20)
    with pytest.raises(DPIRInputError, match="variance"):
        blend_weights([Tile(0, 0, 10, 20)], 10, 20, var=0)


# ---------------------------------------------------------------- bad arguments

junk = st.one_of(st.integers(-3, 40), st.floats(allow_nan=True), st.none(), st.booleans(),
                 st.sampled_from(["", "7", b"8", [8], (1, 2), 7.0, np.int64(7), np.float32(3)]))


@FEWER
@given(junk, junk, junk, junk, junk, junk)
def test_only_input_errors_for_bad_arguments(height, width, tile, overlap, shift_y, shift_x):
    calls = [
        lambda: plan_tiles(height, width, tile, overlap),
        lambda: shifted_plan(height, width, tile, overlap, shift_y, shift_x),
        lambda: estimate_tiles(height, width, tile, overlap),
        lambda: estimate_tiles(height, width, tile, overlap, downscale=shift_x),
        lambda: gaussian_weights(height, width, var=shift_y),
    ]
    for call in calls:
        try:
            call()
        except DPIRInputError:
            pass


@pytest.mark.parametrize("args", [(0, 10, 8, 0), (10, -1, 8, 0), (10, 10, 0, 0), (10, 10, 8, 8),
                                  (10, 10, 8, -1), (10.0, 10, 8, 0), (10, 10, True, 0), ("10", 10, 8, 0)])
def test_bad_plan_arguments_raise(args):
    with pytest.raises(DPIRInputError):
        plan_tiles(*args)
    with pytest.raises(DPIRInputError):
        shifted_plan(*args, 3, 3)
    with pytest.raises(DPIRInputError):
        estimate_tiles(*args)


def test_numpy_ints_accepted():
    assert plan_tiles(np.int64(300), np.int32(200), np.int64(128), np.int16(16)) == plan_tiles(300, 200, 128, 16)
