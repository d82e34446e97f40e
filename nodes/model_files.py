"""Where each model file goes and where it comes from: one source of truth.

The loaders' file lists, their "file missing" errors, the in-node guidance
of the web extension and the README's table all read ``MODEL_FILES``.
"""
from __future__ import annotations

import os
from pathlib import Path

import folder_paths

from ..models.checkpoints import WEIGHT_SUFFIXES
from ..models.errors import DPIRModelError
from .compat import path_config_name

DPIR_FOLDER = "dpir"
DPIR_EXTENSIONS = set(WEIGHT_SUFFIXES) | {".json"}
DPIR_REPO = "DehongKong/dpir"

# "hub": where the downloader (models/hub_download.py) may fetch a kind, in order of preference. "pick" chooses
# by layout from the repository's file list (the release's exact file names may change); "files" maps repository
# paths to the names the workflows use; "single" saves one weights file under that name. "workflow": the file
# the shipped workflows name, with a direct URL for ComfyUI's missing-models dialog (tools/build_workflows.py).
# "licence": the model's own licence as its model card states it ("see the model card" where none is stated).

MODEL_FILES = {
    "dpir_transformer": {
        "folder": DPIR_FOLDER,
        "what": "DPIR transformer (SD3-medium fine-tuned, with the LQ branch control_conv)",
        "expected": "the 'transformer' folder of the DPIR reproduction checkpoints (config.json + "
                    "diffusion_pytorch_model*.safetensors), or one .safetensors/.pth made from it",
        "source": "Hugging Face: DehongKong/dpir (linked from github.com/kongdehong/DPIR)",
        "hub": [{"repo": DPIR_REPO, "pick": "transformer"}],
        "licence": "see the model card (DehongKong/dpir); a fine-tune of SD3 Medium",
    },
    "robust_vae": {
        "folder": DPIR_FOLDER,
        "what": "DPIR robust ('denoise') VAE: SD3 VAE with a degradation-robust encoder",
        "expected": "the robust VAE folder of the DPIR checkpoints (config.json + diffusion_pytorch_model.safetensors), "
                    "or its single file / encoder-only file",
        "source": "Hugging Face: DehongKong/dpir",
        "hub": [{"repo": DPIR_REPO, "pick": "robust_vae"}],
        "licence": "see the model card (DehongKong/dpir); SD3 Medium's VAE, re-trained encoder",
    },
    "sd3_vae": {
        "folder": "vae",
        "what": "stock SD3 VAE (its decoder decodes DPIR's output)",
        "expected": "sd3_vae.safetensors (the 'vae' of Stable Diffusion 3 medium)",
        "source": "Hugging Face: stabilityai/stable-diffusion-3-medium (vae/diffusion_pytorch_model.safetensors)",
        "hub": [{"repo": "stabilityai/stable-diffusion-3-medium-diffusers",
                 "files": {"vae/diffusion_pytorch_model.safetensors": "sd3_vae.safetensors"},
                 "note": "gated: accept the SD3 licence on its page"},
                {"repo": DPIR_REPO, "pick": "robust_vae", "single": "sd3_vae.safetensors",
                 "note": "alternative: the DPIR robust VAE's full file, whose decoder is SD3's own"}],
        "licence": "Stability AI Community License (accept it on the model page)",
        "workflow": {"name": "sd3_vae.safetensors", "url": "https://huggingface.co/stabilityai/"
                     "stable-diffusion-3-medium-diffusers/resolve/main/vae/diffusion_pytorch_model.safetensors"},
    },
    "clip_vision_local": {
        "folder": "clip_vision",
        "what": "visual encoder 1 (local tokens): CLIP ViT-B/32 geometry in the released code",
        "expected": "clip_vit_b32.safetensors (model.safetensors of openai/clip-vit-base-patch32)",
        "source": "Hugging Face: openai/clip-vit-base-patch32",
        "hub": [{"repo": "openai/clip-vit-base-patch32",
                 "files": {"model.safetensors": "clip_vit_b32.safetensors", "config.json": "clip_vit_b32.json"}}],
        "licence": "see the model card (openai/clip-vit-base-patch32)",
        "workflow": {"name": "clip_vit_b32.safetensors",
                     "url": "https://huggingface.co/openai/clip-vit-base-patch32/resolve/main/model.safetensors"},
    },
    "clip_vision_summary": {
        "folder": "clip_vision",
        "what": "visual encoder 2 (image embeds): CLIP ViT-bigG/14",
        "expected": "clip_vision_g.safetensors (ComfyUI's CLIP-G vision model) or a ViT-bigG-14 open_clip file",
        "source": "Hugging Face: laion/CLIP-ViT-bigG-14-laion2B-39B-b160k, or comfyanonymous/clip_vision_g",
        "hub": [{"repo": "comfyanonymous/clip_vision_g",
                 "files": {"clip_vision_g.safetensors": "clip_vision_g.safetensors", "clip_vision_g.json": "clip_vision_g.json"}}],
        "licence": "MIT (the LAION ViT-bigG/14 model card)",
        "workflow": {"name": "clip_vision_g.safetensors",
                     "url": "https://huggingface.co/comfyanonymous/clip_vision_g/resolve/main/clip_vision_g.safetensors"},
    },
    "t5xxl": {
        "folder": "text_encoders",
        "what": "T5-XXL text encoder (load with the core 'Load CLIP' node, type sd3)",
        "expected": "t5xxl_fp16.safetensors or t5xxl_fp8_e4m3fn.safetensors",
        "source": "Hugging Face: comfyanonymous/flux_text_encoders (or the SD3 text_encoders folder)",
        "hub": [{"repo": "comfyanonymous/flux_text_encoders", "files": {"t5xxl_fp16.safetensors": "t5xxl_fp16.safetensors"}}],
        "licence": "Apache-2.0 (google/t5-v1_1-xxl)",
        "workflow": {"name": "t5xxl_fp16.safetensors",
                     "url": "https://huggingface.co/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors"},
    },
    "t5_embedding": {
        "folder": DPIR_FOLDER,
        "what": "precomputed T5 prompt embedding (optional; spares loading T5-XXL)",
        "expected": "a .safetensors or .pt holding one (1, 256, 4096) tensor",
        "source": "made with the 'DPIR Save T5 Embedding' node, or the DPIR release's default prompt embedding",
        "hub": [{"repo": DPIR_REPO, "pick": "t5_embedding"}],
        "licence": "your own (made with T5-XXL, Apache-2.0); the release's file: see the DehongKong/dpir model card",
    },
    "caption_model": {
        "folder": "LLM",
        "what": "vision-language caption model for 'DPIR Caption' (optional; also read from models/dpir_caption/)",
        "expected": "the whole Hugging Face folder (config.json, *.safetensors, processor and tokenizer files) of a "
                    "model transformers runs natively: Qwen2.5-VL, Qwen3-VL, LLaVA, LLaVA-NeXT, SmolVLM/Idefics3, "
                    "Florence-2",
        "source": "Hugging Face: e.g. Qwen/Qwen2.5-VL-3B-Instruct, Qwen/Qwen3-VL-2B-Instruct, "
                  "HuggingFaceTB/SmolVLM-Instruct, llava-hf/llava-1.5-7b-hf, florence-community/Florence-2-large",
        "licence": "each model's own: Qwen2.5-VL-3B: Qwen Research License (non-commercial); Qwen3-VL-2B, SmolVLM: "
                   "Apache-2.0; LLaVA-1.5: Llama 2 Community License; Florence-2: MIT; others: see the model card",
    },
}


def register_folders() -> None:
    """Add ``models/dpir`` (extra_paths.yaml / extra_model_paths.yaml may add more paths under the key ``dpir``)."""
    default = os.path.join(folder_paths.models_dir, DPIR_FOLDER)
    paths, exts = folder_paths.folder_names_and_paths.get(DPIR_FOLDER, ([], set()))
    if default not in paths:
        paths = paths + [default]
    folder_paths.folder_names_and_paths[DPIR_FOLDER] = (paths, set(exts) | DPIR_EXTENSIONS)


def guidance(kind: str) -> str:
    f = MODEL_FILES[kind]
    where = ", ".join(folder_paths.get_folder_paths(f["folder"])) if f["folder"] in folder_paths.folder_names_and_paths else f["folder"]
    return f"{f['what']}: put {f['expected']} into ComfyUI/models/{f['folder']}/ ({where}). Source: {f['source']}."


def list_models(folder: str) -> list[str]:
    """Weight files of a model folder; a diffusers folder is listed once, by its index or weights file."""
    out = set()
    for base in folder_paths.get_folder_paths(folder):
        if not os.path.isdir(base):
            continue
        seen = set()  # real folders walked: a symlink loop is walked once, not until the OS gives up
        for root, dirs, files in os.walk(base, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:
                dirs[:] = []
                continue
            seen.add(real)
            rel = os.path.relpath(root, base).replace(os.sep, "/")
            prefix = "" if rel == "." else rel + "/"
            if "config.json" in files:
                index = [f for f in files if f.endswith(".safetensors.index.json")]
                weights = index or sorted(f for f in files if f.lower().endswith(WEIGHT_SUFFIXES))[:1]
                out.update(prefix + f for f in weights)
                continue
            out.update(prefix + f for f in files if f.lower().endswith(WEIGHT_SUFFIXES))
    return sorted(out)


def resolve(folder: str | tuple, name: str, kind: str) -> Path:
    """Full path of a listed model (in one model folder, or the first of several), refusing names that escape them."""
    if not name or name == "none":
        raise DPIRModelError(f"no file selected. {guidance(kind)}")
    folders = (folder,) if isinstance(folder, str) else folder
    for base in [b for f in folders for b in folder_paths.get_folder_paths(f)]:
        base_real = Path(base).resolve()
        candidate = Path(base, name.rstrip("/"))
        real = candidate.resolve()
        if real != base_real and base_real not in real.parents:
            raise DPIRModelError(f"refusing '{name}': it points outside the model folder {base} "
                                 "(a '..' path or a symbolic link to elsewhere); move the file into the folder, or add "
                                 f"its real folder to {path_config_name()} (in the ComfyUI folder)")
        if candidate.exists():
            return candidate
    raise DPIRModelError(f"model file '{name}' was not found. {guidance(kind)}")
