"""T5 text prompt (from a T5-XXL CLIP or a precomputed embedding) and its saver."""
from __future__ import annotations

import os

import torch
from safetensors import safe_open
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


def _held_embedding(path: str) -> torch.Tensor | None:
    """The T5 embedding a ``.safetensors`` file holds, or None when it holds anything else (a model's weights, or
    bytes that are not safetensors): only the header is read for those."""
    try:
        with safe_open(path, "pt") as f:
            return f.get_tensor("t5_embedding") if list(f.keys()) == ["t5_embedding"] else None
    except Exception:  # not a safetensors file: not ours to replace
        return None


class DPIRSaveT5Embedding:
    DESCRIPTION = ("Saves a T5 prompt to models/dpir/<name>.safetensors, to reuse it later without loading T5-XXL. "
                   "One prompt per image (a batch of captions) gives <name>_1, <name>_2, ... Never replaces a model "
                   "file; replaces another T5 prompt of the same name only with 'overwrite' on.")
    CATEGORY = "DPIR"
    FUNCTION = "save"
    RETURN_TYPES = ()
    OUTPUT_NODE = True

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text_prompt": ("CONDITIONING",),
                             "name": ("STRING", {"default": "t5_prompt"})},
                "optional": {"overwrite": ("BOOLEAN", {"default": False, "tooltip":
                                           "replace a T5 prompt already saved under this name (model files are "
                                           "never replaced)"})}}

    def save(self, text_prompt, name, overwrite=False):
        safe = "".join(ch for ch in name if ch.isalnum() or ch in "-_ ").strip()
        if not safe:
            raise DPIRInputError(f"'{name}' is not a usable file name; use letters, digits, '-' or '_'")
        tokens = text_prompt[0][0] if isinstance(text_prompt, list) and text_prompt and text_prompt[0] else None
        if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3 or tokens.shape[0] < 1:
            raise DPIRInputError("'text_prompt' must be the CONDITIONING of 'DPIR T5 Text Prompt'")
        if not bool(torch.isfinite(tokens).all()):
            raise DPIRInputError("the T5 prompt contains NaN or infinite values: nothing was saved")
        tokens = tokens.float()
        rows = [tokens[:1]] if all(torch.equal(tokens[0], t) for t in tokens[1:]) else list(tokens.split(1))
        folder = folder_paths.get_folder_paths(DPIR_FOLDER)[-1]
        names = [safe] if len(rows) == 1 else [f"{safe}_{i + 1}" for i in range(len(rows))]
        paths = [os.path.join(folder, f"{n}.safetensors") for n in names]
        todo = []
        for path, row in zip(paths, rows):  # every file checked before any is written
            if os.path.exists(path):
                held = _held_embedding(path)
                if held is None:
                    raise DPIRInputError(f"'{path}' is a model file, not a saved T5 prompt: choose another 'name' "
                                         "in DPIR Save T5 Embedding; nothing was saved")
                if torch.equal(held, row):
                    continue  # this prompt is already saved under this name
                if not overwrite:
                    raise DPIRInputError(f"'{path}' already holds another T5 prompt: choose another 'name', or turn "
                                         "'overwrite' on in DPIR Save T5 Embedding to replace it; nothing was saved")
            todo.append((path, row))
        os.makedirs(folder, exist_ok=True)
        for path, row in todo:
            tmp = path + ".partial"
            try:
                save_file({"t5_embedding": row.contiguous()}, tmp)
                os.replace(tmp, path)  # never a half-written file under the final name
            except BaseException:
                if os.path.exists(tmp):
                    os.unlink(tmp)
                raise
        written = {p for p, _ in todo}
        return {"ui": {"text": [("saved " if p in written else "already saved: ") + p for p in paths]}}


NODE_CLASS_MAPPINGS = {"DPIRT5TextPrompt": DPIRT5TextPrompt, "DPIRSaveT5Embedding": DPIRSaveT5Embedding}
NODE_DISPLAY_NAME_MAPPINGS = {"DPIRT5TextPrompt": "DPIR T5 Text Prompt", "DPIRSaveT5Embedding": "DPIR Save T5 Embedding"}
