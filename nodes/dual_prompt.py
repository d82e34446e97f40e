"""Dual prompt: visual prompt + T5 prompt → DPIR's 333-token positive and all-zero negative."""
from __future__ import annotations

import torch

from ..models.dual_prompt import dual_context, pad_features, zero_prompt
from ..models.errors import DPIRInputError


def _first(cond, name: str):
    if not isinstance(cond, list) or not cond or not isinstance(cond[0], (list, tuple)):
        raise DPIRInputError(f"'{name}' must be a CONDITIONING")
    return cond[0][0], cond[0][1]


class DPIRDualPrompt:
    DESCRIPTION = ("Joins the visual prompt (77 tokens) and the T5 prompt (256 tokens) into DPIR's 333-token "
                   "context with the visual pooled vector. 'negative' is the all-zero prompt the released code uses "
                   "for CFG. For a text-only or visual-only prompt (the paper's ablation), put the core "
                   "ConditioningZeroOut on the other input.")
    CATEGORY = "DPIR"
    FUNCTION = "combine"
    RETURN_TYPES = ("CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("positive", "negative")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"visual_prompt": ("CONDITIONING", {"tooltip": "from 'DPIR Visual Prompt'"}),
                             "text_prompt": ("CONDITIONING", {"tooltip": "from 'DPIR T5 Text Prompt'"})}}

    def combine(self, visual_prompt, text_prompt):
        visual, vdict = _first(visual_prompt, "visual_prompt")
        text, tdict = _first(text_prompt, "text_prompt")
        if vdict.get("dpir_prompt") == "t5" or tdict.get("dpir_prompt") == "visual":
            raise DPIRInputError("'visual_prompt' and 'text_prompt' are swapped: wire 'DPIR Visual Prompt' into "
                                 "'visual_prompt' and 'DPIR T5 Text Prompt' into 'text_prompt'")
        pooled = vdict.get("pooled_output")
        if pooled is None:
            raise DPIRInputError("'visual_prompt' has no pooled vector: wire the output of 'DPIR Visual Prompt'")
        for name, x in (("visual_prompt", visual), ("text_prompt", text)):
            if not isinstance(x, torch.Tensor) or x.ndim != 3:
                raise DPIRInputError(f"'{name}' holds no prompt tokens: wire the output of "
                                     f"'{'DPIR Visual Prompt' if name == 'visual_prompt' else 'DPIR T5 Text Prompt'}'")
        if visual.shape[-1] > text.shape[-1]:
            raise DPIRInputError(
                f"the visual prompt is {visual.shape[-1]} wide but the T5 prompt only {text.shape[-1]}: the T5 encoder "
                "(or T5 embedding file) and the CLIP vision towers do not belong to the same DPIR model (SD3: T5-XXL, "
                "4096 wide; visual prompt 2048 wide)")
        context = dual_context(pad_features(visual.float(), text.shape[-1]), text.float())
        pooled = pooled.float().expand(context.shape[0], -1) if pooled.shape[0] == 1 else pooled.float()
        zero, zero_pooled = zero_prompt(context, pooled)
        return ([[context, {"pooled_output": pooled}]], [[zero, {"pooled_output": zero_pooled}]])


NODE_CLASS_MAPPINGS = {"DPIRDualPrompt": DPIRDualPrompt}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRDualPrompt": "DPIR Dual Prompt"}
