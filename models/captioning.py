"""Captions from a vision-language model, for DPIR's T5 text prompt (plain transformers, no ComfyUI).

Any captioning model that transformers implements natively and lists for
``AutoModelForImageTextToText`` (Qwen2-VL / Qwen2.5-VL / Qwen3-VL, LLaVA,
LLaVA-NeXT, Idefics3 / SmolVLM, Florence-2, …) loads from its Hugging Face
folder: config.json, safetensors weights, processor and tokenizer files.
Remote code is never run (``trust_remote_code=False``); a folder that needs it
is refused with the reason.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable

import torch

from .errors import DPIRModelError

DEFAULT_INSTRUCTION = (
    "Describe this photo in two or three sentences: the subject, its materials and textures, colours, lighting "
    "and setting. Describe the scene as it really looks; do not mention blur, noise, grain, compression, "
    "artifacts, resolution or image quality.")
FLORENCE_TASK = "<MORE_DETAILED_CAPTION>"  # Florence-2 takes task tokens, not free instructions

PROCESSOR_FILES = ("preprocessor_config.json", "processor_config.json")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "spiece.model", "vocab.json")


def captioning_model_types() -> set[str]:
    """The model types transformers can caption with natively (its image-text-to-text auto mapping)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def check_folder(folder) -> str:
    """The folder's model type, or a DPIRModelError naming the folder and what is missing or wrong."""
    folder = Path(folder)
    what = "a vision-language model folder (config.json, *.safetensors, processor and tokenizer files)"
    if not folder.is_dir():
        raise DPIRModelError(f"'{folder}' is not a folder; the caption model must be {what}")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise DPIRModelError(f"'{folder}' is not a Hugging Face model folder: config.json is missing. "
                             f"Copy the whole model folder there ({what})")
    try:
        cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise DPIRModelError(f"'{cfg_path}' is not valid JSON ({e}); download the model folder again") from None
    model_type = cfg.get("model_type") if isinstance(cfg, dict) else None
    if model_type not in captioning_model_types():
        remote = " It relies on its own Python code (auto_map), which this pack never runs (no trust_remote_code)." \
            if isinstance(cfg, dict) and cfg.get("auto_map") else ""
        raise DPIRModelError(
            f"'{folder}' holds a {model_type or 'model without a model_type'!s} model, not a vision-language model "
            f"that transformers can caption with natively.{remote} Use e.g. Qwen2.5-VL, Qwen3-VL, LLaVA, "
            "LLaVA-NeXT, SmolVLM/Idefics3 or Florence-2 in its transformers-native format")
    missing = []
    if not any(folder.glob("*.safetensors")):
        missing.append("its weights (*.safetensors; .bin pickles are not loaded)")
    if not any((folder / f).is_file() for f in PROCESSOR_FILES):
        missing.append("its image processor (preprocessor_config.json or processor_config.json)")
    if not any((folder / f).is_file() for f in TOKENIZER_FILES):
        missing.append("its tokenizer (tokenizer.json, tokenizer.model or vocab.json)")
    if missing:
        raise DPIRModelError(f"the caption model folder '{folder}' ({model_type}) lacks " + " and ".join(missing)
                             + ": copy the complete folder from the model's Hugging Face page")
    return model_type


def parameter_count(folder) -> int:
    """Number of parameters in the folder's safetensors files (read from their headers)."""
    from safetensors import safe_open

    n = 0
    for f in sorted(Path(folder).glob("*.safetensors")):
        with safe_open(str(f), "pt") as sf:
            n += sum(math.prod(sf.get_slice(k).get_shape()) for k in sf.keys())
    return n


def load_captioner(folder, dtype: torch.dtype = torch.float32):
    """(model, processor, model_type) on the CPU; the model in ``dtype``, in eval mode."""
    from transformers import AutoModelForImageTextToText, AutoProcessor

    model_type = check_folder(folder)
    try:
        processor = AutoProcessor.from_pretrained(str(folder), trust_remote_code=False)
    except Exception as e:  # broken or foreign processor files
        raise DPIRModelError(f"the processor of '{folder}' cannot be loaded ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); copy its processor and tokenizer files "
                             "again") from None
    if not hasattr(processor, "image_processor") or not hasattr(processor, "tokenizer"):
        raise DPIRModelError(f"'{folder}' has a {type(processor).__name__}, not a processor with an image processor "
                             "and a tokenizer: its processor_config.json / preprocessor_config.json is missing or "
                             "incomplete")
    try:
        model = AutoModelForImageTextToText.from_pretrained(str(folder), dtype=dtype, trust_remote_code=False,
                                                            use_safetensors=True)
    except Exception as e:
        raise DPIRModelError(f"the model in '{folder}' cannot be loaded ({type(e).__name__}: "
                             f"{str(e).splitlines()[0] if str(e) else ''}); the download may be incomplete") from None
    return model.eval(), processor, model_type


def _prompt(processor, model_type: str, instruction: str) -> str:
    if model_type == "florence2":
        return instruction if instruction.strip().startswith("<") else FLORENCE_TASK
    if getattr(processor, "chat_template", None) is None:
        raise DPIRModelError(f"the {model_type} processor has no chat template (chat_template.jinja or "
                             "chat_template in processor_config.json): copy it from the model's folder")
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": instruction}]}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def clean_caption(text: str) -> str:
    """One line: whitespace collapsed, leading/trailing quotes and spaces removed."""
    return re.sub(r"\s+", " ", text).strip().strip('"').strip()


@torch.inference_mode()
def caption_images(model, processor, model_type: str, images, instruction: str = DEFAULT_INSTRUCTION,
                   max_new_tokens: int = 128, do_sample: bool = False, seed: int = 0, temperature: float = 0.7,
                   top_p: float = 0.9) -> list[str]:
    """One caption per image (PIL images or HxWx3 uint8 arrays), each generated on its own.

    Greedy by default; with ``do_sample`` image i is sampled with seed ``seed + i``.
    """
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    prompt = _prompt(processor, model_type, instruction)
    out = []
    for i, image in enumerate(images):
        inputs = processor(images=[image], text=[prompt], return_tensors="pt")
        inputs = {k: (v.to(device, dtype) if v.is_floating_point() else v.to(device)) if torch.is_tensor(v) else v
                  for k, v in inputs.items()}
        gen = {"max_new_tokens": int(max_new_tokens), "do_sample": bool(do_sample), "num_beams": 1}
        if do_sample:
            gen.update(temperature=float(temperature), top_p=float(top_p))
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(int(seed) + i)
            ids = model.generate(**inputs, **gen)
        if not model.config.is_encoder_decoder:
            ids = ids[:, inputs["input_ids"].shape[1]:]
        out.append(clean_caption(processor.batch_decode(ids, skip_special_tokens=True)[0]))
    return out


def fit_tokens(text: str, count_tokens: Callable[[str], int], limit: int) -> tuple[str, bool]:
    """(text cut at a word boundary so that ``count_tokens`` ≤ ``limit``, whether it was cut).

    ``count_tokens`` counts the tokens a text encoder gives, end token included
    (T5: 256 tokens hold 255 text tokens + the end token).
    """
    if count_tokens(text) <= limit:
        return text, False
    words = text.split(" ")
    lo, hi = 0, len(words)  # words[:lo] fits, words[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        if count_tokens(" ".join(words[:mid])) <= limit:
            lo = mid
        else:
            hi = mid
    return " ".join(words[:lo]).rstrip(" ,;:"), True
