"""Independent reference of DPIR inference, on diffusers/transformers classes only.

Written from dpir-reference.md (§2 formula, §3 prompt layout, §4 defaults)
without importing the pack, so that the pack's core and its ComfyUI nodes can
be checked against it. Deliberately plain: one function per step, the
formulas spelled out as in the released code.
"""
from __future__ import annotations

import math

import torch
from einops import rearrange
from torch import nn


# ---------------------------------------------------------------- LQ branch (§2)

def control_conv_from_weights(sd: dict) -> nn.Sequential:
    """The released ``control_conv`` stack, widths read from the weights."""
    w0, w2, w4 = sd["control_conv.0.weight"], sd["control_conv.2.weight"], sd["control_conv.4.weight"]
    conv = nn.Sequential(
        nn.Conv2d(w0.shape[1], w0.shape[0], 3, 1, 1), nn.GroupNorm(4, w0.shape[0]),
        nn.Conv2d(w0.shape[0], w2.shape[0], 3, 2, 1), nn.GroupNorm(8, w2.shape[0]),
        nn.Conv2d(w2.shape[0], w4.shape[0], 3, 1, 1), nn.GroupNorm(8, w4.shape[0]),
    )
    conv.load_state_dict({k[len("control_conv."):]: v for k, v in sd.items() if k.startswith("control_conv.")})
    return conv.eval()


def cross_normalise_add(h: torch.Tensor, c: torch.Tensor, control_scale: float = 1.0) -> torch.Tensor:
    """dpir-reference §2, line by line."""
    mu_h, sd_h = h.mean(dim=[1, 2]), h.std(dim=[1, 2])
    mu_c, sd_c = c.mean(dim=[1, 2]), c.std(dim=[1, 2])
    c = (c - mu_c[:, None, None]) / (sd_c[:, None, None] + 1e-9) * sd_h[:, None, None] + mu_h[:, None, None]
    return h + c * control_scale


def attach_lq_hook(transformer, control_conv: nn.Sequential, state: dict):
    """Forward hook on block 0 of ``SD3Transformer2DModel``; ``state['z_lq']`` and ``state['scale']`` drive it."""
    def hook(module, args, output):
        if state.get("z_lq") is None:
            return output
        encoder_hidden_states, hidden_states = output
        c = rearrange(control_conv(state["z_lq"]), "b c h w -> b (h w) c")
        if c.shape[0] != hidden_states.shape[0]:
            c = c.repeat(hidden_states.shape[0] // c.shape[0], 1, 1)
        return encoder_hidden_states, cross_normalise_add(hidden_states, c, state.get("scale", 1.0))
    return transformer.transformer_blocks[0].register_forward_hook(hook)


# ---------------------------------------------------------------- prompts (§3)

def clip_pixels(images: torch.Tensor) -> torch.Tensor:
    """``CLIPImageProcessor`` with the OpenAI settings, on images in [0, 1]."""
    from transformers import CLIPImageProcessor

    processor = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    pixels = processor(images=list(images.float().cpu()), do_rescale=False, return_tensors="pt").pixel_values
    return pixels.to(images)  # the processor works on the CPU in fp32; the towers may be on a GPU, in bf16


def sliding_windows(size: int, tile: int = 1024, overlap: int = 64) -> list[int]:
    if size <= tile:  # the paper's intent; the released code went negative here
        return [0]
    stride = tile - overlap
    starts = list(range(0, size - tile, stride))
    if not starts or starts[-1] + tile < size:
        starts.append(size - tile)
    return starts


def dual_prompt(image: torch.Tensor, clip1, clip2, t5_embedding: torch.Tensor, context_width: int):
    """(context (1, 333, W), pooled (1, P)) for a whole image (local = global view), batch 1."""
    out1 = clip1(pixel_values=clip_pixels(image))
    out2 = clip2(pixel_values=clip_pixels(image))
    pooled = torch.cat([out1.last_hidden_state[:, 0], out2.image_embeds], dim=-1)
    local = out1.last_hidden_state
    local = torch.cat([local, local.new_zeros(*local.shape[:2], pooled.shape[-1] - local.shape[-1])], dim=-1)
    _, _, h, w = image.shape
    th, tw = min(1024, h), min(1024, w)
    global_tokens = []
    for top in sliding_windows(h):
        for left in sliding_windows(w):
            tile = image[:, :, top:top + th, left:left + tw]
            g1 = clip1(pixel_values=clip_pixels(tile)).last_hidden_state[:, 0]
            g2 = clip2(pixel_values=clip_pixels(tile)).image_embeds
            global_tokens.append(torch.cat([g1, g2], dim=-1))
    visual = torch.cat([local, torch.stack(global_tokens, dim=1)], dim=1)[:, :77]
    visual = torch.cat([visual, visual.new_zeros(1, 77 - visual.shape[1], visual.shape[2])], dim=1)
    visual = torch.cat([visual, visual.new_zeros(1, 77, context_width - visual.shape[2])], dim=-1)
    return torch.cat([visual, t5_embedding], dim=1), pooled


@torch.no_grad()  # the released pipeline encodes prompts under no_grad (SDPA picks another kernel with grad)
def t5_embedding(tokenizer, t5, prompt: str) -> torch.Tensor:
    ids = tokenizer(prompt, padding="max_length", max_length=256, truncation=True, return_tensors="pt").input_ids
    return t5(ids)[0]


# ---------------------------------------------------------------- inference (§4)

@torch.no_grad()
def sample_latents(transformer, control_conv, z_lq, context, pooled, steps=28, seed=0, guidance_scale=1.0,
                   control_scale=1.0):
    """The released sampling loop: FlowMatchEuler (shift 3) from seeded CPU noise, zero uncond for CFG."""
    from diffusers import FlowMatchEulerDiscreteScheduler

    if guidance_scale > 1:
        context = torch.cat([torch.zeros_like(context), context])
        pooled = torch.cat([torch.zeros_like(pooled), pooled])
    latents = torch.randn(z_lq.shape, generator=torch.Generator("cpu").manual_seed(seed)).to(z_lq)
    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    scheduler.set_timesteps(steps, device=z_lq.device)
    handle = attach_lq_hook(transformer, control_conv, {"z_lq": z_lq, "scale": control_scale})
    try:
        for t in scheduler.timesteps:
            x = torch.cat([latents] * 2) if guidance_scale > 1 else latents
            noise_pred = transformer(hidden_states=x, encoder_hidden_states=context, pooled_projections=pooled,
                                     timestep=t.expand(x.shape[0])).sample
            if guidance_scale > 1:
                uncond, cond = noise_pred.chunk(2)
                noise_pred = uncond + guidance_scale * (cond - uncond)
            latents = scheduler.step(noise_pred, t, latents).prev_sample
    finally:
        handle.remove()
    return latents


@torch.no_grad()
def restore(image: torch.Tensor, transformer, control_conv, vae, clip1, clip2, t5_emb: torch.Tensor,
            steps: int = 28, seed: int = 0, guidance_scale: float = 1.0, control_scale: float = 1.0):
    """Official inference with the posterior mode, batch 1, image (1, 3, H, W) in [0, 1]."""
    shift, scale = vae.config.shift_factor, vae.config.scaling_factor
    z_lq = (vae.encode(image * 2 - 1).latent_dist.mode() - shift) * scale
    context, pooled = dual_prompt(image, clip1, clip2, t5_emb, transformer.config.joint_attention_dim)
    latents = sample_latents(transformer, control_conv, z_lq, context, pooled, steps, seed, guidance_scale,
                             control_scale)
    decoded = vae.decode(latents / scale + shift).sample
    return ((decoded + 1) / 2).clamp(0, 1)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = torch.mean((a.float() - b.float()) ** 2).item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)
