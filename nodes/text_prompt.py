"""T5 text prompt (from a T5-XXL CLIP or a precomputed embedding) and its saver."""
from __future__ import annotations

import os

import torch
from safetensors.torch import save_file

import folder_paths

from ..models.dual_prompt import T5_TOKENS, pad_tokens
from ..models.errors import DPIRInputError, DPIRModelError
from ..models.text_prompt import compose_prompt, load_t5_embedding
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


def _one(value):
    """The single value of an input (ComfyUI hands every input of an INPUT_IS_LIST node over as a list)."""
    return value[0] if isinstance(value, list) and value else value


def _prompts(text, prefix, suffix) -> list[str]:
    """One prompt per image: lists of 1 (a widget) are repeated for lists of N (e.g. DPIR Caption's captions)."""
    lists = [v if isinstance(v, list) else [v] for v in (prefix, text, suffix)]
    n = max(len(v) for v in lists)
    if any(len(v) not in (1, n) for v in lists):
        raise DPIRInputError(f"'prefix', 'text' and 'suffix' hold {', '.join(str(len(v)) for v in lists)} prompts; "
                             "wire lists of the same length (one per image) or single texts")
    return [compose_prompt(*(str(v[i if len(v) > 1 else 0] or "") for v in lists)) for i in range(n)]


class DPIRT5TextPrompt:
    DESCRIPTION = ("The T5 half of DPIR's dual prompt: 256 tokens of T5-XXL (padded or cut like the released code). "
                   "Takes a CLIP that holds T5-XXL (core 'Load CLIP', type sd3, only the T5 file), or a precomputed "
                   "T5 embedding file from models/dpir, which spares loading the multi-GB encoder. 'text' takes a "
                   "typed prompt or a wired caption (DPIR Caption: one prompt per image); 'prefix' and 'suffix' are "
                   "kept around it. The prompt used is shown on the node.")
    CATEGORY = "DPIR"
    FUNCTION = "encode"
    RETURN_TYPES = ("CONDITIONING",)
    RETURN_NAMES = ("text_prompt",)
    INPUT_IS_LIST = True  # one caption per image arrives as a list

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "text": ("STRING", {"multiline": True, "default": "", "tooltip":
                                "what the restored photo shows; may be empty. Wire DPIR Caption here to write it "
                                "from the photo"}),
        }, "optional": {
            "clip": ("CLIP", {"tooltip": "T5-XXL from Load CLIP (type sd3)"}),
            "t5_embedding": ([NONE] + list_models(DPIR_FOLDER), {"default": NONE, "tooltip":
                             guidance("t5_embedding") + " Used instead of 'clip' and 'text' when chosen."}),
            "prefix": ("STRING", {"default": "", "tooltip": "put before the text, kept across photos "
                                  "(e.g. 'film photo, 1970s,')"}),
            "suffix": ("STRING", {"default": "", "tooltip": "put after the text (e.g. the output of DPIR "
                                  "Restoration Prompt)"}),
        }}

    def encode(self, text, clip=None, t5_embedding=NONE, prefix="", suffix=""):
        clip, t5_embedding = _one(clip), _one(t5_embedding)
        prompts = _prompts(text, prefix, suffix)
        if t5_embedding not in (None, "", NONE):
            emb = pad_tokens(load_t5_embedding(resolve(DPIR_FOLDER, t5_embedding, "t5_embedding")), T5_TOKENS)
            shown = [f"(T5 embedding '{t5_embedding}' used; this text is not encoded) {p}" for p in prompts]
        elif clip is not None:
            unique = list(dict.fromkeys(prompts))  # each distinct prompt encoded once
            embs = {p: clip.encode_from_tokens(t5_only_tokens(clip, p), return_pooled=True)[0].float()
                    for p in unique}
            emb = pad_tokens(torch.cat([embs[p] for p in prompts]) if len(unique) > 1 else embs[unique[0]], T5_TOKENS)
            shown = prompts
        else:
            raise DPIRInputError("connect a CLIP holding T5-XXL to 'clip', or choose a 't5_embedding' file. "
                                 + guidance("t5xxl"))
        # pooled zeros as core SD3 T5-only conditioning has; 'DPIR Dual Prompt' replaces it with the visual one
        cond = [[emb, {"pooled_output": torch.zeros(emb.shape[0], 2048), "dpir_prompt": "t5"}]]
        return {"ui": {"text": shown}, "result": (cond,)}


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
