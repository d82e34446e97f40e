"""SD3 rectified-flow sampler patch: sample the DPIR model as the released code does.

Gives a MODEL with the flow shift set (for the core KSampler: sampler euler,
scheduler normal) and a GUIDER/SAMPLER/SIGMAS set for SamplerCustomAdvanced.
``DPIRGuider`` is where tiled global-local sampling plugs in.
"""
from __future__ import annotations

import comfy.samplers
from comfy_extras.nodes_model_advanced import ModelSamplingSD3

from ..models.errors import DPIRInputError
from .checks import check_conditioning, require_sd3
from .interop import require_lq_condition
from .tiled_sampling import attach


def zero_out(conditioning):
    """The released code's unconditional prompt: all zeros, tokens and pooled (core ConditioningZeroOut)."""
    out = []
    for tokens, d in conditioning:
        d = d.copy()
        if d.get("pooled_output") is not None:
            d["pooled_output"] = d["pooled_output"].mul(0)
        out.append([tokens.mul(0), d])
    return out


class DPIRGuider(comfy.samplers.CFGGuider):
    """CFG guider with DPIR's defaults: the negative is the all-zero prompt unless one is given."""

    def set_prompts(self, positive, negative=None):
        self.set_conds(positive, zero_out(positive) if negative is None else negative)


class DPIRSamplerPatch:
    DESCRIPTION = ("Makes a DPIR MODEL sample like the released code: rectified flow with shift 3.0, Euler, "
                   "scheduler 'normal' (= diffusers' FlowMatchEuler sigmas), 28 steps, CFG off (1.0); with CFG on, "
                   "the unconditional prompt is all zeros unless 'negative' is wired. Use GUIDER, SAMPLER and "
                   "SIGMAS with SamplerCustomAdvanced, or the MODEL with the core KSampler (euler / normal / cfg 1).")
    CATEGORY = "DPIR"
    FUNCTION = "patch"
    RETURN_TYPES = ("MODEL", "GUIDER", "SAMPLER", "SIGMAS")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "model": ("MODEL", {"tooltip": "the MODEL from 'DPIR Apply LQ Condition'"}),
            "positive": ("CONDITIONING", {"tooltip": "'positive' of 'DPIR Dual Prompt'"}),
            "steps": ("INT", {"default": 28, "min": 1, "max": 200}),
            "cfg": ("FLOAT", {"default": 1.0, "min": 1.0, "max": 30.0, "step": 0.1,
                              "tooltip": "1.0 = off (official); above 1 doubles the work per step"}),
            "shift": ("FLOAT", {"default": 3.0, "min": 0.0, "max": 100.0, "step": 0.01}),
        }, "optional": {
            "negative": ("CONDITIONING", {"tooltip": "defaults to the all-zero prompt"}),
            "sampler_name": (comfy.samplers.SAMPLER_NAMES, {"default": "euler"}),
            "scheduler": (comfy.samplers.SCHEDULER_NAMES, {"default": "normal"}),
            "tiles": ("DPIR_TILES", {"tooltip": "from 'DPIR Tiled Global-Local Prompt': sample large images tile by tile"}),
            "tile_batch": ("INT", {"default": 4, "min": 1, "max": 64, "tooltip":
                                   "tiles evaluated together; higher = faster on big GPUs, more memory"}),
        }}

    def patch(self, model, positive, steps, cfg, shift, negative=None, sampler_name="euler", scheduler="normal",
              tiles=None, tile_batch=4):
        base = require_sd3(model, "DPIR Sampler Patch",
                           "the MODEL of 'DPIR Apply LQ Condition' (fed by 'DPIR Model Loader')")
        require_lq_condition(model, "DPIR Sampler Patch")
        check_conditioning(base, positive, "positive")
        if negative is not None:
            check_conditioning(base, negative, "negative")
        m = ModelSamplingSD3().patch(model, shift)[0]
        if tiles is not None:
            attach(m, tiles, tile_batch)
        guider = DPIRGuider(m)
        guider.set_prompts(positive, negative)
        guider.set_cfg(cfg)
        sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), scheduler, steps).cpu()
        return (m, guider, comfy.samplers.sampler_object(sampler_name), sigmas)


NODE_CLASS_MAPPINGS = {"DPIRSamplerPatch": DPIRSamplerPatch}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRSamplerPatch": "DPIR Sampler Patch (SD3 rectified flow)"}
