"""Throughput and peak memory of one DPIR training step on a random SD3-medium-shaped model.

    python train.py bench [--resolution 1024] [--batch 1] [--steps 5] [--checkpointing both] [--trainable full]

Builds diffusers' ``SD3Transformer2DModel`` with SD3-medium's shape (24
blocks, width 1536, context 4096, pooled 2048) plus the LQ branch, random
weights, and times the denoiser's forward + backward + AdamW step under bf16
autocast (fp32 master weights) on latents of ``resolution / 8`` with the
333-token dual-prompt context. The VAEs, CLIPs and T5 are not included (they
run without gradients and are much cheaper). Prints one JSON line per setting.
"""
from __future__ import annotations

import json
import time

import torch
import torch.nn.functional as F

SD3_MEDIUM = {"sample_size": 128, "patch_size": 2, "in_channels": 16, "num_layers": 24, "attention_head_dim": 64,
              "num_attention_heads": 24, "joint_attention_dim": 4096, "caption_projection_dim": 1536,
              "pooled_projection_dim": 2048, "out_channels": 16, "pos_embed_max_size": 192}


def bench(resolution: int = 1024, batch: int = 1, steps: int = 5, warmup: int = 2, checkpointing: bool = False,
          trainable: str = "full", config: dict | None = None, device: str | None = None) -> dict:
    from diffusers import SD3Transformer2DModel

    from ..models.lq_condition import LQCondition
    from .dpir_trainer import DPIRDenoiser

    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    cfg = dict(config or SD3_MEDIUM)
    torch.manual_seed(0)
    with torch.device(device):
        transformer = SD3Transformer2DModel(**cfg)
        hidden = cfg["num_attention_heads"] * cfg["attention_head_dim"]
        branch = LQCondition(cfg["in_channels"], (256, 512) if hidden >= 512 else (16, 32), hidden)
    transformer.requires_grad_(trainable == "full")
    if trainable == "attention":
        for n, p in transformer.named_parameters():
            if ".attn." in n:
                p.requires_grad_(True)
    if checkpointing:
        transformer.enable_gradient_checkpointing()
    model = DPIRDenoiser(transformer, branch).to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)
    lat = resolution // 8
    ctx_w, pooled_w = cfg["joint_attention_dim"], cfg["pooled_projection_dim"]
    amp = torch.autocast(device_type=device.split(":")[0], dtype=torch.bfloat16)

    def step():
        x = torch.randn(batch, cfg["in_channels"], lat, lat, device=device)
        z_lq = torch.randn_like(x)
        ctx = torch.randn(batch, 333, ctx_w, device=device)
        pooled = torch.randn(batch, pooled_w, device=device)
        t = torch.rand(batch, device=device) * 1000
        with amp:
            pred = model(x, t, ctx, pooled, z_lq)
        loss = F.mse_loss(pred.float(), torch.randn_like(x))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)

    cuda = device.startswith("cuda")
    for _ in range(warmup):
        step()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if cuda:
        torch.cuda.synchronize()
    dt = time.perf_counter() - t0
    return {
        "device": torch.cuda.get_device_name() if cuda else "cpu",
        "resolution": resolution, "batch": batch, "trainable": trainable, "gradient_checkpointing": checkpointing,
        "params_total_M": round(sum(p.numel() for p in model.parameters()) / 1e6, 1),
        "params_trained_M": round(sum(p.numel() for p in params) / 1e6, 1),
        "seconds_per_step": round(dt / steps, 4), "images_per_s": round(batch * steps / dt, 3),
        "peak_memory_GiB": round(torch.cuda.max_memory_allocated() / 2 ** 30, 2) if cuda else None,
    }


def main(args) -> int:
    settings = {"both": (False, True), "on": (True,), "off": (False,)}[args.checkpointing]
    for ckpt in settings:
        try:
            r = bench(args.resolution, args.batch, args.steps, checkpointing=ckpt, trainable=args.trainable)
        except torch.OutOfMemoryError as e:
            r = {"resolution": args.resolution, "batch": args.batch, "gradient_checkpointing": ckpt,
                 "error": f"out of memory: {str(e).splitlines()[0]}"}
            torch.cuda.empty_cache()
        print(json.dumps(r), flush=True)
    return 0
