"""Checks of what is wired into the DPIR nodes, with messages that say what to connect instead.

They run before any tensor reaches the model, so a wrong wire or a model
from another family is a clear ComfyUI error on the node, never a shape error
deep inside torch.
"""
from __future__ import annotations

import torch

import comfy.model_base

from ..models.errors import DPIRInputError, DPIRModelError


def model_kind(model) -> str:
    """A readable name of what a MODEL holds: 'SD15', 'SDXL', 'Flux', 'SD3'..."""
    base = getattr(model, "model", None)
    config = getattr(base, "model_config", None)
    if config is not None:
        return type(config).__name__
    return type(base).__name__ if base is not None else type(model).__name__


def require_sd3(model, node: str, source: str = "the 'model' output of 'DPIR Model Loader'", name: str = "model"):
    """The SD3 BaseModel inside a MODEL, or a DPIRModelError naming what it is and what to wire instead."""
    base = getattr(model, "model", None)
    if isinstance(base, comfy.model_base.SD3):
        return base
    if base is None:
        raise DPIRModelError(f"'{name}' of '{node}' is not a ComfyUI MODEL ({type(model).__name__}): wire {source}")
    raise DPIRModelError(f"'{name}' of '{node}' is not SD3 (ComfyUI detects it as {model_kind(model)}): DPIR runs "
                         f"only on its own SD3 transformer. Wire {source}, not a checkpoint or diffusion-model "
                         "loader of another model family")


def prompt_widths(base) -> tuple[int | None, int | None]:
    """(context width, pooled width) the SD3 transformer reads; None where it has no such input."""
    dm = base.diffusion_model
    context = getattr(getattr(dm, "context_embedder", None), "in_features", None)
    y = getattr(dm, "y_embedder", None)
    pooled = y.mlp[0].in_features if y is not None else None
    return context, pooled


def check_prompt(base, tokens, pooled, what: str) -> None:
    """``tokens`` (B, N, W) and ``pooled`` (B, P) must fit the transformer's context and pooled inputs."""
    context_width, pooled_width = prompt_widths(base)
    if not isinstance(tokens, torch.Tensor) or tokens.ndim != 3:
        shape = tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__
        raise DPIRInputError(f"the {what} is not a text/image prompt (got {shape}): wire 'positive' / 'negative' "
                             "of 'DPIR Dual Prompt'")
    if context_width is not None and tokens.shape[-1] != context_width:
        raise DPIRInputError(
            f"the {what} is {tokens.shape[-1]} wide but this DPIR transformer reads {context_width}-wide prompts "
            f"(the width of its T5-XXL): wire 'positive' / 'negative' of 'DPIR Dual Prompt', and give 'DPIR T5 Text "
            "Prompt' the T5-XXL (or T5 embedding) that belongs to this model, not another text encoder")
    if pooled_width is not None:
        if pooled is None:
            raise DPIRInputError(f"the {what} has no pooled vector, which SD3 needs: wire 'positive' / 'negative' of "
                                 "'DPIR Dual Prompt' (it takes the pooled vector from 'DPIR Visual Prompt')")
        if pooled.shape[-1] != pooled_width:
            raise DPIRInputError(
                f"the {what}'s pooled vector is {pooled.shape[-1]} wide but this DPIR transformer expects "
                f"{pooled_width} (SD3: 768 from CLIP ViT-B/32 + 1280 from CLIP ViT-bigG): in 'DPIR Visual Prompt' "
                "wire ViT-B/32 into 'clip_vision_local' and ViT-bigG into 'clip_vision_summary' (not swapped, not "
                "other CLIP models)")


def check_conditioning(base, conditioning, what: str) -> None:
    """Every entry of a CONDITIONING list must fit the transformer."""
    if not isinstance(conditioning, list) or not conditioning:
        raise DPIRInputError(f"'{what}' must be a CONDITIONING: wire '{what}' of 'DPIR Dual Prompt'")
    for entry in conditioning:
        if not isinstance(entry, (list, tuple)) or len(entry) < 2 or not isinstance(entry[1], dict):
            raise DPIRInputError(f"'{what}' must be a CONDITIONING: wire '{what}' of 'DPIR Dual Prompt'")
        check_prompt(base, entry[0], entry[1].get("pooled_output"), f"'{what}' prompt")


def check_lq_latent(lq_latent, channels: int = 16) -> torch.Tensor:
    """The samples of an LQ latent, or a DPIRInputError saying to wire 'lq_latent' of 'DPIR Robust VAE Encode'."""
    samples = lq_latent.get("samples") if isinstance(lq_latent, dict) else None
    if not isinstance(samples, torch.Tensor) or samples.ndim != 4 or samples.shape[1] != channels:
        shape = tuple(samples.shape) if isinstance(samples, torch.Tensor) else None
        raise DPIRInputError(f"'lq_latent' must be a {channels}-channel SD3 latent, got {shape}: wire 'lq_latent' "
                             "of 'DPIR Robust VAE Encode' (a 4-channel SD1.5/SDXL VAE will not do)")
    if not bool(torch.isfinite(samples).all()):
        raise DPIRInputError("'lq_latent' contains NaN or infinite values (the VAE overflowed, or the image was "
                             "broken): encode the LQ image again with 'DPIR Robust VAE Encode'")
    return samples
