"""DPIR restoration on diffusers' SD3 classes, outside ComfyUI.

Used by the tests, the training code's validation images and anyone who
wants the model core without the node graph. The node pack samples through
ComfyUI instead; both share the LQ branch and the prompt assembly.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .colour_fix import wavelet_colour_fix
from .dual_prompt import dual_context, visual_prompt, zero_prompt
from .errors import DPIRInputError
from .lq_condition import LQCondition, inject


class LQHook:
    """Adds the LQ features after joint block 0 of a diffusers ``SD3Transformer2DModel``.

    Set ``features`` (from ``LQCondition.features``, once per image) before
    calling the transformer; ``None`` leaves the transformer plain SD3.
    """

    def __init__(self, transformer, strength: float = 1.0):
        self.features: torch.Tensor | None = None
        self.strength = strength
        self._handle = transformer.transformer_blocks[0].register_forward_hook(self._after_block0)

    def _after_block0(self, module, args, output):
        if self.features is None:
            return output
        context, image = output
        return context, inject(image, self.features, self.strength)

    def remove(self) -> None:
        self._handle.remove()


def resize_long_side(images: torch.Tensor, long_side: int, multiple: int = 16) -> torch.Tensor:
    """Resize (B, 3, H, W) keeping the aspect ratio so the long side is ``long_side``, sides rounded to ``multiple``."""
    _, _, h, w = images.shape
    scale = long_side / max(h, w)
    nh = max(multiple, round(h * scale / multiple) * multiple)
    nw = max(multiple, round(w * scale / multiple) * multiple)
    return F.interpolate(images, size=(nh, nw), mode="bicubic", antialias=True, align_corners=False).clamp(0, 1)


@dataclass
class DPIRPipeline:
    """The pieces of DPIR on diffusers/transformers classes.

    ``vae`` is the robust VAE (encodes the LQ; its decoder is SD3's),
    ``encoder1``/``encoder2`` visual encoders (see ``dual_prompt``), and the
    T5 embedding of the text prompt is passed to ``restore`` precomputed.
    """
    transformer: torch.nn.Module
    lq_branch: LQCondition
    vae: torch.nn.Module
    encoder1: object
    encoder2: object

    def __post_init__(self):
        self.hook = LQHook(self.transformer)

    @torch.no_grad()
    def encode_lq(self, lq: torch.Tensor) -> torch.Tensor:
        """LQ image (B, 3, H, W) in [0, 1] → posterior mode, scaled like a diffusion latent."""
        cfg = self.vae.config
        z = self.vae.encode(lq * 2 - 1).latent_dist.mode()
        return (z - cfg.shift_factor) * cfg.scaling_factor

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        cfg = self.vae.config
        image = self.vae.decode(latents / cfg.scaling_factor + cfg.shift_factor).sample
        return ((image + 1) / 2).clamp(0, 1)

    @torch.no_grad()
    def restore(self, lq: torch.Tensor, t5_embedding: torch.Tensor, steps: int = 28, seed: int = 0,
                guidance: float = 1.0, strength: float = 1.0, shift: float = 3.0,
                colour_fix: bool = True) -> torch.Tensor:
        """Restore ``lq`` (B, 3, H, W) in [0, 1], H and W multiples of 16, as the released code does."""
        from diffusers import FlowMatchEulerDiscreteScheduler

        if lq.ndim != 4 or lq.shape[1] != 3 or lq.shape[2] % 16 or lq.shape[3] % 16:
            raise DPIRInputError(f"restore takes (B, 3, H, W) images with H and W multiples of 16, got "
                                 f"{tuple(lq.shape)}; use resize_long_side first")
        z_lq = self.encode_lq(lq)
        features = self.lq_branch.features(z_lq)
        context_width = self.transformer.config.joint_attention_dim
        visual, pooled = visual_prompt(lq, lq, self.encoder1, self.encoder2, context_width)
        context = dual_context(visual, t5_embedding)
        if guidance != 1.0:
            uncond, uncond_pooled = zero_prompt(context, pooled)
            context, pooled = torch.cat([uncond, context]), torch.cat([uncond_pooled, pooled])
            features = torch.cat([features, features])
        generator = torch.Generator("cpu").manual_seed(seed)
        latents = torch.randn(z_lq.shape, generator=generator).to(z_lq)
        scheduler = FlowMatchEulerDiscreteScheduler(shift=shift)
        scheduler.set_timesteps(steps)
        self.hook.features, self.hook.strength = features, strength
        try:
            for t in scheduler.timesteps:
                x = torch.cat([latents, latents]) if guidance != 1.0 else latents
                v = self.transformer(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                                     timestep=t.expand(x.shape[0]), return_dict=False)[0]
                if guidance != 1.0:
                    v_uncond, v_cond = v.chunk(2)
                    v = v_uncond + guidance * (v_cond - v_uncond)
                latents = scheduler.step(v, t, latents, return_dict=False)[0]
        finally:
            self.hook.features = None
        image = self.decode(latents)
        return wavelet_colour_fix(image, lq) if colour_fix else image
