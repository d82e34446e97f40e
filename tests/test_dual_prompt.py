"""Dual prompt assembly: shapes and values computed by hand (dpir-reference §3)."""
import pytest
import torch

from dpir_pack.models import dual_prompt as dp
from dpir_pack.models.errors import DPIRInputError

H1, P2, WIDTH = 6, 4, 16  # encoder-1 hidden, encoder-2 projection, context width (tiny stand-ins for 768/1280/4096)


def enc1(images):
    """Transparent encoder 1: 5 tokens; token t, channel j = mean of the image * (t + 1) + j."""
    m = images.mean(dim=(1, 2, 3))
    t = torch.arange(5.0).view(1, 5, 1) + 1
    j = torch.arange(float(H1)).view(1, 1, H1)
    return m.view(-1, 1, 1) * t + j, None


def enc2(images):
    """Transparent encoder 2: embedding j = top-left pixel's red value - j."""
    return None, images[:, 0, 0, 0].view(-1, 1) - torch.arange(float(P2)).view(1, P2)


def image(h, w):
    torch.manual_seed(h * 7 + w)
    return torch.rand(1, 3, h, w)


@pytest.mark.parametrize("h,w,starts_y,starts_x", [
    (1024, 1024, [0], [0]),
    (1536, 2048, [0, 512], [0, 960, 1024]),
    (400, 600, [0], [0]),
])
def test_global_tiles(h, w, starts_y, starts_x):
    boxes = dp.global_tiles(h, w)
    assert [(b[0], b[1]) for b in boxes] == [(y, x) for y in starts_y for x in starts_x]
    assert all(b[2] == min(1024, h) and b[3] == min(1024, w) for b in boxes)
    # last tile flush with the edge, every pixel covered
    assert max(b[0] + b[2] for b in boxes) == h and max(b[1] + b[3] for b in boxes) == w


@pytest.mark.parametrize("h,w", [(1024, 1024), (1536, 2048), (400, 600)])
def test_visual_prompt_values(h, w):
    img = image(h, w)
    tokens, pooled = dp.visual_prompt(img, img, enc1, enc2, WIDTH)
    assert tokens.shape == (1, 77, WIDTH) and pooled.shape == (1, H1 + P2)

    hidden = enc1(img)[0]
    expected_pooled = torch.cat([hidden[:, 0], img[:, 0, 0, 0].view(1, 1) - torch.arange(float(P2))], dim=-1)
    torch.testing.assert_close(pooled, expected_pooled)
    # local tokens: 5 encoder-1 tokens, zero beyond H1
    torch.testing.assert_close(tokens[0, :5, :H1], hidden[0])
    assert tokens[0, :5, H1:].abs().max() == 0
    # global tokens follow, one per tile, row-major
    boxes = dp.global_tiles(h, w)
    for i, (t, l, th, tw) in enumerate(boxes):
        crop = img[:, :, t:t + th, l:l + tw]
        g = torch.cat([enc1(crop)[0][:, 0], enc2(crop)[1]], dim=-1)[0]
        torch.testing.assert_close(tokens[0, 5 + i, :H1 + P2], g)
        assert tokens[0, 5 + i, H1 + P2:].abs().max() == 0
    assert tokens[0, 5 + len(boxes):].abs().max() == 0  # zero padding up to 77
    if (h, w) == (400, 600):  # too small to split: global = local summary
        torch.testing.assert_close(tokens[0, 5, :H1 + P2], pooled[0])


def test_truncation_to_77_and_feature_padding():
    local = torch.ones(2, 50, 3)
    glob = torch.full((2, 40, 5), 2.0)
    out = dp.visual_tokens(local, glob, context_width=8)
    assert out.shape == (2, 77, 8)
    assert out[:, :50, :3].eq(1).all() and out[:, :50, 3:].eq(0).all()
    assert out[:, 50:77, :5].eq(2).all() and out[:, 50:, 5:].eq(0).all()


def test_dual_context_and_zero_prompt():
    visual, text = torch.randn(1, 77, 16), torch.randn(1, 256, 16)
    ctx = dp.dual_context(visual, text)
    assert ctx.shape == (1, 333, 16)
    torch.testing.assert_close(ctx[:, :77], visual)
    torch.testing.assert_close(ctx[:, 77:], text)
    z, zp = dp.zero_prompt(ctx, torch.randn(1, 10))
    assert z.shape == ctx.shape and z.abs().max() == 0 and zp.abs().max() == 0
    with pytest.raises(DPIRInputError, match="T5"):
        dp.dual_context(visual, torch.randn(1, 256, 8))


def test_global_tokens_batched_once_per_image():
    calls = []

    def counting(images):
        calls.append(images.shape[0])
        return enc1(images)

    img = torch.rand(2, 3, 1536, 2048)
    dp.global_summary(img, counting, enc2)
    assert calls == [2 * 6]  # every tile of every image in one encoder call


@pytest.mark.parametrize("max_bytes, calls", [(2**30, [2 * 6]), (4 * 2 * 3 * 1024 * 1024 * 4, [8, 4]),
                                               (1, [2] * 6)])
def test_global_tokens_in_chunks_of_crops(max_bytes, calls):
    """An 8K image's crops are cut a chunk at a time: the same tokens, per image in box order, whatever the chunk."""
    seen = []

    def counting(images):
        seen.append(images.shape[0])
        return enc1(images)

    img = torch.rand(2, 3, 1536, 2048)
    boxes = dp.global_tiles(1536, 2048)
    hidden, pooled = dp.encode_boxes(img, boxes, counting, enc2, max_bytes=max_bytes)
    assert seen == calls and hidden.shape == (2, 6, 5, H1) and pooled.shape == (2, 6, H1 + P2)
    for b in range(2):
        for n, (t, left, h, w) in enumerate(boxes):
            want_hidden, _ = enc1(img[b:b + 1, :, t:t + h, left:left + w])
            _, want_pooled = dp.summary_tokens(img[b:b + 1, :, t:t + h, left:left + w], enc1, enc2)
            torch.testing.assert_close(hidden[b, n], want_hidden[0])
            torch.testing.assert_close(pooled[b, n], want_pooled[0])


def test_bad_tiling_arguments():
    with pytest.raises(DPIRInputError):
        dp.tile_starts(100, 64, 64)
    with pytest.raises(DPIRInputError):
        dp.tile_starts(0, 64, 8)
