"""Colour fixes against an independent NumPy/SciPy port of StableSR's colorfix."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from dpir_pack.models.colour_fix import (
    COLOUR_FIX_METHODS,
    adain_colour_fix,
    calc_mean_std,
    colour_fix,
    lab_colour_fix,
    wavelet_blur,
    wavelet_colour_fix,
    wavelet_decomposition,
)
from dpir_pack.models.errors import DPIRInputError

FIXES = [wavelet_colour_fix, adain_colour_fix, lab_colour_fix]
KERNEL = np.array([[1, 2, 1], [2, 4, 2], [1, 2, 1]], dtype=np.float64) / 16


def close(actual, expected, atol=1e-5, rtol=1.3e-6):
    """Like torch.testing.assert_close (shape included) without its slow first import."""
    a, e = torch.as_tensor(actual), torch.as_tensor(expected)
    assert a.shape == e.shape, (a.shape, e.shape)
    np.testing.assert_allclose(a.double().cpu().numpy(), e.double().cpu().numpy(), atol=atol, rtol=rtol)


# ---------------------------------------------------------------- references

def np_blur(channel: np.ndarray, radius: int) -> np.ndarray:
    """3x3 kernel dilated by ``radius`` as a (2r+1)^2 kernel; scipy's 'nearest' = replicate padding."""
    k = np.zeros((2 * radius + 1, 2 * radius + 1))
    k[::radius, ::radius] = KERNEL
    return ndimage.convolve(channel, k, mode="nearest")


def loop_blur(channel: np.ndarray, radius: int) -> np.ndarray:
    """The same blur with explicit loops and clamped indices (checks the scipy reference on tiny images)."""
    h, w = channel.shape
    out = np.zeros_like(channel)
    for i in range(h):
        for j in range(w):
            for a in range(3):
                for b in range(3):
                    y = min(max(i + (a - 1) * radius, 0), h - 1)
                    x = min(max(j + (b - 1) * radius, 0), w - 1)
                    out[i, j] += KERNEL[a, b] * channel[y, x]
    return out


def np_decompose(image: np.ndarray, levels: int = 5, blur=np_blur):
    """StableSR's loop: high += image - low; image = low. image: (C, H, W) float64."""
    high = np.zeros_like(image)
    low = image
    for i in range(levels):
        low = np.stack([blur(ch, 2 ** i) for ch in image])
        high += image - low
        image = low
    return high, low


def np_wavelet_fix(content: np.ndarray, style: np.ndarray, levels: int = 5, blur=np_blur) -> np.ndarray:
    """content, style: (B, C, H, W) float64, same size; style batch 1 broadcasts."""
    out = []
    for b in range(content.shape[0]):
        s = style[0] if style.shape[0] == 1 else style[b]
        high, _ = np_decompose(content[b], levels, blur)
        _, low = np_decompose(s, levels, blur)
        out.append(high + low)
    return np.clip(np.stack(out), 0, 1)


def np_adain(content: np.ndarray, style: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    def stats(x):
        flat = x.reshape(x.shape[0], x.shape[1], -1)
        mean = flat.mean(-1)[..., None, None]
        std = np.sqrt(flat.var(-1, ddof=1) + eps)[..., None, None]
        return mean, std
    cm, cs = stats(content)
    sm, ss = stats(style)
    return np.clip((content - cm) / cs * ss + sm, 0, 1)


def rand(*shape, lo=0.0, hi=1.0, dtype=torch.float32):
    return (torch.rand(*shape, dtype=torch.float64) * (hi - lo) + lo).to(dtype)


# ---------------------------------------------------------------- wavelet

@pytest.mark.parametrize("shape", [(2, 3, 37, 53), (1, 3, 64, 64), (1, 3, 2, 3), (1, 3, 1, 1), (1, 3, 4, 4000)])
def test_wavelet_matches_scipy_reference(shape):
    content, style = rand(*shape), rand(*shape)
    got = wavelet_colour_fix(content, style)
    want = np_wavelet_fix(content.double().numpy(), style.double().numpy())
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("shape", [(1, 3, 2, 3), (1, 3, 1, 1), (1, 3, 3, 1), (1, 3, 5, 7)])
def test_wavelet_matches_loop_reference_on_tiny_images(shape):
    content, style = rand(*shape), rand(*shape)
    got = wavelet_colour_fix(content, style)
    want = np_wavelet_fix(content.double().numpy(), style.double().numpy(), blur=loop_blur)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("rows, levels", [(1, 5), (7, 5), (40, 5), (3, 2), (10, 7)])
def test_wavelet_in_strips_is_the_whole_image_fix(rows, levels):
    """Large images are fixed in strips of rows with the blurs' halo: the same values as one pass (to the bit) and
    as the reference, also for strips thinner than the halo and at the image's top and bottom edges."""
    content, style = rand(2, 3, 97, 41), rand(2, 3, 97, 41)
    whole = wavelet_colour_fix(content, style, levels=levels)
    strips = wavelet_colour_fix(content, style, levels=levels, strip_bytes=rows * 2 * 3 * 41 * 4)
    assert torch.equal(strips, whole)
    want = np_wavelet_fix(content.double().numpy(), style.double().numpy(), levels)
    np.testing.assert_allclose(strips.numpy(), want, atol=1e-5, rtol=0)


def test_wavelet_streams_channels_last_views_into_the_output():
    """The node's path: content and style are channels-last views of ComfyUI IMAGEs (alpha channel, values outside
    [0, 1]) and the result is written into a channels-last view of the output IMAGE, strip by strip. The values are
    those of the fix on clamped contiguous copies, to the bit; the inputs are left as they were."""
    torch.manual_seed(3)
    image, lq = torch.rand(2, 97, 41, 4) * 1.4 - 0.2, torch.rand(1, 97, 41, 3) * 1.4 - 0.2
    before = image.clone(), lq.clone()
    content, style = image[..., :3].movedim(-1, 1), lq.movedim(-1, 1)
    want = wavelet_colour_fix(content.clamp(0, 1).contiguous(), style.clamp(0, 1).contiguous())
    for rows in (3, 40, 97):
        out = torch.full((2, 97, 41, 3), float("nan"))
        got = wavelet_colour_fix(content, style, out=out.movedim(-1, 1), strip_bytes=rows * 2 * 3 * 41 * 4)
        assert got.data_ptr() == out.data_ptr() and torch.equal(out.movedim(-1, 1), want), rows
    assert torch.equal(image, before[0]) and torch.equal(lq, before[1])
    with pytest.raises(DPIRInputError, match="float32 of shape"):
        wavelet_colour_fix(content, style, out=torch.empty(2, 3, 97, 40))


@pytest.mark.parametrize("levels", [1, 2, 3, 7])
def test_wavelet_levels(levels):
    content, style = rand(1, 3, 20, 30), rand(1, 3, 20, 30)
    got = wavelet_colour_fix(content, style, levels=levels)
    want = np_wavelet_fix(content.double().numpy(), style.double().numpy(), levels)
    np.testing.assert_allclose(got.numpy(), want, atol=1e-5, rtol=0)


def test_wavelet_blur_single_level_and_decomposition():
    x = rand(2, 3, 9, 11)
    for r in (1, 2, 4, 16):
        want = np.stack([[np_blur(ch, r) for ch in im] for im in x.double().numpy()])
        np.testing.assert_allclose(wavelet_blur(x, r).numpy(), want, atol=1e-6)
    high, low = wavelet_decomposition(x)
    close(high + low, x)
    want_high, want_low = np_decompose(x[0].double().numpy())
    np.testing.assert_allclose(high[0].numpy(), want_high, atol=1e-5)
    np.testing.assert_allclose(low[0].numpy(), want_low, atol=1e-5)


def test_wavelet_blur_equals_stablesr_formulation():
    """StableSR: replicate pad by r, grouped conv with the dilated 3x3 kernel."""
    kernel = torch.tensor(KERNEL, dtype=torch.float32).expand(3, 1, 3, 3)
    for shape in [(2, 3, 9, 11), (1, 3, 2, 3), (1, 3, 1, 1)]:
        x = rand(*shape)
        for r in (1, 2, 4, 8, 16):
            want = F.conv2d(F.pad(x, (r, r, r, r), mode="replicate"), kernel, groups=3, dilation=r)
            close(wavelet_blur(x, r), want, atol=1e-6)


def test_wavelet_fix_against_itself_is_identity():
    x = rand(2, 3, 31, 47)
    close(wavelet_colour_fix(x, x), x, atol=1e-6, rtol=0)


def test_wavelet_constant_colour_shift_moves_the_output():
    content = rand(1, 3, 40, 40, lo=0.2, hi=0.7)
    style = rand(1, 3, 40, 40, lo=0.2, hi=0.7)
    delta = torch.tensor([0.1, -0.05, 0.2]).view(1, 3, 1, 1)
    base = wavelet_colour_fix(content, style)
    shifted = wavelet_colour_fix(content, style + delta)
    close(shifted - base, delta.expand_as(base), atol=1e-5, rtol=0)
    close(shifted.mean(dim=(2, 3)) - base.mean(dim=(2, 3)), delta.view(1, 3), atol=1e-5, rtol=0)


def test_wavelet_takes_style_colour_of_flat_regions():
    content = torch.full((1, 3, 16, 16), 0.3)
    style = torch.tensor([0.8, 0.1, 0.5]).view(1, 3, 1, 1).expand(1, 3, 16, 16)
    close(wavelet_colour_fix(content, style), style.contiguous(), atol=1e-6, rtol=0)


# ---------------------------------------------------------------- AdaIN

@pytest.mark.parametrize("shape", [(2, 3, 17, 29), (1, 3, 2, 3), (1, 3, 4, 4000)])
def test_adain_matches_numpy_reference(shape):
    content, style = rand(*shape), rand(*shape)
    got = adain_colour_fix(content, style)
    np.testing.assert_allclose(got.numpy(), np_adain(content.double().numpy(), style.double().numpy()),
                               atol=1e-5, rtol=0)


def test_adain_output_has_style_statistics():
    content = rand(2, 3, 50, 60, lo=0.3, hi=0.7)
    style = rand(2, 3, 50, 60, lo=0.4, hi=0.6) + torch.tensor([-0.1, 0.0, 0.1]).view(1, 3, 1, 1)
    out = adain_colour_fix(content, style)
    assert out.min() > 0 and out.max() < 1  # nothing clamped, so the statistics are exact
    close(out.mean(dim=(2, 3)), style.mean(dim=(2, 3)), atol=1e-5, rtol=0)
    # std: sqrt(var_c) / sqrt(var_c + eps) * sqrt(var_s + eps), i.e. the style's up to the eps
    close(out.std(dim=(2, 3)), style.std(dim=(2, 3)), atol=2e-4, rtol=0)
    _, std = calc_mean_std(out)
    _, style_std = calc_mean_std(style)
    close(std, style_std, atol=2e-4, rtol=0)


def test_adain_calc_mean_std_is_unbiased_with_eps():
    x = rand(1, 3, 4, 5, dtype=torch.float64)
    mean, std = calc_mean_std(x)
    close(mean.flatten(), x.mean(dim=(2, 3)).flatten())
    close(std.flatten(), (x.var(dim=(2, 3)) + 1e-5).sqrt().flatten())


@pytest.mark.parametrize("fix", FIXES)
@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 2, 3), (1, 3, 8, 8)])
def test_constant_images_are_nan_free(fix, shape):
    content = torch.full(shape, 0.25)
    style = torch.full(shape, 0.75)
    out = fix(content, style)
    assert torch.isfinite(out).all()
    close(out, style, atol=1e-5, rtol=0)
    assert torch.isfinite(fix(rand(*shape), style)).all()
    assert torch.isfinite(fix(content, rand(*shape))).all()


# ---------------------------------------------------------------- lab (CIELAB mean/std), against the CIE formulas

SRGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]])
D65 = np.array([0.95047, 1.0, 1.08883])
EPS_CIE, KAPPA = 216 / 24389, 24389 / 27


def np_rgb_to_lab(rgb: np.ndarray) -> np.ndarray:
    """(B, 3, H, W) sRGB in [0, 1] -> L*a*b* (D65, 2 degrees), the CIE / IEC 61966-2-1 formulas in float64."""
    lin = np.where(rgb > 0.04045, ((rgb + 0.055) / 1.055) ** 2.4, rgb / 12.92)
    xyz = np.einsum("ij,bjhw->bihw", SRGB_TO_XYZ, lin) / D65.reshape(1, 3, 1, 1)
    f = np.where(xyz > EPS_CIE, np.cbrt(xyz), (KAPPA * xyz + 16) / 116)
    return np.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], axis=1)


def np_lab_to_rgb(lab: np.ndarray) -> np.ndarray:
    fy = (lab[:, 0] + 16) / 116
    f = np.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], axis=1)
    xyz = np.where(f ** 3 > EPS_CIE, f ** 3, (116 * f - 16) / KAPPA) * D65.reshape(1, 3, 1, 1)
    lin = np.einsum("ij,bjhw->bihw", np.linalg.inv(SRGB_TO_XYZ), xyz)
    rgb = np.where(lin > 0.0031308, 1.055 * np.clip(lin, 0.0031308, None) ** (1 / 2.4) - 0.055, 12.92 * lin)
    return np.clip(rgb, 0, 1)


def np_lab_fix(content: np.ndarray, style: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    def stats(x):
        flat = x.reshape(x.shape[0], 3, -1)
        return flat.mean(-1)[..., None, None], np.sqrt(flat.var(-1, ddof=1) + eps)[..., None, None]
    c, s = np_rgb_to_lab(content), np_rgb_to_lab(style)
    (cm, cs), (sm, ss) = stats(c), stats(s)
    return np_lab_to_rgb((c - cm) / cs * ss + sm)


def test_np_lab_reference_round_trips_and_knows_white():
    x = rand(2, 3, 9, 7, dtype=torch.float64).numpy()
    np.testing.assert_allclose(np_lab_to_rgb(np_rgb_to_lab(x)), x, atol=1e-9)
    np.testing.assert_allclose(np_rgb_to_lab(np.ones((1, 3, 1, 1))).ravel(), [100, 0, 0], atol=1e-4)


@pytest.mark.parametrize("shape", [(2, 3, 17, 29), (1, 3, 2, 3)])
def test_lab_matches_numpy_reference(shape):
    content, style = rand(*shape), rand(*shape)
    got = lab_colour_fix(content, style)
    # kornia's white point and matrix differ from the CIE values in the 5th digit
    np.testing.assert_allclose(got.numpy(), np_lab_fix(content.double().numpy(), style.double().numpy()),
                               atol=2e-4, rtol=0)


def test_lab_output_has_the_lq_lab_mean_and_spread():
    content = rand(2, 3, 40, 50, lo=0.3, hi=0.7)
    style = (rand(2, 3, 40, 50, lo=0.35, hi=0.65) + torch.tensor([0.12, 0.0, -0.1]).view(1, 3, 1, 1))
    out = lab_colour_fix(content, style)
    assert out.min() > 0 and out.max() < 1  # in gamut: nothing clipped, so the statistics must match
    o, s, c = (np_rgb_to_lab(x.double().numpy()).reshape(2, 3, -1) for x in (out, style, content))
    np.testing.assert_allclose(o.mean(-1), s.mean(-1), atol=0.02)
    np.testing.assert_allclose(o.std(-1, ddof=1), s.std(-1, ddof=1), atol=0.02)
    assert np.abs(c.mean(-1) - s.mean(-1)).max() > 3  # a real colour change was needed


# ---------------------------------------------------------------- shared conventions

@pytest.mark.parametrize("fix", FIXES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64])
def test_dtype_shape_and_range(fix, dtype):
    content = rand(2, 3, 12, 10, dtype=dtype)
    style = rand(2, 3, 12, 10, dtype=torch.float32)
    out = fix(content, style)
    assert out.dtype == dtype and out.shape == content.shape and out.device == content.device
    assert out.min() >= 0 and out.max() <= 1
    want = fix(content.float(), style)  # the work is done in float32
    close(out.float(), want.to(dtype).float())


@pytest.mark.parametrize("fix", FIXES)
def test_style_batch_of_one_broadcasts(fix):
    content = rand(3, 3, 14, 18)
    style = rand(1, 3, 14, 18)
    out = fix(content, style)
    for b in range(3):
        close(out[b:b + 1], fix(content[b:b + 1], style))
    paired = fix(content, style.expand(3, -1, -1, -1))
    close(out, paired)


@pytest.mark.parametrize("fix", FIXES)
@pytest.mark.parametrize("bc, bs", [(2, 3), (1, 2), (3, 2)])
def test_mismatched_batches_raise(fix, bc, bs):
    with pytest.raises(DPIRInputError, match="LQ"):
        fix(rand(bc, 3, 8, 8), rand(bs, 3, 8, 8))


@pytest.mark.parametrize("fix", FIXES)
def test_smaller_style_is_resized_bicubic(fix):
    content = rand(1, 3, 32, 48)
    style = rand(1, 3, 8, 12)
    out = fix(content, style)
    assert out.shape == content.shape
    up = F.interpolate(style, size=(32, 48), mode="bicubic", align_corners=False).clamp(0, 1)
    close(out, fix(content, up))


@pytest.mark.parametrize("fix", FIXES)
def test_larger_or_mixed_style_is_resized(fix):
    content = rand(1, 3, 16, 24)
    for size in [(64, 96), (8, 100), (3, 5)]:
        style = rand(1, 3, *size)
        out = fix(content, style)
        assert out.shape == content.shape and torch.isfinite(out).all()
    flat = torch.tensor([0.2, 0.6, 0.9]).view(1, 3, 1, 1)
    out = wavelet_colour_fix(torch.full((1, 3, 16, 24), 0.5), flat.expand(1, 3, 40, 7))
    close(out, flat.expand_as(out), atol=1e-5, rtol=0)


def test_thin_images():
    for shape in [(1, 3, 4, 4000), (1, 3, 4000, 4), (1, 3, 1, 3000)]:
        content, style = rand(*shape), rand(*shape)
        for fix in FIXES:
            out = fix(content, style)
            assert out.shape == content.shape and torch.isfinite(out).all()


def test_colour_fix_dispatch():
    content, style = rand(1, 3, 8, 8), rand(1, 3, 8, 8)
    assert set(COLOUR_FIX_METHODS) == {"wavelet", "adain", "lab", "none"}
    close(colour_fix(content, style, "wavelet"), wavelet_colour_fix(content, style))
    close(colour_fix(content, style, "lab"), lab_colour_fix(content, style))
    close(colour_fix(content, style, "adain"), adain_colour_fix(content, style))
    assert colour_fix(content, style, "none") is content
    with pytest.raises(DPIRInputError, match="unknown colour fix"):
        colour_fix(content, style, "histogram")


@pytest.mark.parametrize("content, style", [
    (torch.rand(3, 8, 8), torch.rand(1, 3, 8, 8)),          # no batch axis
    (torch.rand(1, 8, 8, 3), torch.rand(1, 8, 8, 3)),       # ComfyUI BHWC by mistake
    (torch.rand(1, 4, 8, 8), torch.rand(1, 4, 8, 8)),       # RGBA
    (torch.rand(1, 3, 8, 8), torch.rand(1, 1, 8, 8)),       # grey style
    (torch.rand(1, 3, 0, 8), torch.rand(1, 3, 8, 8)),       # empty
    (torch.zeros(1, 3, 8, 8, dtype=torch.uint8), torch.rand(1, 3, 8, 8)),
    (np.zeros((1, 3, 8, 8)), torch.rand(1, 3, 8, 8)),
])
def test_bad_images_raise_input_error(content, style):
    for fix in FIXES:
        with pytest.raises(DPIRInputError):
            fix(content, style)


@pytest.mark.parametrize("levels", [0, -1, 2.5, "5", True, None])
def test_bad_levels_raise(levels):
    with pytest.raises(DPIRInputError, match="levels"):
        wavelet_colour_fix(rand(1, 3, 4, 4), rand(1, 3, 4, 4), levels=levels)


def test_numpy_int_levels_accepted():
    x = rand(1, 3, 6, 6)
    close(wavelet_colour_fix(x, x, levels=np.int64(3)), wavelet_colour_fix(x, x, levels=3))
