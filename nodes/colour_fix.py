"""Colour fix of the restored image against the LQ image, once, on the whole image."""
from __future__ import annotations

import torch

from ..models.colour_fix import COLOUR_FIX_METHODS, colour_fix, wavelet_colour_fix
from .images import bchw_view, to_bchw, to_bhwc
from .web_ui import compare_ui


class DPIRColourFix:
    DESCRIPTION = ("Gives the restored image the LQ image's colours (wavelet: keep the restored details, take the "
                   "LQ's low frequencies — the released default; adain: match per-channel mean and std; lab: match mean and "
                   "spread of lightness and colour in CIELAB). Also crops "
                   "the output back to the exact LQ size (the encoder pads to multiples of 16).")
    CATEGORY = "DPIR"
    FUNCTION = "fix_with_preview"
    OUTPUT_NODE = True  # its before/after view is re-sent when the result comes from the cache, as Preview Image's
    RETURN_TYPES = ("IMAGE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "the decoded restoration"}),
            "lq_image": ("IMAGE", {"tooltip": "'lq_image' of 'DPIR Robust VAE Encode'"}),
            "method": (list(COLOUR_FIX_METHODS), {"default": "wavelet"}),
        }}

    @staticmethod
    def _without_padding(content, style):
        h, w = style.shape[-2:]
        ch, cw = content.shape[-2:]
        if ch >= h and cw >= w and ch - h < 16 and cw - w < 16:  # the encoder's padding
            content = content[:, :, :h, :w]
        return content, style

    def fix(self, image, lq_image, method):
        if method != "wavelet":  # whole-image statistics: on clamped (B, 3, H, W) copies
            content, style = self._without_padding(to_bchw(image, "image"), to_bchw(lq_image, "LQ image"))
            return (to_bhwc(colour_fix(content, style, method)),)
        # the default streams strips of the inputs into the output IMAGE: no image-size copies (0.8 GB each at 8K)
        content, style = self._without_padding(bchw_view(image, "image"), bchw_view(lq_image, "LQ image"))
        out = torch.empty((content.shape[0], *content.shape[-2:], 3), dtype=torch.float32, device=content.device)
        wavelet_colour_fix(content, style, out=out.movedim(-1, 1))
        return (out,)

    def fix_with_preview(self, image, lq_image, method):
        """``fix`` plus the before/after view's images (web/js/dpir_compare.js); the outputs are the same."""
        out = self.fix(image, lq_image, method)
        return {"ui": compare_ui(lq_image, out[0]), "result": out}  # fix checked it; the PNGs take any layout


NODE_CLASS_MAPPINGS = {"DPIRColourFix": DPIRColourFix}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRColourFix": "DPIR Colour Fix"}
