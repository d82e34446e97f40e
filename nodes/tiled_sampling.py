"""Tiled global-local sampling for large images.

DPIR was trained on a local 1024 px patch with the whole image as global
context. Here each latent tile is denoised with its own LQ features
(``control_conv`` of the tile's own crop of the LQ latent, once per tile and
sampling run, kept in RAM when sampling on a GPU), its own local visual prompt and the global tokens of the whole
image, and the tiles are blended with normalised Gaussian weights. It plugs
into ComfyUI as ``sampler_calc_cond_batch_function`` of the MODEL, so CFG,
every sampler/scheduler, the core KSampler and SamplerCustomAdvanced all
sample tiled.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.conds
import comfy.model_management
import comfy.samplers
import comfy.utils

from ..models import dual_prompt as dp
from ..models.errors import DPIRInputError
from ..models.tiling import Tile, blend_weights, plan_tiles, shifted_plan
from .images import preview_of, to_bchw, to_bhwc
from .dit_wrappers import refuse_easycache_in_tiles
from .lq_injection import KEY, CONDTokenGrid, injection_of
from .visual_prompt import ComfyVisionEncoder, global_tokens as cached_global_tokens
from .web_ui import tiles_ui

LATENT_SCALE = 8  # image px per latent px
PROMPT_MODES = ("per-tile local prompt", "same prompt for all tiles (released)")
# a tile's LQ features: control_conv of its own latent crop (training, the authors' sliding-window pipeline), or
# the crop of the whole image's features (before issue 16; kept for comparison: bench.py lq-tiles)
LQ_FEATURES = ("tile", "image")
SHIFT_CYCLE = 4  # seam shifts cycle through 0, 1/4, 2/4, 3/4 of a tile
# Gaussian tile weights: the release's variance 0.01 switches between tiles within ~6 px of a 16 px overlap
# (largest per-pixel step 17% of the tiles' disagreement at tile 128); 0.02 spreads it over the overlap (8.5%)
BLEND_VAR = 0.02


def token_aligned_plan(height: int, width: int, tile: int, overlap: int, shift: int = 0) -> list[Tile]:
    """Tiles in latent px whose corners fall on the patch-2 token grid, so LQ features crop exactly."""
    rows, cols = (height + 1) // 2, (width + 1) // 2
    plan = shifted_plan(rows, cols, tile // 2, overlap // 2, shift // 2, shift // 2) if shift else \
        plan_tiles(rows, cols, tile // 2, overlap // 2)
    return [Tile(2 * t.top, 2 * t.left, min(2 * t.height, height - 2 * t.top), min(2 * t.width, width - 2 * t.left))
            for t in plan]


class TileSet:
    """Tile plans (one per seam shift) for one latent size, with optional per-tile visual prompts."""

    def __init__(self, height, width, tile, overlap, shifts, shift_every, visual=None, text=None, image_size=None):
        if tile % 2 or overlap % 2 or not 0 <= overlap < tile:
            raise DPIRInputError(f"tile size {tile} and overlap {overlap} (latent px) must be even, overlap < tile")
        self.height, self.width, self.tile, self.overlap = height, width, tile, overlap
        self.plans = [token_aligned_plan(height, width, tile, overlap, s) for s in shifts]
        self.shift_every = max(1, shift_every)
        self.visual = visual  # {(plan, tile): (tokens (B, 77, P), pooled (B, P))} or None (one prompt for all)
        self.text = text  # T5 tokens (1 or B, 256, W) for the per-tile contexts
        self.image_size = image_size
        self._weights = {}
        self._on_device = {}

    def __deepcopy__(self, memo):
        return self

    @property
    def count(self) -> int:
        return len(self.plans[0])

    def plan_index(self, step: int) -> int:
        return (step // self.shift_every) % len(self.plans)

    def weights(self, index: int, device, dtype):
        key = (index, device, dtype)
        if key not in self._weights:
            blend = blend_weights(self.plans[index], self.height, self.width, var=BLEND_VAR)
            self._weights[key] = [w.to(device=device, dtype=dtype) for w in blend.weights]
        return self._weights[key]

    def context(self, index: int, tile_index: int, batch: int, device):
        """A tile's dual prompt on ``device``; its visual half is moved there once, not at every step."""
        key = (index, tile_index, device)
        if key not in self._on_device:
            tokens, pooled = self.visual[(index, tile_index)]
            self._on_device[key] = (tokens.to(device), pooled.to(device))
        tokens, pooled = self._on_device[key]
        if (device, "text") not in self._on_device:
            self._on_device[(device, "text")] = self.text.to(device).float()
        text = self._on_device[(device, "text")]
        ctx = dp.dual_context(dp.pad_features(tokens.float(), text.shape[-1]), text)
        return _to_batch(ctx, batch), _to_batch(pooled.float(), batch)


def _to_batch(x: torch.Tensor, batch: int) -> torch.Tensor:
    return x if x.shape[0] == batch else comfy.utils.repeat_to_batch_size(x, batch)


def _crop(cond, tile: Tile, batch: int):
    """A model-cond for one tile: spatial ones cropped (token grids at half resolution), others as they are."""
    if isinstance(cond, CONDTokenGrid):
        g = cond.cond[:, :, tile.top // 2:(tile.bottom + 1) // 2, tile.left // 2:(tile.right + 1) // 2]
        return _to_batch(g, batch)
    if isinstance(cond, comfy.conds.CONDNoiseShape):
        return _to_batch(cond.cond[:, :, tile.top:tile.bottom, tile.left:tile.right], batch)
    return None


class TiledCondBatch:
    """``sampler_calc_cond_batch_function``: evaluate cond/uncond tile by tile and blend."""

    def __init__(self, tiles: TileSet, tile_batch: int, lq_features: str = "tile"):
        if lq_features not in LQ_FEATURES:
            raise DPIRInputError(f"lq_features must be one of {LQ_FEATURES}, got {lq_features!r}")
        self.tiles, self.tile_batch, self.lq_features = tiles, max(1, tile_batch), lq_features
        # every step is tiled and every tile uses its own LQ features: the whole image's are never needed
        self.own_lq_features = lq_features == "tile" and all(len(p) > 1 for p in tiles.plans)

    def __deepcopy__(self, memo):
        return self

    def _step(self, sigma, model_options) -> int:
        sigmas = model_options.get("transformer_options", {}).get("sample_sigmas")
        if sigmas is None:
            return 0
        return int(torch.argmin((sigmas.to(sigma.device) - sigma[0]).abs()))

    def _tile_conds(self, conds, group, batch, index, positive, device, own):
        out = []
        for c in conds:
            if "area" in c or "mask" in c:
                raise DPIRInputError("area or mask conditioning cannot be combined with DPIR tiled sampling; "
                                     "remove the tiles input or the area/mask node")
            n, mc = c.copy(), dict(c["model_conds"])
            for key, value in c["model_conds"].items():
                if isinstance(value, CONDTokenGrid) and own is not None:
                    mc[key] = CONDTokenGrid(own)
                    continue
                crops = [_crop(value, tile, batch) for _, tile in group]
                if crops[0] is not None:
                    mc[key] = type(value)(torch.cat(crops))
            if positive and self.tiles.visual is not None:
                ctx, pooled = zip(*(self.tiles.context(index, i, batch, device) for i, _ in group))
                mc["c_crossattn"] = comfy.conds.CONDCrossAttn(torch.cat(ctx))
                mc["y"] = comfy.conds.CONDRegular(torch.cat(pooled))
            n["model_conds"] = mc
            out.append(n)
        return out

    def __call__(self, args):
        conds, x, sigma = args["conds"], args["input"], args["sigma"]
        model, model_options = args["model"], args["model_options"]
        b, _, h, w = x.shape
        if (h, w) != (self.tiles.height, self.tiles.width):
            raise DPIRInputError(f"the tiles were planned for a {self.tiles.width}×{self.tiles.height} latent but "
                                 f"the sampler's latent is {w}×{h}: wire the same LQ image into the tiled prompt "
                                 "and the sampler's latent")
        index = self.tiles.plan_index(self._step(sigma, model_options))
        plan = self.tiles.plans[index]
        if len(plan) == 1:  # the whole latent is one tile: exactly the untiled evaluation
            return comfy.samplers.calc_cond_batch(model, conds, x, sigma, model_options)
        refuse_easycache_in_tiles(model_options)
        weights = self.tiles.weights(index, x.device, x.dtype)
        lq = injection_of(model_options) if self.lq_features == "tile" else None
        outs = [torch.zeros_like(x) for _ in conds]  # a skipped (None) uncond stays zero, as in ComfyUI
        indexed = list(enumerate(plan))
        for start in range(0, len(indexed), self.tile_batch):
            comfy.model_management.throw_exception_if_processing_interrupted()
            chunk = indexed[start:start + self.tile_batch]
            for shape in dict.fromkeys((t.height, t.width) for _, t in chunk):  # same-size tiles batch together
                group = [(i, t) for i, t in chunk if (t.height, t.width) == shape]
                tiles = [t for _, t in group]
                x_t = torch.cat([x[:, :, t.top:t.bottom, t.left:t.right] for t in tiles])
                # the group's own LQ features, moved to the device once for cond and uncond
                own = None if lq is None else torch.cat([_to_batch(f, b) for f in lq.tile_features(tiles, x.device)])
                tile_conds = [None if c is None else self._tile_conds(c, group, b, index, k == 0, x.device, own)
                              for k, c in enumerate(conds)]
                res = comfy.samplers.calc_cond_batch(model, tile_conds, x_t, sigma.repeat(len(tiles)), model_options)
                for k, r in enumerate(res):
                    if conds[k] is None:
                        continue
                    for j, (i, t) in enumerate(group):
                        outs[k][:, :, t.top:t.bottom, t.left:t.right] += r[j * b:(j + 1) * b] * weights[i]
        return outs


def attach(model, tiles: TileSet, tile_batch: int, lq_features: str = "tile"):
    """Make the MODEL (a patcher the caller owns) sample tiled; its LQ branch is loaded with the DiT, on the
    sampling device, for the tiles' own features."""
    model.model_options["sampler_calc_cond_batch_function"] = TiledCondBatch(tiles, tile_batch, lq_features)
    lq = injection_of(model.model_options)
    if lq is not None and lq.branch is not None and lq_features == "tile":
        model.set_additional_models(KEY, [lq.branch.patcher])


def draw_plan(picture: torch.Tensor, tiles: TileSet) -> torch.Tensor:
    """``picture`` (1, 3, h, w), the LQ image shrunk by ``preview_of`` (an 8K photo costs no 8K copies), with the
    first plan's tiles outlined to scale and overlaps tinted."""
    out = picture * 0.75
    _, _, h, w = out.shape
    ky, kx = h / tiles.image_size[0], w / tiles.image_size[1]
    cover = torch.zeros(h, w)
    colours = torch.tensor([[1.0, 0.3, 0.2], [0.2, 0.8, 1.0], [1.0, 0.9, 0.2], [0.5, 1.0, 0.4]])
    line = max(1, min(h, w) // 256)
    for i, t in enumerate(tiles.plans[0]):
        y0, x0 = round(t.top * LATENT_SCALE * ky), round(t.left * LATENT_SCALE * kx)
        y1, x1 = min(h, round(t.bottom * LATENT_SCALE * ky)), min(w, round(t.right * LATENT_SCALE * kx))
        cover[y0:y1, x0:x1] += 1
        c = colours[i % len(colours)].view(3, 1, 1)
        for ys, xs in (((y0, y0 + line), (x0, x1)), ((y1 - line, y1), (x0, x1)),
                       ((y0, y1), (x0, x0 + line)), ((y0, y1), (x1 - line, x1))):
            out[0, :, ys[0]:ys[1], xs[0]:xs[1]] = c
    out[0] += (cover > 1).float() * 0.15  # overlaps lighter
    return out.clamp(0, 1)


class DPIRTiledPrompt:
    DESCRIPTION = ("Plans tiled sampling for large images and builds each tile's dual prompt as DPIR was trained: "
                   "the tile's own local visual prompt + the global tokens of the whole image + the T5 prompt. "
                   "Wire 'tiles' into 'DPIR Sampler Patch'. Memory per step depends on the tile size and tile batch, "
                   "not on the image size. The preview shows the tile grid over the LQ image.")
    CATEGORY = "DPIR"
    FUNCTION = "plan_with_overlay"
    RETURN_TYPES = ("DPIR_TILES", "IMAGE")
    RETURN_NAMES = ("tiles", "tile_preview")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "clip_vision_local": ("CLIP_VISION",),
            "clip_vision_summary": ("CLIP_VISION",),
            "lq_image": ("IMAGE", {"tooltip": "'lq_image' of 'DPIR Robust VAE Encode'"}),
            "text_prompt": ("CONDITIONING", {"tooltip": "'DPIR T5 Text Prompt'"}),
            "tile_size": ("INT", {"default": 1024, "min": 256, "max": 4096, "step": 16,
                                  "tooltip": "tile in image px (1024 = the training crop); bigger = more memory per tile"}),
            "tile_overlap": ("INT", {"default": 128, "min": 0, "max": 1024, "step": 16,
                                     "tooltip": "overlap in image px; more = smoother blending, more tiles"}),
            "prompt_mode": (list(PROMPT_MODES), {"default": PROMPT_MODES[0]}),
            "seam_shift": ("BOOLEAN", {"default": True, "tooltip":
                           "move the tile grid by a quarter tile from step to step so no seam stays in place"}),
            "shift_every": ("INT", {"default": 1, "min": 1, "max": 100, "tooltip": "steps between grid shifts"}),
        }}

    def plan(self, clip_vision_local, clip_vision_summary, lq_image, text_prompt, tile_size, tile_overlap,
             prompt_mode, seam_shift, shift_every):
        return self._plan(clip_vision_local, clip_vision_summary, lq_image, text_prompt, tile_size, tile_overlap,
                          prompt_mode, seam_shift, shift_every)[:2]

    def plan_with_overlay(self, clip_vision_local, clip_vision_summary, lq_image, text_prompt, tile_size,
                          tile_overlap, prompt_mode, seam_shift, shift_every):
        """``plan`` plus the LQ image and plan for the browser's live tile overlay (web/js/dpir_tiles.js)."""
        tiles, drawn, picture = self._plan(clip_vision_local, clip_vision_summary, lq_image, text_prompt, tile_size,
                                           tile_overlap, prompt_mode, seam_shift, shift_every)
        # the overlay draws the shrunk picture at the LQ's own size
        ui = tiles_ui(to_bhwc(picture), tiles, tile_size, tile_overlap, LATENT_SCALE, size=tiles.image_size)
        return {"ui": ui, "result": (tiles, drawn)}

    def _plan(self, clip_vision_local, clip_vision_summary, lq_image, text_prompt, tile_size, tile_overlap,
              prompt_mode, seam_shift, shift_every):
        """(tiles, the tile preview IMAGE, the shrunk LQ picture (1, 3, h, w) it is drawn on)."""
        image = to_bchw(lq_image, "LQ image")
        h, w = image.shape[-2:]
        lh, lw = -(-h // 16) * 2, -(-w // 16) * 2  # the encoder pads to multiples of 16 px
        tile, overlap = tile_size // LATENT_SCALE // 2 * 2, tile_overlap // LATENT_SCALE // 2 * 2
        if overlap >= tile:
            raise DPIRInputError(f"tile_overlap {tile_overlap} must be smaller than tile_size {tile_size}")
        quarter = tile // 4 // 2 * 2
        shifts = [k * quarter for k in range(SHIFT_CYCLE)] if seam_shift and quarter else [0]
        if prompt_mode not in PROMPT_MODES:
            raise DPIRInputError(f"prompt_mode must be one of {PROMPT_MODES}")
        tiles = TileSet(lh, lw, tile, overlap, shifts, shift_every, image_size=(h, w))
        if prompt_mode == PROMPT_MODES[0]:
            tiles.visual, tiles.text = self._tile_prompts(tiles, image, clip_vision_local, clip_vision_summary,
                                                          source=lq_image), text_prompt[0][0]
        picture = preview_of(image[:1])
        return tiles, to_bhwc(draw_plan(picture, tiles)), picture

    @staticmethod
    def _tile_prompts(tiles: TileSet, image, clip_local, clip_summary, batch: int | None = None, source=None):
        """Each distinct tile crop of all plans through the towers once, same-size crops together in batches sized by
        memory (``batch`` None) or of ``batch``; the global tokens once per image (shared with 'DPIR Visual Prompt'
        when ``source``, the node's IMAGE input, is the tensor that node read)."""
        enc1 = ComfyVisionEncoder(clip_local, "clip_vision_local", batch)
        enc2 = ComfyVisionEncoder(clip_summary, "clip_vision_summary", batch)
        h, w = image.shape[-2:]
        global_tokens = dp.global_summary(image, enc1, enc2) if source is None else \
            cached_global_tokens(source, image, enc1, enc2)
        boxes = {}
        for p, plan in enumerate(tiles.plans):
            for i, t in enumerate(plan):
                y0, x0 = min(t.top * LATENT_SCALE, h - 1), min(t.left * LATENT_SCALE, w - 1)
                box = (y0, x0, min(h, t.bottom * LATENT_SCALE) - y0, min(w, t.right * LATENT_SCALE) - x0)
                boxes.setdefault(box, []).append((p, i))
        by_size = {}
        for box in boxes:
            by_size.setdefault(box[2:], []).append(box)
        pbar = comfy.utils.ProgressBar(len(boxes))
        visual, b = {}, image.shape[0]
        for same in by_size.values():  # encoder batches per crop size: shifted plans share most tiles
            hidden, pooled = dp.encode_boxes(image, same, enc1, enc2)  # (B, N, ...)
            tokens = dp.visual_tokens(hidden.flatten(0, 1), global_tokens.repeat_interleave(len(same), 0),
                                      pooled.shape[-1])
            tokens = tokens.view(b, len(same), *tokens.shape[1:])
            for j, box in enumerate(same):
                for key in boxes[box]:
                    visual[key] = (tokens[:, j], pooled[:, j])
            pbar.update(len(same))
        return visual


NODE_CLASS_MAPPINGS = {"DPIRTiledPrompt": DPIRTiledPrompt}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRTiledPrompt": "DPIR Tiled Global-Local Prompt"}
