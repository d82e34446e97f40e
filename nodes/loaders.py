"""Loaders: DPIR transformer (+ LQ branch), robust VAE, CLIP vision towers."""
from __future__ import annotations

import ctypes
import json
import logging
import os
import tempfile
from pathlib import Path

import torch

import comfy.clip_vision
import comfy.diffusers_convert
import comfy.model_management
import comfy.model_patcher
import comfy.sd
import folder_paths

from ..models.checkpoints import load_transformer, load_vae, read_weights
from ..models.errors import DPIRModelError
from ..models.lq_condition import LQCondition
from . import compat, cpu_attention
from .model_files import DPIR_FOLDER, guidance, list_models, register_folders, resolve

register_folders()

WEIGHT_DTYPES = {
    "default": {},
    "fp16": {"dtype": torch.float16},
    "bf16": {"dtype": torch.bfloat16},
    "fp8_e4m3fn": {"dtype": torch.float8_e4m3fn},
    "fp8_e4m3fn_fast": {"dtype": torch.float8_e4m3fn, "fp8_optimizations": True},
    "fp8_e5m2": {"dtype": torch.float8_e5m2},
}
INSIDE = "(inside the transformer file)"


def _diffusers_folder(path: Path) -> Path:
    """A shard, index or config picked inside a diffusers folder stands for the folder."""
    if path.is_file() and (path.parent / "config.json").exists():
        return path.parent
    return path


def release_freed_memory() -> None:
    """Hand the heap pages freed while loading back to the OS (glibc only; elsewhere a no-op).

    Converting a diffusers-named DiT leaves ~0.7 GiB of freed temporaries (fused q/k/v) in glibc's heap when
    an earlier allocation raised its mmap threshold, which any workflow does: RSS then stays that much higher
    although nothing holds the memory (ComfyUI's own UNETLoader shows the same)."""
    trim = getattr(_LIBC, "malloc_trim", None)
    if trim is not None:
        trim(0)


try:
    _LIBC = ctypes.CDLL(None)
except (OSError, TypeError):  # no C library to open by that name (Windows)
    _LIBC = None


class LQBranch:
    """The LQ branch as a ComfyUI-managed model (loaded and offloaded with the DiT)."""

    def __init__(self, module: LQCondition, source: str):
        device = comfy.model_management.get_torch_device()
        self.patcher = comfy.model_patcher.ModelPatcher(
            module, load_device=device, offload_device=comfy.model_management.unet_offload_device())
        self.module = module
        self.source = source

    @property
    def hidden(self) -> int:
        return self.module.hidden


class DPIRModelLoader:
    DESCRIPTION = ("Loads the official DPIR transformer in any layout (diffusers folder, single file in diffusers or "
                   "SAI/ComfyUI names, consolidated .pth) as a standard SD3 MODEL, plus its LQ condition branch.")
    CATEGORY = "DPIR"
    FUNCTION = "load"
    RETURN_TYPES = ("MODEL", "DPIR_LQ_BRANCH")
    RETURN_NAMES = ("model", "lq_branch")
    OUTPUT_TOOLTIPS = ("SD3 MODEL: usable with KSampler, LoRA loaders, ModelSamplingSD3...",
                       "the LQ condition branch (control_conv): wire it into 'DPIR Apply LQ Condition'")

    @classmethod
    def INPUT_TYPES(cls):
        files = list_models(DPIR_FOLDER)
        return {"required": {
            "transformer": (files or ["none"], {"tooltip": guidance("dpir_transformer")}),
            "weight_dtype": (list(WEIGHT_DTYPES), {"default": "default", "tooltip":
                             "precision the DiT weights are stored in on the GPU (fp16/bf16: half of fp32; fp8: half "
                             "again, on GPUs that support it); with ComfyUI's classic model loading also in RAM, with "
                             "its dynamic VRAM loading the RAM copy keeps the file's precision"}),
        }, "optional": {
            "lq_branch": ([INSIDE] + files, {"default": INSIDE, "tooltip":
                          "a separate file holding only control_conv.*, if the transformer file lacks it"}),
        }}

    def load(self, transformer, weight_dtype, lq_branch=INSIDE, disable_dynamic=False):
        path = _diffusers_folder(resolve(DPIR_FOLDER, transformer, "dpir_transformer"))
        lq_path = None if lq_branch in (None, "", INSIDE) else resolve(DPIR_FOLDER, lq_branch, "dpir_transformer")
        ckpt = load_transformer(path, lq_path)
        logging.info("DPIR: %s", ckpt.describe())
        for note in ckpt.notes:
            logging.warning("DPIR: %s", note)
        if ckpt.lq_state_dict is None:
            raise DPIRModelError(f"{ckpt.source} has no LQ branch (control_conv): it is a plain SD3 transformer. "
                                 "Use the DPIR transformer, or select the LQ branch file in 'lq_branch'")
        model = compat.load_diffusion_model_state_dict(dict(ckpt.state_dict), dict(WEIGHT_DTYPES[weight_dtype]),
                                                       disable_dynamic)
        if model is None:
            raise DPIRModelError(f"ComfyUI did not recognise {ckpt.source} as SD3 ({ckpt.layout})")
        cpu_attention.install(model)  # faster and leaner DiT attention when it runs on the CPU
        # how ComfyUI reloads this MODEL (MultiGPU clones, hooks on a dynamic-VRAM model), as core loaders set it
        compat.set_reload_factory(model, DPIRModelLoader().load, (transformer, weight_dtype, lq_branch), 0)
        branch = LQCondition.from_state_dict(ckpt.lq_state_dict, ckpt.source).eval()
        source = ckpt.source
        del ckpt  # the file's tensors: freed before the heap is trimmed
        release_freed_memory()
        return (model, LQBranch(branch, source))


class DPIRRobustVAELoader:
    DESCRIPTION = ("Loads DPIR's degradation-robust VAE encoder on top of a stock SD3 VAE: the result encodes with "
                   "the robust encoder and decodes with the SD3 decoder. Without a stock VAE, the robust file must "
                   "hold a decoder too (the official folder does).")
    CATEGORY = "DPIR"
    FUNCTION = "load"
    RETURN_TYPES = ("VAE",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "robust_vae": (list_models(DPIR_FOLDER) or ["none"], {"tooltip": guidance("robust_vae")}),
        }, "optional": {
            "vae": ("VAE", {"tooltip": "stock SD3 VAE (from Load VAE); its decoder is kept"}),
        }}

    def load(self, robust_vae, vae=None):
        ckpt = load_vae(_diffusers_folder(resolve(DPIR_FOLDER, robust_vae, "robust_vae")))
        if vae is not None:
            if getattr(vae, "latent_channels", None) != 16:
                raise DPIRModelError(f"the VAE wired into 'vae' has {getattr(vae, 'latent_channels', '?')} latent "
                                     "channels; DPIR needs the SD3 VAE (16 channels). " + guidance("sd3_vae"))
            encoder = comfy.diffusers_convert.convert_vae_state_dict(ckpt.encoder_state_dict())
            sd = {**vae.get_sd(), **encoder}
        elif ckpt.has_decoder:
            sd = ckpt.state_dict
        else:
            raise DPIRModelError(f"{ckpt.source} holds only an encoder: wire a stock SD3 VAE (Load VAE) into "
                                 "'vae' for the decoder. " + guidance("sd3_vae"))
        out = comfy.sd.VAE(sd=sd)
        out.throw_exception_if_invalid()
        return (out,)


def _tower_config(sd: dict, source: str = "this file") -> dict:
    """CLIP vision config of a Hugging Face-named tower, inferred from its weight shapes."""
    try:
        patch = sd["vision_model.embeddings.patch_embedding.weight"]
        positions = sd["vision_model.embeddings.position_embedding.weight"].shape[0]
        layers = len({k.split(".")[3] for k in sd if k.startswith("vision_model.encoder.layers.")})
        hidden = patch.shape[0]
        intermediate = sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0]
        projection = sd["visual_projection.weight"].shape[0]
    except KeyError as e:
        raise DPIRModelError(f"{source} is not a CLIP vision tower (it lacks {e.args[0]}): pick a CLIP vision "
                             "model (" + guidance("clip_vision_local") + ")") from None
    except (IndexError, AttributeError):
        raise DPIRModelError(f"{source} is not a CLIP vision tower: its patch or position embedding has the "
                             "wrong shape") from None
    grid = round((positions - 1) ** 0.5)
    return {
        "model_type": "clip_vision_model", "hidden_act": "gelu" if hidden >= 1280 else "quick_gelu",
        "hidden_size": hidden, "image_size": grid * patch.shape[-1], "intermediate_size": intermediate,
        "num_attention_heads": max(1, hidden // 64), "num_channels": 3, "num_hidden_layers": layers,
        "patch_size": patch.shape[-1], "projection_dim": projection, "layer_norm_eps": 1e-5,
        "image_mean": [0.48145466, 0.4578275, 0.40821073], "image_std": [0.26862954, 0.26130258, 0.27577711],
    }


def load_clip_vision(path: Path):
    """A CLIP vision tower from a HF folder/file or an OpenAI-style file, any geometry."""
    sidecar = None
    if path.is_dir():
        sidecar = path / "config.json"
        path = next((p for p in (path / "model.safetensors",) if p.exists()), path)
    sd, _, _ = read_weights(path)
    source = f"'{path}'"
    try:
        if "visual.transformer.resblocks.0.attn.in_proj_weight" in sd:
            sd = comfy.clip_vision.convert_to_transformers(sd, "visual.")
        known = comfy.clip_vision.load_clipvision_from_sd(dict(sd))
    except (KeyError, RuntimeError, ValueError, IndexError) as e:
        raise DPIRModelError(f"{source} looks like a known CLIP vision model but its weights do not fit it "
                             f"({str(e).splitlines()[0][:300]}); download it again") from None
    if known is not None:
        return known
    config = _tower_config(sd, source)
    if sidecar is None:
        side = path.with_suffix(".json")
        sidecar = side if side.exists() else None
    if sidecar is not None and sidecar.exists():
        try:
            given = json.loads(sidecar.read_text())
            given = given.get("vision_config", given)
            config.update({k: v for k, v in given.items() if k in config})
        except (ValueError, UnicodeDecodeError, AttributeError) as e:
            raise DPIRModelError(f"the config '{sidecar}' beside {source} is not a valid CLIP vision config ({e}); "
                                 "fix or delete it") from None
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump(config, f)
    try:
        clip = comfy.clip_vision.ClipVisionModel(f.name)
        missing, unexpected = clip.load_sd(sd)
    except (RuntimeError, ValueError, TypeError) as e:
        raise DPIRModelError(f"{source}: its weights do not fit the CLIP vision geometry inferred from it "
                             f"({str(e).splitlines()[0][:300]}); if a .json config lies beside it, check it") from None
    finally:
        os.unlink(f.name)
    missing = [k for k in missing if "position_ids" not in k]
    if missing:
        raise DPIRModelError(f"'{path}': CLIP vision weights missing {missing[:5]}; the file is incomplete, download it again")
    return clip


class DPIRCLIPVisionLoader:
    DESCRIPTION = ("Loads a CLIP vision tower for the visual prompt, including ViT-B/32 which the core loader "
                   "rejects. Known geometries use their published configs; others are inferred from the weights "
                   "(or a same-name .json config beside the file).")
    CATEGORY = "DPIR"
    FUNCTION = "load"
    RETURN_TYPES = ("CLIP_VISION",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"clip_name": (list_models("clip_vision") or ["none"], {
            "tooltip": guidance("clip_vision_local") + " / " + guidance("clip_vision_summary")})}}

    def load(self, clip_name):
        path = _diffusers_folder(resolve("clip_vision", clip_name, "clip_vision_local"))
        return (load_clip_vision(path),)


NODE_CLASS_MAPPINGS = {
    "DPIRModelLoader": DPIRModelLoader,
    "DPIRRobustVAELoader": DPIRRobustVAELoader,
    "DPIRCLIPVisionLoader": DPIRCLIPVisionLoader,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "DPIRModelLoader": "DPIR Model Loader",
    "DPIRRobustVAELoader": "DPIR Robust VAE Loader",
    "DPIRCLIPVisionLoader": "DPIR CLIP Vision Loader",
}
