"""DPIR Restoration Prompt: the degradation as text (SPIRE style), in the format train.py trains on.

The text comes from the trainer's own formatter (models/restoration_prompt.py);
the values from the artist or, per image, from the blind estimators of
models/degradation_estimate.py. Only models fine-tuned with
``restoration_prompts: true`` understand it: the official DPIR checkpoint was
not trained on such text.
"""
from __future__ import annotations

from ..models.degradation_estimate import estimate_blur_sigma, estimate_jpeg_quality, estimate_noise_sigma
from ..models.errors import DPIRInputError
from ..models.restoration_prompt import format_restoration_prompt
from .images import to_bchw

MODES = ("artist values", "estimate from image")


def _set(v):
    return v if v and v > 0 else None


class DPIRRestorationPrompt:
    DESCRIPTION = ("Writes the degradation as text in the format train.py's 'restoration_prompts: true' trains on "
                   "(e.g. 'upscale 4x, deblur sigma 2.1, denoise 8.0, jpeg 40'), from your values or measured on "
                   "the LQ image (one text per image). Wire it into DPIR T5 Text Prompt's 'suffix'. Only for DPIR "
                   "models fine-tuned with restoration prompts: the official checkpoint was not trained on them.")
    CATEGORY = "DPIR"
    FUNCTION = "compose"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("restoration_prompt",)
    OUTPUT_IS_LIST = (True,)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "mode": (MODES, {"default": MODES[0], "tooltip": "estimate from image: noise, blur and JPEG quality are "
                             "measured on 'image'; a value set below (> 0) replaces the measurement"}),
            "upscale": ("FLOAT", {"default": 4.0, "min": 0.0, "max": 16.0, "step": 0.5, "tooltip":
                        "the upscale factor you restore at (as in DPIR Robust VAE Encode); 1 or 0 leaves it out"}),
            "blur_sigma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 10.0, "step": 0.1, "tooltip":
                           "Gaussian blur sigma in output (HQ) pixels; 0 leaves it out"}),
            "noise_sigma": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 100.0, "step": 0.5, "tooltip":
                            "noise std in 8-bit levels (0–255); 0 leaves it out"}),
            "jpeg_quality": ("INT", {"default": 0, "min": 0, "max": 100, "tooltip":
                             "JPEG quality of the LQ photo; 0 leaves it out"}),
            "ringing": ("BOOLEAN", {"default": False, "tooltip": "the photo shows ringing (halos) at edges"}),
        }, "optional": {
            "image": ("IMAGE", {"tooltip": "the LQ photo, as loaded (before any resize); needed to estimate"}),
        }}

    def compose(self, mode, upscale, blur_sigma, noise_sigma, jpeg_quality, ringing, image=None):
        scale = upscale if upscale and upscale > 1 else None
        artist = {"upscale": scale, "blur_sigma": _set(blur_sigma), "ringing": bool(ringing),
                  "noise_sigma": _set(noise_sigma), "jpeg_quality": _set(jpeg_quality)}
        if mode != "estimate from image":
            texts = [format_restoration_prompt(**artist)]
        else:
            if image is None:
                raise DPIRInputError("'DPIR Restoration Prompt' estimates from an image: wire the LQ photo into "
                                     "'image', or set mode to 'artist values'")
            x = to_bchw(image, "image of 'DPIR Restoration Prompt'")
            texts = []
            for noise, blur, jpeg in zip(estimate_noise_sigma(x), estimate_blur_sigma(x), estimate_jpeg_quality(x)):
                measured = {"noise_sigma": noise, "jpeg_quality": jpeg,
                            "blur_sigma": blur * (scale or 1) if blur is not None else None}  # LQ px → HQ px
                values = {**artist, **{k: v for k, v in measured.items() if artist[k] is None}}
                texts.append(format_restoration_prompt(**values))
        return {"ui": {"text": texts}, "result": (texts,)}


NODE_CLASS_MAPPINGS = {"DPIRRestorationPrompt": DPIRRestorationPrompt}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRRestorationPrompt": "DPIR Restoration Prompt"}
