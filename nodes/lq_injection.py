"""LQ condition injection: a MODEL patch on SD3's first joint block.

The branch features are computed once per image, when a sampling run first needs them (in tiled sampling
once per tile and run, from the tile's own crop of the LQ latent, kept in RAM while sampling on a GPU:
``LQInjection.tile_features``; the whole image's are then never built); at sampling time they travel as a conditioning
model-cond (so ComfyUI's batching, CFG and area crops apply to them), reach
the model through an APPLY_MODEL wrapper, and are cross-normalised and added
after joint block 0 by a double_block replace patch.
"""
from __future__ import annotations

import torch

import comfy.conds
import comfy.model_management
import comfy.patcher_extension
import comfy.utils

from ..models.errors import DPIRInputError, DPIRModelError
from ..models.lq_condition import inject, token_grid
from ..models.restore_guidance import next_sigma, pull_weight, restore_pull, scheduled_strength
from .checks import check_lq_latent, check_prompt, require_sd3
from .dit_wrappers import call_dit_wrappers

KEY = "dpir_lq"


class CONDTokenGrid(comfy.conds.CONDRegular):
    """LQ features as a (B, C, rows, cols) token grid; area conds (latent px) are cropped at token resolution."""

    def process_cond(self, batch_size, area, **kwargs):
        data = self.cond
        if area is not None:
            h, w, y, x = area[:4]
            y0, x0 = y // 2, x // 2
            rows, cols = token_grid(h, w)
            data = data[:, :, y0:y0 + rows, x0:x0 + cols]
        return self._copy_with(comfy.utils.repeat_to_batch_size(data, batch_size))


class CONDTileOwned(CONDTokenGrid):
    """Stands for the whole image's LQ features in tiled sampling with per-tile features: every tile replaces it
    with its own (``TiledCondBatch``), so the whole image's are normally never built. Holds no tensor but its size.
    Only a pass over the whole latent outside the tile hook (core SkipLayerGuidanceSD3's extra pass calls
    ``calc_cond_batch`` itself) asks for them: ``whole`` builds them then."""

    def __init__(self, shape, whole):
        super().__init__(torch.empty(0))
        self.shape, self.whole = tuple(shape), whole

    def process_cond(self, batch_size, area, **kwargs):
        return CONDTokenGrid(self.whole()).process_cond(batch_size, area, **kwargs)


def branch_features(branch, z: torch.Tensor, device, compute) -> torch.Tensor:
    """``control_conv`` of the scaled LQ latent ``z`` on ``device`` in the branch's dtype, stored in the DiT's
    compute dtype ``compute``: no cast at every step, half the memory in bf16/fp16."""
    with torch.no_grad():
        grid = branch.module.control_conv(z.to(device=device, dtype=next(branch.module.parameters()).dtype))
    return grid.to(compute) if compute in (torch.float16, torch.bfloat16, torch.float32) else grid


def cache_device(device) -> torch.device | None:
    """Where the tiles' LQ features wait for their tile batch while sampling on ``device``: ComfyUI's intermediate
    device (CPU RAM unless --gpu-only), as its memory planning does not count them (at 8K with seam shift 369 tiles,
    4.4 GB in bf16); None when that is ``device`` itself (sampling on the CPU): they stay where they are computed."""
    store = torch.device(comfy.model_management.intermediate_device())
    return None if store == torch.device(device) else store


def offload(features: torch.Tensor, store: torch.device, device) -> torch.Tensor:
    """A copy of ``features`` in ``store``; pinned when it is RAM and ``device`` is CUDA, so the copy back to the GPU
    runs asynchronously (plain RAM where pinning fails: pinned memory is limited on some systems, e.g. WSL)."""
    pin = store.type == "cpu" and torch.device(device).type == "cuda"
    try:
        out = torch.empty(features.shape, dtype=features.dtype, device=store, pin_memory=pin)
    except RuntimeError:
        out = torch.empty(features.shape, dtype=features.dtype, device=store)
    return out.copy_(features)


def injection_of(model_options: dict):
    """The ``LQInjection`` patched into a MODEL's options, or None."""
    patches = model_options.get("transformer_options", {}).get("patches_replace", {}).get("dit", {})
    patch = patches.get(("double_block", 0))
    return patch if isinstance(patch, LQInjection) else None


class LQInjection:
    """Everything the patch needs; shared by clones (no weights, no deep copies)."""

    def __init__(self, features: torch.Tensor | None, strength: float, sigma_start: float, sigma_end: float,
                 branch=None, latent: torch.Tensor | None = None, compute=None,
                 strength_start: float = 1.0, strength_end: float = 1.0, sigma_max: float = 1.0):
        self._features, self.strength = features, strength
        self.sigma_start, self.sigma_end = sigma_start, sigma_end
        # strength factor from strength_start (at the model's sigma_max) to strength_end (sigma 0), linear in sigma
        self.strength_start, self.strength_end, self.sigma_max = strength_start, strength_end, sigma_max
        # for tiled sampling: the LQ branch, the scaled LQ latent and the DiT's compute dtype
        self.branch, self.latent, self.compute = branch, latent, compute
        self._tiles = {}  # {tile: features} of the sampling run in progress
        self.store = None  # where they wait between tile batches; None: ComfyUI's choice (cache_device)

    @property
    def features(self) -> torch.Tensor:
        """The whole image's features on the branch's load device, built at the first untiled use and kept (as the
        conditioning they are part of); tiled sampling with per-tile features never asks for them."""
        if self._features is None:
            comfy.model_management.load_models_gpu([self.branch.patcher])
            self._features = branch_features(self.branch, self.latent, self.branch.patcher.load_device, self.compute)
        return self._features

    def token_shape(self) -> tuple[int, int, int]:
        """(LQ batch, token rows, token cols) of the features, without building them."""
        rows, cols = token_grid(self.latent.shape[-2], self.latent.shape[-1])
        return self.latent.shape[0], rows, cols

    def tile_features(self, tiles, device) -> list[torch.Tensor]:
        """Each tile's features (B, C, rows, cols) on ``device``: ``control_conv`` of the tile's own crop of the LQ
        latent, so its GroupNorms see that crop only, as in training (1024 px crops) and in the authors'
        sliding-window pipeline. Computed once per tile in a sampling run (shifted plans share their edge tiles),
        same-size crops in one batch, on the sampling device; kept until the run ends in ``store`` (RAM when
        sampling on a GPU: ``cache_device``) and moved to ``device`` for the tile batch being evaluated."""
        store = self.store if self.store is not None else cache_device(device)
        missing = [t for t in dict.fromkeys(tiles) if t not in self._tiles]
        b = self.latent.shape[0]
        for shape in dict.fromkeys((t.height, t.width) for t in missing):
            same = [t for t in missing if (t.height, t.width) == shape]
            z = torch.cat([self.latent[:, :, t.top:t.bottom, t.left:t.right] for t in same])
            # on the device ComfyUI loaded the branch to (with the DiT: see tiled_sampling.attach)
            grid = branch_features(self.branch, z, next(self.branch.module.parameters()).device, self.compute)
            for j, t in enumerate(same):
                f = grid[j * b:(j + 1) * b]
                self._tiles[t] = f.to(device) if store is None else offload(f, store, device)
        return [self._tiles[t].to(device, non_blocking=self._tiles[t].is_pinned()) for t in tiles]

    def __deepcopy__(self, memo):
        return self

    def check_latent(self, latent: torch.Tensor) -> None:
        """The sampled latent must have the LQ latent's size, and one LQ image or one per sampled image."""
        b, h, w = latent.shape[0], latent.shape[-2], latent.shape[-1]
        rows, cols = token_grid(h, w)
        lq_batch, lq_rows, lq_cols = self.token_shape()
        if (rows, cols) != (lq_rows, lq_cols):
            raise DPIRInputError(
                f"the LQ latent gives {lq_rows * lq_cols} tokens ({lq_cols}×{lq_rows}) but the sampled latent has "
                f"{rows * cols} ({cols}×{rows}, latent {w}×{h}): wire the 'lq_latent' of 'DPIR Robust VAE Encode' (or "
                "a latent of the same size) into the sampler")
        if lq_batch not in (1, b):
            raise DPIRInputError(
                f"the LQ latent holds {lq_batch} images but {b} are being sampled: wire the same 'lq_latent' of "
                "'DPIR Robust VAE Encode' into 'DPIR Apply LQ Condition' and into the sampler")

    def attach_conds(self, executor, *args, **kwargs):
        """OUTER_SAMPLE wrapper: check latent and prompts, put the features into every positive/negative cond."""
        guider = executor.class_obj
        noise = args[0] if args else kwargs.get("noise")
        batch = None
        if isinstance(noise, torch.Tensor) and noise.ndim == 4:
            self.check_latent(noise)
            batch = noise.shape[0]
        base = guider.model_patcher.model
        tiled = guider.model_options.get("sampler_calc_cond_batch_function")
        if getattr(tiled, "own_lq_features", False):  # every tile brings its own: nothing whole-image is built
            b, rows, cols = self.token_shape()
            grid = CONDTileOwned((b, self.branch.hidden, rows, cols), lambda: self.features)
        else:
            grid = CONDTokenGrid(self.features)
        for name, conds in guider.conds.items():
            for c in conds:
                tokens = c.get("cross_attn")
                if tokens is not None:
                    check_prompt(base, tokens, c.get("pooled_output"), f"{name} prompt")
                    if batch is not None and tokens.shape[0] not in (1, batch):
                        raise DPIRInputError(
                            f"the {name} prompt holds {tokens.shape[0]} images' prompts but {batch} images are "
                            "being sampled: wire the same image (batch) into 'DPIR Visual Prompt' and 'DPIR Robust "
                            "VAE Encode'")
                c["model_conds"] = {**c.get("model_conds", {}), KEY: grid}
        try:
            return executor(*args, **kwargs)
        finally:
            self._tiles.clear()  # tile features live for one run: they would otherwise hold memory

    def route(self, executor, x, t, c_concat=None, c_crossattn=None, control=None, transformer_options={}, **kwargs):
        """APPLY_MODEL wrapper: move the batched features into transformer_options (SD3 drops extra kwargs);
        refuse latents the position table cannot cover, and outputs that are not finite."""
        dm = getattr(executor.class_obj, "diffusion_model", None)
        limit = getattr(dm, "pos_embed_max_size", None)
        if limit is not None and x.ndim == 4:
            rows, cols = token_grid(x.shape[-2], x.shape[-1])
            if rows > limit or cols > limit:
                raise DPIRInputError(
                    f"the latent being sampled is {x.shape[-1] * 8}×{x.shape[-2] * 8} px ({cols}×{rows} tokens) but this "
                    f"model's position table covers at most {limit}×{limit} tokens ({limit * 16} px a side): sample in "
                    "tiles ('DPIR Tiled Global-Local Prompt' into 'tiles' of 'DPIR Sampler Patch', as the workflow "
                    "dpir_restore_large does), or lower 'long_side' in 'DPIR Robust VAE Encode'")
        grid = kwargs.pop(KEY, None)
        if grid is not None:
            transformer_options = {**transformer_options, KEY: grid}
        out = executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        if isinstance(out, torch.Tensor) and not bool(torch.isfinite(out).all()):
            raise DPIRInputError(
                "the model's output contains NaN or infinite values: its weights overflow in this precision (load it "
                "with weight_dtype 'default' or 'bf16' in 'DPIR Model Loader'), or the latent or prompt given to the "
                "sampler is broken")
        return out

    def __call__(self, args, extra):
        """double_block 0 replace patch."""
        out = extra["original_block"](args)
        opts = args["transformer_options"]
        grid = opts.get(KEY)
        if grid is None:
            raise DPIRInputError("the DPIR LQ condition did not reach the model: sample with a core sampler "
                                 "(KSampler, SamplerCustomAdvanced) or the DPIR sampler patch")
        sigma = float(opts["sigmas"].max()) if "sigmas" in opts else self.sigma_start
        strength = self.strength * scheduled_strength(sigma, self.sigma_max, self.strength_start, self.strength_end)
        if not (self.sigma_end <= sigma <= self.sigma_start) or strength == 0:
            return out
        img = out["img"]
        c = grid.flatten(2).transpose(1, 2).to(device=img.device, dtype=img.dtype)
        if c.shape[1] != img.shape[1]:
            raise DPIRInputError(
                f"the LQ latent gives {c.shape[1]} tokens but the sampled latent has {img.shape[1]}: wire the "
                "'lq_latent' of 'DPIR Robust VAE Encode' (or a latent of the same size) into the sampler")
        out["img"] = inject(img, c, strength)
        return out


class RestoreGuidance:
    """``sampler_post_cfg_function``: SUPIR's restoration-guided sampling (models/restore_guidance.py). The
    denoised estimate it gets is in the model's latent space, as is ``z_lq`` (``process_in`` of the LQ latent).
    In tiled sampling it sees the blended estimate of the whole latent: the pull is per latent pixel and the tile
    weights sum to 1, so this equals pulling each tile toward its own crop of ``z_lq`` before blending."""

    def __init__(self, z_lq: torch.Tensor, tau: float, s_tmin: float):
        self.z_lq, self.tau, self.s_tmin = z_lq, tau, s_tmin

    def __deepcopy__(self, memo):
        return self

    def __call__(self, args):
        denoised, sigma = args["denoised"], float(args["sigma"].flatten()[0])
        schedule = args["model_options"].get("transformer_options", {}).get("sample_sigmas")
        if schedule is None:  # not sampled through a CFGGuider: the model's range, the current sigma (core's rule)
            sigma_max, after = float(args["model"].model_sampling.sigma_max), sigma
        else:
            schedule = schedule.detach().float().cpu()
            sigma_max, after = float(schedule.max()), next_sigma(schedule, sigma)
        weight = pull_weight(sigma, after, sigma_max, self.tau, self.s_tmin)
        return restore_pull(denoised, self.z_lq, weight) if weight > 0 else denoised


class DPIRApplyLQCondition:
    DESCRIPTION = ("Conditions an SD3 DPIR MODEL on the LQ latent: control_conv features (computed once per image "
                   "when sampling starts; in tiled sampling once per tile, from its own crop), "
                   "cross-normalised to the image tokens after the first joint block and added, as DPIR does. "
                   "Strength 0 gives plain SD3; start/end limit it to part of the schedule; strength_start/_end "
                   "ramp it over the noise levels. restore_cfg > 0 pulls every step's estimate toward the LQ "
                   "latent (SUPIR's restoration guidance): more faithful, less invented detail.")
    CATEGORY = "DPIR"
    FUNCTION = "apply"
    RETURN_TYPES = ("MODEL",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "the DPIR model from 'DPIR Model Loader'"}),
            "lq_branch": ("DPIR_LQ_BRANCH", {"tooltip": "the LQ branch from 'DPIR Model Loader'"}),
            "lq_latent": ("LATENT", {"tooltip": "'lq_latent' of 'DPIR Robust VAE Encode'"}),
            "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01}),
            "start_percent": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1.0, "step": 0.001}),
            "end_percent": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.001}),
        }, "optional": {
            "strength_start": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01, "tooltip":
                               "factor on 'strength' at the start of sampling (pure noise); it moves linearly "
                               "over the noise level (sigma) to strength_end. Lower = more freedom for the "
                               "large shapes"}),
            "strength_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 2.0, "step": 0.01, "tooltip":
                             "factor on 'strength' at the end of sampling (no noise). Lower = more invented fine "
                             "detail, higher = closer to the photo's own fine structure"}),
            "restore_cfg": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 20.0, "step": 0.1, "tooltip":
                            "restoration guidance (SUPIR): pulls each step's estimate toward the LQ latent by "
                            "(sigma/sigma_max)^restore_cfg. 0 = off; small (1-2) = strong pull through most steps "
                            "(most faithful); large (8-20) = pull only at the first steps. Core SUPIR uses 4"}),
            "restore_cfg_s_tmin": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 1.0, "step": 0.01, "tooltip":
                                   "no pull at a step whose next sigma is at or below this (the last steps keep "
                                   "the model's own detail)"}),
        }}

    def apply(self, model, lq_branch, lq_latent, strength, start_percent, end_percent, strength_start=1.0,
              strength_end=1.0, restore_cfg=0.0, restore_cfg_s_tmin=0.05):
        base = require_sd3(model, "DPIR Apply LQ Condition")
        if not hasattr(lq_branch, "module"):
            raise DPIRInputError("'lq_branch' must come from 'DPIR Model Loader'")
        hidden = base.diffusion_model.x_embedder.proj.out_channels
        if lq_branch.hidden != hidden:
            raise DPIRModelError(f"the LQ branch is {lq_branch.hidden} wide but the model {hidden}: they come from "
                                 "different checkpoints; wire 'model' and 'lq_branch' of the same 'DPIR Model Loader'")
        if injection_of(model.model_options) is not None:
            raise DPIRInputError("this MODEL already has a DPIR LQ condition: use one 'DPIR Apply LQ Condition' per model")
        samples = check_lq_latent(lq_latent, lq_branch.module.latent_channels)
        if start_percent > end_percent:
            raise DPIRInputError(f"start_percent {start_percent} is after end_percent {end_percent}")
        for name, value in (("strength_start", strength_start), ("strength_end", strength_end),
                            ("restore_cfg", restore_cfg), ("restore_cfg_s_tmin", restore_cfg_s_tmin)):
            if not isinstance(value, (int, float)) or not value >= 0 or value == float("inf"):
                raise DPIRInputError(f"'{name}' of 'DPIR Apply LQ Condition' must be a finite number >= 0, "
                                     f"got {value!r}")
        # the scaled LQ latent waits in ComfyUI's intermediate device (RAM unless --gpu-only); the features are built
        # from it when sampling needs them (LQInjection.features / tile_features)
        z = base.latent_format.process_in(samples.float()).to(comfy.model_management.intermediate_device())
        compute = base.manual_cast_dtype or base.get_dtype()
        sampling = model.get_model_object("model_sampling")
        patch = LQInjection(None, strength, float(sampling.percent_to_sigma(start_percent)),
                            float(sampling.percent_to_sigma(end_percent)), lq_branch, z, compute,
                            strength_start, strength_end, float(sampling.sigma_max))
        m = model.clone()
        m.set_model_patch_replace(patch, "dit", "double_block", 0)
        if restore_cfg > 0:  # off: nothing registered, the sampling is today's bit for bit
            m.set_model_sampler_post_cfg_function(RestoreGuidance(z, restore_cfg, restore_cfg_s_tmin))
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.OUTER_SAMPLE, KEY, patch.attach_conds)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, KEY, patch.route)
        # SD3's MMDiT calls no DIFFUSION_MODEL wrappers: run them for it (EasyCache)
        m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, "dpir_dit_wrappers", call_dit_wrappers)
        return (m,)


NODE_CLASS_MAPPINGS = {"DPIRApplyLQCondition": DPIRApplyLQCondition}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRApplyLQCondition": "DPIR Apply LQ Condition"}
