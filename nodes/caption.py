"""DPIR Caption: one caption per image from a vision-language model, for the T5 text prompt.

The model (models/captioning.py) runs under ComfyUI's model management: its
own ModelPatcher, loaded on the GPU for captioning and, unless 'keep_loaded',
unloaded right after, so the DiT gets the room back.
"""
from __future__ import annotations

import functools
import logging
import os

import numpy as np
import torch
from PIL import Image

import comfy.model_management as mm
import comfy.model_patcher
import folder_paths

from ..models.captioning import DEFAULT_INSTRUCTION, caption_images, fit_tokens, load_captioner
from ..models.dual_prompt import T5_TOKENS
from ..models.errors import DPIRModelError
from .images import to_bchw
from .model_files import guidance, resolve

log = logging.getLogger("dpir")

CAPTION_FOLDERS = ("LLM", "dpir_caption")  # ComfyUI's LLM folder, then the pack's own
NONE = "none"
DTYPES = {"auto": None, "fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def register_caption_folders() -> None:
    """models/LLM and models/dpir_caption (extra_model_paths.yaml may add paths under either key)."""
    for key in CAPTION_FOLDERS:
        default = os.path.join(folder_paths.models_dir, key)
        paths, exts = folder_paths.folder_names_and_paths.get(key, ([], set()))
        if default not in paths:
            paths = list(paths) + [default]
        folder_paths.folder_names_and_paths[key] = (paths, exts)


register_caption_folders()


def list_caption_models() -> list[str]:
    """Model folders (holding config.json or *.safetensors) under the caption folders, up to 3 levels deep, each
    listed by a file in it ('<folder>/config.json') as the pack lists its diffusers folders, so workflows and
    ComfyUI's missing-file checks see a file name."""
    out = set()
    for key in CAPTION_FOLDERS:
        for base in folder_paths.get_folder_paths(key):
            if not os.path.isdir(base):
                continue
            for root, dirs, files in os.walk(base):
                depth = os.path.relpath(root, base).count(os.sep) + 1
                weights = sorted(f for f in files if f.endswith(".safetensors"))
                if root != base and ("config.json" in files or weights):
                    # a folder without config.json is still listed, so picking it gives the folder check's message
                    entry = "config.json" if "config.json" in files else weights[0]
                    out.add(os.path.relpath(os.path.join(root, entry), base).replace(os.sep, "/"))
                    dirs[:] = []
                elif depth >= 3:
                    dirs[:] = []
    return sorted(out)


@functools.lru_cache(maxsize=1)
def _t5_token_counter():
    """Token count (end token included) with the T5 tokenizer files ComfyUI ships for SD3."""
    import comfy.text_encoders.sd3_clip as sd3_clip
    from transformers import T5TokenizerFast

    path = os.path.join(os.path.dirname(sd3_clip.__file__), "t5_tokenizer")
    if not os.path.isdir(path):
        return None
    tok = T5TokenizerFast.from_pretrained(path)
    return lambda text: len(tok(text).input_ids)


def _compute_dtype(choice: str, device) -> torch.dtype:
    if DTYPES.get(choice) is not None:
        return DTYPES[choice]
    if mm.should_use_bf16(device, prioritize_performance=False):
        return torch.bfloat16
    if mm.should_use_fp16(device, prioritize_performance=False):
        return torch.float16
    return torch.float32


def _unload(patcher) -> None:
    """Take this model off the GPU now (ComfyUI would otherwise keep it until the room is needed)."""
    loaded = getattr(mm, "current_loaded_models", None)
    for lm in list(loaded or []):
        if lm.model is patcher:
            lm.model_unload()
            loaded.remove(lm)
    mm.soft_empty_cache()


class VLMHolder(torch.nn.Module):
    """The transformers model inside a plain module: ModelPatcher writes attributes (e.g. ``device``) that
    transformers models keep read-only."""

    def __init__(self, vlm):
        super().__init__()
        self.vlm = vlm


_cache: dict = {}  # one captioner kept in RAM between runs: (path, mtime, dtype) → (patcher, processor, type)


def captioner(path, dtype):
    config = os.path.join(path, "config.json")
    key = (str(path), os.path.getmtime(config) if os.path.isfile(config) else 0, dtype)  # a replaced model reloads
    if key not in _cache:
        _cache.clear()
        model, processor, model_type = load_captioner(path, dtype)
        patcher = comfy.model_patcher.ModelPatcher(VLMHolder(model), load_device=mm.get_torch_device(),
                                                   offload_device=mm.text_encoder_offload_device())
        _cache[key] = (patcher, processor, model_type)
    return _cache[key]


class DPIRCaption:
    DESCRIPTION = ("Writes what each image shows with a vision-language model (Qwen2.5-VL, Qwen3-VL, LLaVA, SmolVLM, "
                   "Florence-2… from models/LLM or models/dpir_caption), for DPIR T5 Text Prompt's 'text'. One "
                   "caption per image; cut to what T5's 256 tokens hold. The caption is shown on the node.")
    CATEGORY = "DPIR"
    FUNCTION = "caption"
    RETURN_TYPES = ("STRING",)
    RETURN_NAMES = ("caption",)
    OUTPUT_IS_LIST = (True,)

    @classmethod
    def INPUT_TYPES(cls):
        models = list_caption_models()
        return {"required": {
            "image": ("IMAGE", {"tooltip": "the LQ photo(s); a batch gives one caption per image"}),
            "caption_model": (models or [NONE], {"tooltip": guidance("caption_model")}),
            "instruction": ("STRING", {"multiline": True, "default": DEFAULT_INSTRUCTION, "tooltip":
                            "what the model is asked; the default describes the scene and leaves out the "
                            "degradation (Florence-2 takes a task token such as <MORE_DETAILED_CAPTION> instead)"}),
            "max_new_tokens": ("INT", {"default": 128, "min": 8, "max": 1024, "tooltip":
                               "longest caption the model may write (its own tokens)"}),
            "sampling": (["greedy", "sample"], {"default": "greedy", "tooltip":
                         "greedy: the same caption every run; sample: varied captions, set by the seed"}),
            # not named 'seed': the frontend would add a 'randomize after run' control, re-captioning every run
            "sampling_seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF, "tooltip":
                              "used only when sampling"}),
            "dtype": (list(DTYPES), {"default": "auto", "tooltip":
                      "auto: bf16 or fp16 where the device supports it, fp32 otherwise"}),
            "keep_loaded": ("BOOLEAN", {"default": False, "tooltip":
                            "keep the model on the GPU after captioning (faster for the next photo, less room "
                            "for the DiT)"}),
        }}

    def caption(self, image, caption_model, instruction, max_new_tokens, sampling, sampling_seed, dtype, keep_loaded):
        if caption_model in (None, "", NONE):
            raise DPIRModelError(f"no caption model in the list. {guidance('caption_model')}")
        pixels = (to_bchw(image, "image of 'DPIR Caption'").clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255)
        pixels = pixels.round().astype(np.uint8)
        path = resolve(CAPTION_FOLDERS, caption_model, "caption_model")
        if os.path.isfile(path):  # listed by its config.json (or weights file): the model is the folder
            path = os.path.dirname(path)
        device = mm.get_torch_device()
        patcher, processor, model_type = captioner(path, _compute_dtype(dtype, device))
        mm.load_models_gpu([patcher], force_full_load=True)
        try:
            captions = caption_images(patcher.model.vlm, processor, model_type, [Image.fromarray(p) for p in pixels],
                                      instruction=instruction or DEFAULT_INSTRUCTION, max_new_tokens=max_new_tokens,
                                      do_sample=sampling == "sample", seed=sampling_seed)
        finally:
            if not keep_loaded:
                _unload(patcher)
        count = _t5_token_counter()
        cut = 0
        if count is not None:
            for i, text in enumerate(captions):
                captions[i], was_cut = fit_tokens(text, count, T5_TOKENS)
                cut += was_cut
        warning = (f"⚠ {cut} caption(s) cut to fit T5's {T5_TOKENS} tokens; lower max_new_tokens or ask for a "
                   "shorter description") if cut else ""
        if warning:
            log.warning("DPIR Caption: %s", warning)
        return {"ui": {"text": list(captions), "warning": [warning]}, "result": (captions,)}


NODE_CLASS_MAPPINGS = {"DPIRCaption": DPIRCaption}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRCaption": "DPIR Caption (vision-language model)"}
