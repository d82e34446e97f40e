"""DIFFUSION_MODEL wrappers for SD3, whose MMDiT in ComfyUI never calls them.

Core's EasyCache hooks the diffusion model's forward through a ``DIFFUSION_MODEL`` wrapper; the DiTs it was
written for (Flux, Wan, ...) run those wrappers in their forward, ComfyUI's MMDiT does not, so on SD3 EasyCache
never skips a step. ``call_dit_wrappers`` (an ``APPLY_MODEL`` wrapper of the DPIR MODEL) runs them around the
SD3 diffusion model for the duration of one model call -- core's torch.compile wrapper swaps the module in the
same place -- without touching core's code. EasyCache keeps one model call per step; tiled sampling makes one
per tile batch, so there it is refused (``refuse_easycache_in_tiles``).
"""
from __future__ import annotations

import comfy.patcher_extension as pe

from ..models.errors import DPIRInputError

EASYCACHE = "easycache"  # the key core's EasyCache node registers its wrappers under


def _without_dit_wrappers(transformer_options: dict) -> dict:
    wrappers = transformer_options.get("wrappers", {})
    return {**transformer_options,
            "wrappers": {k: v for k, v in wrappers.items() if k != pe.WrappersMP.DIFFUSION_MODEL}}


def call_dit_wrappers(executor, *args, **kwargs):
    """APPLY_MODEL wrapper: the model's DIFFUSION_MODEL wrappers around SD3's diffusion model for this call. The
    model's own forward gets the options without them, so a host whose MMDiT runs them itself does not run them
    twice."""
    options = args[5] if len(args) > 5 else kwargs.get("transformer_options", {})
    wrappers = pe.get_all_wrappers(pe.WrappersMP.DIFFUSION_MODEL, options)
    dm = getattr(executor.class_obj, "diffusion_model", None)
    if not wrappers or dm is None or "forward" in vars(dm):
        return executor(*args, **kwargs)
    forward = dm.forward

    def inner(*a, **kw):
        if isinstance(kw.get("transformer_options"), dict):
            kw["transformer_options"] = _without_dit_wrappers(kw["transformer_options"])
        return forward(*a, **kw)

    dm.forward = lambda *a, **kw: pe.WrapperExecutor.new_class_executor(inner, dm, wrappers).execute(*a, **kw)
    try:
        return executor(*args, **kwargs)
    finally:
        del dm.forward


def refuse_easycache_in_tiles(model_options: dict) -> None:
    """EasyCache compares each model call with the previous one of the step's first prompt; in tiled sampling
    consecutive calls are different tiles, so it would paste one tile's output onto another."""
    wrappers = model_options.get("transformer_options", {}).get("wrappers", {})
    if wrappers.get(pe.WrappersMP.DIFFUSION_MODEL, {}).get(EASYCACHE):
        raise DPIRInputError(
            "EasyCache cannot be combined with DPIR's tiled sampling: it caches one model call per step and tiled "
            "sampling calls the model once per tile batch, so it would reuse one tile's output for another. Use "
            "LazyCache instead (it caches whole steps and works tiled), or sample without 'tiles'")
