"""Trained weights → the files the nodes load (through models/checkpoints.py).

Two layouts for each piece:

* the official diffusers layout — ``transformer/`` (``config.json`` +
  ``diffusion_pytorch_model.safetensors``, sharded with an index above
  ``max_shard_size``; diffusers SD3 names + ``control_conv.{0..5}.*``, as the
  authors' ``save_pretrained`` wrote it) and ``robust_vae/`` (a diffusers
  ``AutoencoderKL`` folder: the trained encoder with SD3's decoder);
* the pack's single files — ``dpir_transformer.safetensors`` (the same
  diffusers names incl. ``control_conv``) and ``dpir_robust_vae.safetensors``.

Copy ``transformer/`` and ``robust_vae/`` (or the single files) into
``ComfyUI/models/dpir/``. LoRA adapters are merged into the weights.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _dtype(name: str) -> torch.dtype:
    if name not in DTYPES:
        raise ValueError(f"export dtype must be one of {sorted(DTYPES)}, got {name!r}")
    return DTYPES[name]


def merged_transformer_state_dict(transformer) -> dict[str, torch.Tensor]:
    """Diffusers-named weights of a (possibly LoRA-adapted) SD3 transformer, adapters merged."""
    sd = {}
    for k, v in transformer.state_dict().items():
        if ".lora_" in k or "lora_magnitude" in k:
            continue
        sd[k.replace(".base_layer.", ".")] = v.detach()
    try:
        from peft.tuners.lora import LoraLayer
    except ImportError:
        return sd
    for name, module in transformer.named_modules():
        if isinstance(module, LoraLayer) and not getattr(module, "merged", False):
            for adapter in module.active_adapters:
                if adapter in module.lora_A:
                    key = f"{name}.weight"
                    sd[key] = sd[key] + module.get_delta_weight(adapter).to(sd[key].dtype).detach()
    return sd


def transformer_config(transformer) -> dict:
    cfg = {k: v for k, v in dict(transformer.config).items() if not k.startswith("_")}
    cfg = {k: (list(v) if isinstance(v, tuple) else v) for k, v in cfg.items()}
    import diffusers

    return {"_class_name": "SD3Transformer2DModel", "_diffusers_version": diffusers.__version__, **cfg}


def dpir_state_dict(transformer, lq_branch, dtype="fp32") -> dict[str, torch.Tensor]:
    dt = _dtype(dtype)
    sd = merged_transformer_state_dict(transformer)
    sd.update({f"control_conv.{k}": v.detach() for k, v in lq_branch.control_conv.state_dict().items()})
    return {k: v.to("cpu", dt).contiguous() for k, v in sd.items()}


def export_transformer(transformer, lq_branch, out_dir, dtype: str = "bf16", folder: bool = True,
                       single_file: bool = True, max_shard_size: str | int = "5GB") -> dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    sd = dpir_state_dict(transformer, lq_branch, dtype)
    paths = {}
    if folder:
        from huggingface_hub import split_torch_state_dict_into_shards

        tdir = out / "transformer"
        tdir.mkdir(parents=True, exist_ok=True)
        (tdir / "config.json").write_text(json.dumps(transformer_config(transformer), indent=2, sort_keys=True))
        split = split_torch_state_dict_into_shards(
            sd, max_shard_size=max_shard_size, filename_pattern="diffusion_pytorch_model{suffix}.safetensors")
        for filename, names in split.filename_to_tensors.items():
            save_file({n: sd[n] for n in names}, str(tdir / filename), metadata={"format": "pt"})
        if split.is_sharded:
            index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
            (tdir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index, indent=2))
        paths["transformer_folder"] = tdir
    if single_file:
        path = out / "dpir_transformer.safetensors"
        save_file(sd, str(path), metadata={"format": "pt", "dpir": "transformer+control_conv, diffusers names",
                                           "config": json.dumps(transformer_config(transformer))})
        paths["transformer_file"] = path
    return paths


def export_robust_vae(vae, out_dir, dtype: str = "bf16", folder: bool = True,
                      single_file: bool = True) -> dict[str, Path]:
    """The robust VAE (trained encoder + the decoder it was trained against)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    dt = _dtype(dtype)
    sd = {k: v.detach().to("cpu", dt).contiguous() for k, v in vae.state_dict().items()}
    paths = {}
    if folder:
        vdir = out / "robust_vae"
        vdir.mkdir(parents=True, exist_ok=True)
        vae.save_config(str(vdir))
        save_file(sd, str(vdir / "diffusion_pytorch_model.safetensors"), metadata={"format": "pt"})
        paths["robust_vae_folder"] = vdir
    if single_file:
        path = out / "dpir_robust_vae.safetensors"
        save_file(sd, str(path), metadata={"format": "pt", "dpir": "robust VAE, diffusers AutoencoderKL names"})
        paths["robust_vae_file"] = path
    return paths
