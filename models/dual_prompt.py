"""Dual prompt assembly (dpir-reference §3) as pure tensor functions.

The context DPIR's DiT reads is ``[visual tokens (77), T5 tokens (256)]``;
the pooled vector is the local image's CLIP summary. Every width comes from
the tensors themselves, so the same code serves SD3-medium (768 + 1280 =
2048 pooled, 4096 context) and tiny test models.

A visual encoder here is any callable ``images (B, 3, H, W) in [0, 1] ->
(last_hidden_state (B, T, D), image_embeds (B, P))`` that does its own CLIP
preprocessing: ``HFVisionEncoder`` in ``visual_encoders`` for Hugging Face
towers, an adapter over ComfyUI's ``CLIP_VISION`` in the nodes.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import DPIRInputError

GLOBAL_TILE = 1024
GLOBAL_OVERLAP = 64
VISUAL_TOKENS = 77
T5_TOKENS = 256

VisionEncoder = Callable[[torch.Tensor], "tuple[torch.Tensor, torch.Tensor]"]


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Window starts covering ``[0, size)``; the last window is flush with the edge.

    A side no longer than the tile is one window over the whole side (the
    released code produced a negative start there; the paper's intent is
    that a too-small image is its own global view).
    """
    if size <= 0 or tile <= 0:
        raise DPIRInputError(f"cannot tile a side of {size} px with tiles of {tile} px")
    if not 0 <= overlap < tile:
        raise DPIRInputError(f"tile overlap {overlap} must be at least 0 and smaller than the tile size {tile}")
    if size <= tile:
        return [0]
    stride = tile - overlap
    count = math.ceil((size - overlap) / stride)
    return [min(i * stride, size - tile) for i in range(count)]


def global_tiles(height: int, width: int, tile: int = GLOBAL_TILE, overlap: int = GLOBAL_OVERLAP):
    """Boxes ``(top, left, h, w)`` of the global view's tiles, row-major."""
    th, tw = min(tile, height), min(tile, width)
    return [(top, left, th, tw)
            for top in tile_starts(height, tile, overlap)
            for left in tile_starts(width, tile, overlap)]


def _shape(x) -> str:
    return str(tuple(x.shape)) if isinstance(x, torch.Tensor) else type(x).__name__


def _check(x, ndim: int, what: str, layout: str) -> None:
    if not isinstance(x, torch.Tensor) or x.ndim != ndim:
        raise DPIRInputError(f"{what} must be a {layout} tensor, got {_shape(x)}")


def _check_size(value, what: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise DPIRInputError(f"{what} must be a whole number of at least {minimum}, got {value!r}")
    return value


def pad_tokens(x: torch.Tensor, length: int) -> torch.Tensor:
    """Zero-pad or truncate the token axis (dim 1) of (B, N, W) to ``length``."""
    _check(x, 3, "a prompt", "(batch, tokens, width)")
    _check_size(length, "the prompt length", 0)
    n = x.shape[1]
    if n >= length:
        return x[:, :length]
    return F.pad(x, (0, 0, 0, length - n))


def pad_features(x: torch.Tensor, width: int) -> torch.Tensor:
    """Zero-pad the feature axis (last) to ``width``."""
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise DPIRInputError(f"prompt features must be a tensor with a feature axis, got {_shape(x)}")
    _check_size(width, "the prompt width", 0)
    if x.shape[-1] > width:
        raise DPIRInputError(f"features of width {x.shape[-1]} do not fit into a {width}-wide prompt slot; "
                             "the visual encoders do not match this DPIR transformer")
    return F.pad(x, (0, width - x.shape[-1]))


def pooled_vector(hidden1: torch.Tensor, image_embeds2: torch.Tensor) -> torch.Tensor:
    """Encoder 1's class token (before post-layernorm) ++ encoder 2's projected embedding."""
    _check(hidden1, 3, "visual encoder 1's hidden states", "(batch, tokens, width)")
    _check(image_embeds2, 2, "visual encoder 2's image embedding", "(batch, width)")
    if hidden1.shape[1] < 1 or hidden1.shape[0] != image_embeds2.shape[0]:
        raise DPIRInputError(f"the visual encoders disagree: hidden states {_shape(hidden1)} and image embedding "
                             f"{_shape(image_embeds2)}; use two CLIP vision towers")
    return torch.cat([hidden1[:, 0], image_embeds2.to(hidden1.dtype)], dim=-1)


def visual_tokens(local_hidden: torch.Tensor, global_tokens: torch.Tensor, context_width: int,
                  length: int = VISUAL_TOKENS) -> torch.Tensor:
    """``[local tokens (padded to pooled width), global tokens]`` → (B, length, context_width).

    The local tokens must leave room for global ones: a local encoder with
    ``length`` tokens or more (a /14 or /16 tower; ViT-B/32 gives 50) means
    the two encoders are swapped or wrong, and is refused."""
    _check(local_hidden, 3, "the local tokens", "(batch, tokens, width)")
    _check(global_tokens, 3, "the global tokens", "(batch, tokens, width)")
    _check_size(length, "the visual prompt length", 1)
    if local_hidden.shape[0] != global_tokens.shape[0]:
        raise DPIRInputError(f"{local_hidden.shape[0]} local images cannot pair with {global_tokens.shape[0]} "
                             "global images")
    if local_hidden.shape[1] >= length:
        raise DPIRInputError(
            f"the local visual encoder gives {local_hidden.shape[1]} tokens, which leaves no room for the global "
            f"tokens in the {length}-token visual prompt: 'clip_vision_local' must be CLIP ViT-B/32 (50 tokens) and "
            "'clip_vision_summary' CLIP ViT-bigG/14. Are the two CLIP vision towers swapped?")
    local = pad_features(local_hidden, global_tokens.shape[-1])
    seq = pad_tokens(torch.cat([local, global_tokens.to(local.dtype)], dim=1), length)
    return pad_features(seq, context_width)


def dual_context(visual: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Visual tokens then T5 tokens along the sequence: (B, 77 + 256, width)."""
    _check(visual, 3, "the visual prompt", "(batch, tokens, width)")
    _check(text, 3, "the T5 prompt", "(batch, tokens, width)")
    if visual.shape[-1] != text.shape[-1]:
        raise DPIRInputError(f"visual prompt width {visual.shape[-1]} differs from the T5 prompt width "
                             f"{text.shape[-1]}: use the T5 encoder that belongs to this DPIR model")
    if visual.shape[0] != text.shape[0]:
        if text.shape[0] == 1:
            text = text.expand(visual.shape[0], -1, -1)
        elif visual.shape[0] == 1:
            visual = visual.expand(text.shape[0], -1, -1)
        else:
            raise DPIRInputError(f"{visual.shape[0]} visual prompts cannot pair with {text.shape[0]} text prompts")
    return torch.cat([visual, text.to(visual.dtype)], dim=1)


def crop_tiles(images: torch.Tensor, boxes) -> torch.Tensor:
    """Stack the boxes of every image: (B, 3, H, W) → (B * len(boxes), 3, h, w), image-major."""
    return torch.stack([images[:, :, t:t + h, l:l + w] for (t, l, h, w) in boxes], dim=1).flatten(0, 1)


def summary_tokens(images: torch.Tensor, encoder1: VisionEncoder, encoder2: VisionEncoder) -> tuple[torch.Tensor, torch.Tensor]:
    """Run both encoders once on a batch: (encoder-1 hidden states, pooled vector)."""
    hidden1, _ = encoder1(images)
    _, embeds2 = encoder2(images)
    return hidden1, pooled_vector(hidden1, embeds2)


CROP_BYTES = 256 * 2**20  # crops cut at once: the boxes of an 8K image, cut all together, would copy it 1-4 times


def encode_boxes(images: torch.Tensor, boxes, encoder1: VisionEncoder, encoder2: VisionEncoder,
                 max_bytes: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """``summary_tokens`` of every image's crops at ``boxes`` (all of one size): (B, N, T, D) hidden states and
    (B, N, P) pooled vectors. The crops are cut and encoded a ``max_bytes`` (default ``CROP_BYTES``) chunk at a
    time (each chunk in one encoder call), so the memory they take does not grow with the image."""
    b, max_bytes = images.shape[0], max_bytes or CROP_BYTES
    per_box = b * images.shape[1] * boxes[0][2] * boxes[0][3] * images.element_size()
    chunk = max(1, max_bytes // per_box)
    hidden, pooled = [], []
    for i in range(0, len(boxes), chunk):
        part = boxes[i:i + chunk]
        h1, p = summary_tokens(crop_tiles(images, part), encoder1, encoder2)
        hidden.append(h1.view(b, len(part), *h1.shape[1:]))
        pooled.append(p.view(b, len(part), -1))
    return torch.cat(hidden, 1), torch.cat(pooled, 1)


def global_summary(global_image: torch.Tensor, encoder1: VisionEncoder, encoder2: VisionEncoder,
                   tile: int = GLOBAL_TILE, overlap: int = GLOBAL_OVERLAP) -> torch.Tensor:
    """One pooled-width token per global tile: (B, N, P), the tiles in as few encoder batches as ``encode_boxes``
    allows (one up to 256 MiB of crops)."""
    _, _, h, w = global_image.shape
    return encode_boxes(global_image, global_tiles(h, w, tile, overlap), encoder1, encoder2)[1]


def visual_prompt(local_image: torch.Tensor, global_image: torch.Tensor, encoder1: VisionEncoder,
                  encoder2: VisionEncoder, context_width: int | None = None, tile: int = GLOBAL_TILE,
                  overlap: int = GLOBAL_OVERLAP, length: int = VISUAL_TOKENS,
                  global_tokens: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Visual tokens (B, 77, context_width) and pooled vector (B, P) of a local patch in its global view.

    Images are (B, 3, H, W) in [0, 1]. ``context_width`` None keeps the pooled
    width (padding to the T5 width then happens in ``dual_context``'s caller).
    ``global_tokens`` may be passed in when they were computed once for
    several local patches of one image.
    """
    for name, im in (("local image", local_image), ("global image", global_image)):
        if im.ndim != 4 or im.shape[1] != 3:
            raise DPIRInputError(f"the {name} must be RGB (B, 3, H, W), got {tuple(im.shape)}")
    hidden1, pooled = summary_tokens(local_image, encoder1, encoder2)
    if global_tokens is None:
        global_tokens = global_summary(global_image, encoder1, encoder2, tile, overlap)
    if global_tokens.shape[0] != pooled.shape[0]:
        global_tokens = global_tokens.expand(pooled.shape[0], -1, -1)
    return visual_tokens(hidden1, global_tokens, context_width or pooled.shape[-1], length), pooled


def zero_prompt(context: torch.Tensor, pooled: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The unconditional prompt of the released code: all zeros, context and pooled."""
    return torch.zeros_like(context), torch.zeros_like(pooled)
