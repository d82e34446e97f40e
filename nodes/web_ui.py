"""What the pack's browser extension (web/js/) gets from the server.

* ``compare_ui``: the LQ and restored images of DPIR Colour Fix saved to
  ComfyUI's temp folder (as Preview Image does), for the before/after view;
* ``tiles_ui``: the LQ image of DPIR Tiled Global-Local Prompt and its tile
  plan, for the tile overlay (the browser recomputes the plan live with the
  same rule, web/js/dpir_tile_plan.js);
* ``GET /dpir/model_files``: ``MODEL_FILES`` with the guidance text of each
  kind (the text of the loaders' "file missing" errors), for the in-node
  guidance of loaders that have no file, and the pack's version (pyproject.toml).

UI results go under keys of their own (``dpir_compare``, ``dpir_tiles``), not
``images``, so the frontend's default image preview does not pick them up.
"""
from __future__ import annotations

import logging
import os
import random
import string
import sys

import numpy as np
import torch
from PIL import Image

import folder_paths

from .model_files import MODEL_FILES, guidance, list_models
from .version import pack_version

ROUTE = "/dpir/model_files"
# the model-file kinds a loader widget needs (a CLIP vision loader is used for either tower)
LOADER_KINDS = {
    "DPIRModelLoader": {"transformer": ["dpir_transformer"]},
    "DPIRRobustVAELoader": {"robust_vae": ["robust_vae"]},
    "DPIRCLIPVisionLoader": {"clip_name": ["clip_vision_local", "clip_vision_summary"]},
}
LOADER_FOLDERS = {"DPIRModelLoader": "dpir", "DPIRRobustVAELoader": "dpir", "DPIRCLIPVisionLoader": "clip_vision"}


def serving() -> bool:
    """True inside a running ComfyUI server (a browser may show the views); False in cli.py and in-process tests,
    where no preview files are written."""
    server = sys.modules.get("server")
    return getattr(getattr(server, "PromptServer", None), "instance", None) is not None


def _suffix() -> str:
    return "".join(random.choice(string.ascii_lowercase) for _ in range(5))


def _rgb8(img: torch.Tensor, strip_values: int = 2**24) -> np.ndarray:
    """(H, W, C) float in [0, 1] as (H, W, 3) uint8, a strip of rows at a time: a float copy of an 8K image is
    0.8 GB, and an RGB PNG needs only the bytes."""
    rgb = img[..., :3] if img.shape[-1] >= 3 else img[..., :1].expand(*img.shape[:-1], 3)
    out = torch.empty(rgb.shape, dtype=torch.uint8)
    rows = max(1, strip_values // max(1, rgb[:1].numel()))
    for y in range(0, rgb.shape[0], rows):
        out[y:y + rows] = rgb[y:y + rows].clamp(0, 1).mul_(255.0).round_()
    return out.numpy()


def save_temp_images(images: torch.Tensor, prefix: str) -> list[dict]:
    """A (B, H, W, C) IMAGE batch as 8-bit PNGs in ComfyUI's temp folder; their ``/view`` references."""
    out_dir = folder_paths.get_temp_directory()
    images = images.detach().float().cpu()
    full, name, counter, subfolder, _ = folder_paths.get_save_image_path(
        f"{prefix}_temp_{_suffix()}", out_dir, images.shape[2], images.shape[1])
    refs = []
    for i, img in enumerate(images):
        file = f"{name}_{counter + i:05}_.png"
        Image.fromarray(_rgb8(img)).save(os.path.join(full, file), compress_level=1)  # Preview Image's level: fast
        refs.append({"filename": file, "subfolder": subfolder, "type": "temp"})
    return refs


def compare_ui(lq_image: torch.Tensor, restored: torch.Tensor) -> dict:
    """``{"dpir_compare": [...]}``: one entry per restored image, with its LQ image (the LQ batch may be 1)."""
    if not serving():
        return {"dpir_compare": []}
    restored_refs = save_temp_images(restored, "dpir_restored")
    lq = lq_image if lq_image.shape[0] in (1, restored.shape[0]) else lq_image[:1]
    lq_refs = save_temp_images(lq, "dpir_lq")
    h, w = restored.shape[1:3]
    return {"dpir_compare": [{"lq": lq_refs[min(i, len(lq_refs) - 1)], "restored": ref, "width": int(w),
                              "height": int(h), "index": i, "count": len(restored_refs)}
                             for i, ref in enumerate(restored_refs)]}


def tiles_ui(lq_image: torch.Tensor, tiles, tile_size: int, tile_overlap: int, latent_scale: int,
             size: tuple[int, int] | None = None) -> dict:
    """``{"dpir_tiles": [...]}``: the LQ image (first of the batch), its size and the unshifted tile plan.

    ``size`` (height, width): the LQ image's own size when ``lq_image`` is a shrunk preview of it (the overlay
    draws the picture at that size). ``tiles`` are ``[x, y, width, height]`` in image pixels, clipped to the image
    (as the preview draws them).
    """
    if not serving():
        return {"dpir_tiles": []}
    h, w = size or lq_image.shape[1:3]
    rects = []
    for t in tiles.plans[0]:
        x0, y0 = t.left * latent_scale, t.top * latent_scale
        x1, y1 = min(w, t.right * latent_scale), min(h, t.bottom * latent_scale)
        rects.append([int(x0), int(y0), int(x1 - x0), int(y1 - y0)])
    return {"dpir_tiles": [{"lq": save_temp_images(lq_image[:1], "dpir_tile_lq")[0], "width": int(w),
                            "height": int(h), "latent": [int(tiles.height), int(tiles.width)],
                            "tile_size": int(tile_size), "tile_overlap": int(tile_overlap),
                            "shifts": len(tiles.plans), "tiles": rects}]}


def model_files_payload() -> dict:
    """What ``GET /dpir/model_files`` answers (computed per request: folders may change)."""
    return {
        "files": MODEL_FILES,
        "guidance": {kind: guidance(kind) for kind in MODEL_FILES},
        "loaders": LOADER_KINDS,
        "listed": {node: list_models(folder) for node, folder in LOADER_FOLDERS.items()},
        "version": pack_version(),
    }


def register_routes() -> bool:
    """Add ``GET /dpir/model_files`` to a running ComfyUI server (also under ``/api``); False without one.

    Custom packs add routes on ``PromptServer.instance.routes`` while they are imported: ComfyUI builds
    its aiohttp app from that table after loading the custom nodes. Outside a server (tests, cli.py)
    there is no instance and nothing is added.
    """
    if not serving():
        return False
    instance = sys.modules["server"].PromptServer.instance
    if getattr(instance, "_dpir_routes", False):
        return False
    from aiohttp import web

    @instance.routes.get(ROUTE)
    async def dpir_model_files(request):
        return web.json_response(model_files_payload())

    instance._dpir_routes = True
    return True


try:
    register_routes()
except Exception:  # never let the optional route stop the nodes from loading
    logging.exception("ComfyUI-DPIR: could not add the %s route", ROUTE)
