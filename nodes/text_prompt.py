"""T5 text prompt (from a T5-XXL CLIP or a precomputed embedding) and its saver."""
from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

import folder_paths

from ..models.dual_prompt import T5_TOKENS, pad_tokens
from ..models.errors import DPIRInputError, DPIRModelError
from ..models.text_prompt import load_t5_embedding
from .model_files import DPIR_FOLDER, guidance, list_models, resolve

NONE = "none"


def t5_only_tokens(clip, text: str) -> dict:
    """Tokens for the T5 half alone, 256 long: padded to 256, or cut to 255 + end token like HF truncation."""
    t5 = getattr(getattr(clip, "cond_stage_model", None), "t5xxl", None)
    if t5 is None:
        raise DPIRModelError("this CLIP holds no T5-XXL encoder. Load T5 with the core 'Load CLIP' node "
                             "(type: sd3, clip_name: the T5 file), or choose a T5 embedding file. " + guidance("t5xxl"))
    tokens = clip.tokenize(text, tokenizer_options={"t5xxl_min_length": T5_TOKENS})
    tokens = {k: ([] if k != "t5xxl" else v) for k, v in tokens.items()}
    tokens["t5xxl"] = [batch if len(batch) <= T5_TOKENS else batch[:T5_TOKENS - 1] + [batch[-1]]
                       for batch in tokens["t5xxl"]]
    return tokens


class DPIRT5TextPrompt:
    DESCRIPTION = ("The T5 half of DPIR's dual prompt: 256 tokens of T5-XXL (padded or cut like the released code). "
                   "Takes a CLIP that holds T5-XXL (core 'Load CLIP', type sd3, only the T5 file), or a precomputed "
                   "T5 embedding file from models/dpir, which spares loading the multi-GB encoder.")
    CATEGORY = "DPIR"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("text_prompt",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"multiline": True, "default": "", "tooltip":
                                "what the restored photo shows; may be empty"}),
        }, "optional": {
            "clip": ("CLIP", {"tooltip": "T5-XXL from Load CLIP (type sd3)"}),
            "t5_embedding": ([NONE] + list_models(DPIR_FOLDER), {"default": NONE, "tooltip":
                             guidance("t5_embedding") + " Used instead of 'clip' and 'text' when chosen."}),
        }}

    def encode(self, text, clip=None, t5_embedding=NONE):
        if t5_embedding not in (None, "", NONE):
            emb = pad_tokens(load_t5_embedding(resolve(DPIR_FOLDER, t5_embedding, "t5_embedding")), T5_TOKENS)
        elif clip is not None:
            emb, _ = clip.encode_from_tokens(t5_only_tokens(clip, text), return_pooled=True)
            emb = pad_tokens(emb.float(), T5_TOKENS)
        else:
            raise DPIRInputError("connect a CLIP holding T5-XXL to 'clip', or choose a 't5_embedding' file. "
                                 + guidance("t5xxl"))
        # pooled zeros as core SD3 T5-only conditioning has; 'DPIR Dual Prompt' replaces it with the visual one
        return ([[emb, {"pooled_output": torch.zeros(emb.shape[0], 2048), "dpir_prompt": "t5"}]],)


class DPIRSaveT5Embedding:
    DESCRIPTION = "Saves a T5 prompt to models/dpir/<name>.safetensors, to reuse it later without loading T5-XXL."
    CATEGORY = "DPIR"
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text_prompt": ("CONDITIONING",),
                             "name": ("STRING", {"default": "t5_prompt"})}}

    def save(self, text_prompt, name):
        safe = "".join(ch for ch in name if ch.isalnum() or ch in "-_ ").strip()
        if not safe:
            raise DPIRInputError(f"'{name}' is not a usable file name; use letters, digits, '-' or '_'")
        tokens = text_prompt[0][0] if isinstance(text_prompt, list) and text_prompt and text_prompt[0] else None
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[0] < 1:
            raise DPIRInputError("'text_prompt' must be the CONDITIONING of 'DPIR T5 Text Prompt'")
        if not bool(torch.isfinite(tokens).all()):
            raise DPIRInputError("the T5 prompt contains NaN or infinite values: nothing was saved")
        folder = folder_paths.get_folder_paths(DPIR_FOLDER)[-1]
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{safe}.safetensors")
        tmp = path + ".partial"
        try:
            save_file({"t5_embedding": tokens[:1].float().contiguous()}, tmp)
            os.replace(tmp, path)  # never a half-written file under the final name
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return {"ui": {"text": [f"saved {path}"]}}


NODE_CLASS_MAPPINGS = {"DPIRT5TextPrompt": DPIRT5TextPrompt, "DPIRSaveT5Embedding": DPIRSaveT5Embedding}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRT5TextPrompt": "DPIR T5 Text Prompt", "DPIRSaveT5Embedding": "DPIR Save T5 Embedding"}
