"""models/tiled_vae.py: the one-pass tile plan, the feathered blend, and seams of a real (tiny) AutoencoderKL."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import tiny_models as tm
from dpir_pack.models import tiled_vae as tv
from dpir_pack.models.errors import DPIRInputError

# tiny diffusers VAE (random weights), latent 40×56 in 16-latent-px tiles with 4 px overlap (15 tiles), vs the whole
# image; measured 17.2 dB, mean abs 0.104, encode relative L2 0.486 (random weights: each tile's GroupNorm statistics
# differ from the whole image's)
TINY_DECODE_PSNR_DB = 15.0
TINY_DECODE_MEAN = 0.13
TINY_ENCODE_REL = 0.6


@pytest.mark.parametrize("size,tile,overlap", [(1, 8, 0), (8, 8, 2), (9, 8, 2), (256, 128, 8), (257, 128, 8),
                                               (542, 128, 8), (1000, 37, 5), (100, 99, 98)])
def test_windows_cover_evenly_with_the_overlap(size, tile, overlap):
    ws = tv.axis_windows(size, tile, overlap)
    lengths = {w.length for w in ws}
    assert len(lengths) == 1 and lengths.pop() <= tile
    assert ws[0].start == 0 and ws[-1].start + ws[-1].length == size
    for a, b in zip(ws, ws[1:]):
        assert b.start > a.start and a.start + a.length - b.start >= overlap
    # the fewest windows of at most `tile` that overlap by `overlap`
    assert len(ws) == (1 if size <= tile else math.ceil((size - overlap) / (tile - overlap)))


def test_ramps_sum_to_one_and_feather_across_the_overlap():
    ws = tv.axis_windows(100, 40, 10)
    for scale in (1, 8):
        ramps = tv.axis_ramps(ws, scale)
        total = torch.zeros(100 * scale)
        for w, r in zip(ws, ramps):
            assert r.shape == (w.length * scale,) and (r > 0).all()
            total[w.start * scale:(w.start + w.length) * scale] += r
        torch.testing.assert_close(total, torch.ones_like(total))
        # inside a window, away from its neighbours, it alone counts; across an overlap the weight moves smoothly
        first = ramps[0]
        assert first[0] == 1 and float(first[-1]) < 0.1
        assert float((first[1:] - first[:-1]).abs().max()) <= 1.0 / (10 * scale) + 1e-6


def test_bad_plans_are_refused():
    with pytest.raises(DPIRInputError):
        tv.axis_windows(10, 4, 4)
    with pytest.raises(DPIRInputError):
        tv.axis_windows(0, 4, 1)


def test_a_pointwise_model_tiles_exactly():
    """A VAE without spatial context (nearest upsampling + a per-pixel map): tiles must give the whole result exactly,
    whatever the plan, so every output pixel gets weights summing to 1 and tiles land where they belong."""
    g = torch.Generator().manual_seed(0)
    mix = torch.randn(3, 4, generator=g)
    z = torch.randn(2, 4, 19, 27, generator=g)

    def decode(t):
        return torch.einsum("oc,bchw->bhwo", mix, F.interpolate(t, scale_factor=8, mode="nearest")).tanh()

    def encode(x):  # (B, H, W, 3) -> (B, 4, H/8, W/8)
        return torch.einsum("co,bohw->bchw", mix.T, F.avg_pool2d(x.movedim(-1, 1), 8))

    for tile, overlap in ((5, 2), (8, 0), (16, 7), (64, 8)):
        p = tv.plan(19, 27, tile, overlap)
        torch.testing.assert_close(tv.tiled_decode(z, decode, p, 8), decode(z), rtol=1e-5, atol=1e-5)
        x = decode(z)
        torch.testing.assert_close(tv.tiled_encode(x, encode, p, 8), encode(x), rtol=1e-5, atol=1e-5)


def test_largest_tile_is_the_largest_that_fits():
    budget = 50_000
    fits = lambda t: 30 * t * t <= budget  # noqa: E731
    t = tv.largest_tile(fits, 512)
    assert t % 8 == 0 and fits(t) and not fits(t + 8)
    assert tv.largest_tile(lambda t: True, 100) == 96
    assert tv.largest_tile(lambda t: False, 100) == 32


def psnr(a, b) -> float:
    return 10 * math.log10(1.0 / float(((a - b) ** 2).mean()))


def test_tiny_vae_seams_are_bounded():
    vae = tm.build_vae(tm.TinySpec())
    g = torch.Generator().manual_seed(1)
    z = F.interpolate(torch.randn(1, 16, 10, 14, generator=g), size=(40, 56), mode="bicubic")

    @torch.no_grad()
    def decode(t):
        return ((vae.decode(t).sample + 1) / 2).clamp(0, 1).movedim(1, -1)

    @torch.no_grad()
    def encode(x):
        return vae.encode(x.movedim(-1, 1) * 2 - 1).latent_dist.mode()

    p = tv.plan(40, 56, 16, 4)
    assert p.count == 15
    whole = decode(z)
    tiled = tv.tiled_decode(z, decode, p, 8)
    d = (tiled - whole).abs()
    print(f"tiny decode: max {float(d.max()):.4f} mean {float(d.mean()):.5f} PSNR {psnr(tiled, whole):.1f} dB")
    x = whole
    zw, zt = encode(x), tv.tiled_encode(x, encode, p, 8)
    rel = float((zt - zw).norm() / zw.norm())
    print(f"tiny encode: relative L2 {rel:.4f}, max {float((zt - zw).abs().max()):.4f}")
    assert psnr(tiled, whole) > TINY_DECODE_PSNR_DB and float(d.mean()) < TINY_DECODE_MEAN
    assert rel < TINY_ENCODE_REL
