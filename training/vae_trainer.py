"""Robust VAE: fine-tune the SD3 VAE's encoder so that it maps degraded photos to clean latents.

dpir-reference §5: encoder only (the decoder stays SD3's), AdamW lr 1e-5,
L1 + LPIPS for the first 5 000 steps, then + a patch discriminator (VQGAN
hinge loss with the adaptive weight) for 20 000 more. The degraded input is
the LQ resized back to the HQ size (what the nodes encode); the target is the
HQ photo after the frozen decoder.
"""
from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoints import load_vae
from .common import OptimConfig, RunConfig, averaged_weights, fill_dataclass
from .data import DataConfig, step_seed
from .degradation import Degrader, config_from_dict
from .losses import PatchDiscriminator, PerceptualLoss, adaptive_weight, hinge_d_loss
from .loop import TrainerBase

log = logging.getLogger("dpir.training")


@dataclasses.dataclass
class PerceptualConfig:
    backbone: str = "vgg16"            # vgg16 | alexnet (torchvision)
    weights: str | None = None         # torchvision state dict file of the backbone (required unless random_init)
    lin_weights: str | None = None     # LPIPS's lin-layer file (vgg.pth / alex.pth), optional
    random_init: bool = False          # tests / smoke runs only
    weight: float = 1.0


@dataclasses.dataclass
class DiscConfig:
    enabled: bool = True
    start_step: int = 5000             # L1 + LPIPS alone before this step
    weight: float = 0.5
    adaptive: bool = True              # VQGAN's gradient-balanced weight
    lr: float | None = None            # default: optim.lr
    width: int = 64
    layers: int = 3


@dataclasses.dataclass
class VAETrainConfig:
    stock_vae: str = ""                # the SD3 VAE (any layout models/checkpoints.py reads)
    init_encoder: str | None = None    # continue from this robust VAE's encoder (default: the stock encoder)
    data: DataConfig = dataclasses.field(default_factory=lambda: DataConfig(crop_size=512, resolutions=("native",)))
    degradation: dict = dataclasses.field(default_factory=dict)
    run: RunConfig = dataclasses.field(default_factory=lambda: RunConfig(max_steps=25000, output_dir="robust-vae"))
    optim: OptimConfig = dataclasses.field(default_factory=lambda: OptimConfig(lr=1e-5, warmup_steps=0))
    l1_weight: float = 1.0
    latent_weight: float = 0.0         # optional extra: MSE to the stock encoder's latent of the HQ photo
    perceptual: PerceptualConfig = dataclasses.field(default_factory=PerceptualConfig)
    disc: DiscConfig = dataclasses.field(default_factory=DiscConfig)
    posterior: str = "mode"            # mode (what the nodes use) | sample
    ema_decay: float = 0.0


def vae_config_from_dict(d: dict) -> VAETrainConfig:
    cfg = fill_dataclass(VAETrainConfig, d)
    if not cfg.stock_vae:
        raise ValueError("stock_vae: give the SD3 VAE (folder or file) whose encoder is fine-tuned")
    return cfg


def build_vae(path, encoder_from=None):
    from diffusers import AutoencoderKL

    ckpt = load_vae(path)
    if not ckpt.has_decoder:
        raise ValueError(f"{ckpt.source} has no decoder; the stock SD3 VAE (with decoder) is needed")
    vae = AutoencoderKL.from_config(ckpt.config)
    vae.load_state_dict(ckpt.state_dict)
    if encoder_from:
        vae.load_state_dict(load_vae(encoder_from).encoder_state_dict(), strict=False)
    return vae


class RobustAutoencoder(nn.Module):
    """Trainable encoder + frozen decoder; forward: degraded image in [-1, 1] → (reconstruction, latent)."""

    def __init__(self, vae, posterior: str = "mode"):
        super().__init__()
        self.vae = vae
        self.posterior = posterior
        vae.requires_grad_(False)
        vae.encoder.requires_grad_(True)
        if vae.quant_conv is not None:
            vae.quant_conv.requires_grad_(True)

    def forward(self, x: torch.Tensor, generator=None):
        dist = self.vae.encode(x).latent_dist
        z = dist.mode() if self.posterior == "mode" else dist.sample(generator)
        return self.vae.decode(z).sample, z


class VAETrainer(TrainerBase):
    name = "robust-vae"

    def build(self, accelerator):
        cfg = self.cfg
        self.degrader = Degrader(config_from_dict(cfg.degradation))
        vae = build_vae(cfg.stock_vae, cfg.init_encoder)
        self.stock_encoder = None
        if cfg.latent_weight:
            self.stock_encoder = build_vae(cfg.stock_vae).to(accelerator.device).eval().requires_grad_(False)
        p = cfg.perceptual
        self.perceptual = PerceptualLoss(p.backbone, p.weights, p.lin_weights, p.random_init).to(accelerator.device)
        self.disc = self.disc_opt = None
        if cfg.disc.enabled:
            torch.manual_seed(cfg.run.seed + 1)
            disc = PatchDiscriminator(3, cfg.disc.width, cfg.disc.layers)
            disc_opt = torch.optim.AdamW(disc.parameters(), lr=cfg.disc.lr or cfg.optim.lr, betas=(0.5, 0.9),
                                         weight_decay=0.0)
            self.disc, self.disc_opt = accelerator.prepare(disc, disc_opt)
        return RobustAutoencoder(vae, cfg.posterior)

    def compute(self, batch, step, micro):
        acc, cfg = self.accelerator, self.cfg
        self.note_batch(batch)
        rank = acc.process_index
        hq = batch["hq"].to(acc.device)
        deg = self.degrader(hq, seed=step_seed(cfg.run.seed, step * cfg.run.grad_accum + micro, rank, "degrade"))
        target = hq * 2 - 1
        gen = torch.Generator(acc.device).manual_seed(step_seed(cfg.run.seed, step, rank, "posterior"))
        rec, z = self.model(deg.lq_up * 2 - 1, gen)
        rec = rec.float()
        l1 = (rec - target).abs().mean()
        perc = self.perceptual(rec, target).mean()
        rec_loss = cfg.l1_weight * l1 + cfg.perceptual.weight * perc
        parts = {"loss": float(rec_loss.detach()), "l1": float(l1.detach()), "lpips": float(perc.detach())}
        loss = rec_loss
        if self.stock_encoder is not None:
            with torch.no_grad():
                z_ref = self.stock_encoder.encode(target).latent_dist.mode()
            lat = F.mse_loss(z.float(), z_ref.float())
            loss = loss + cfg.latent_weight * lat
            parts["latent"] = float(lat.detach())
        self._gan_active = self.disc is not None and step >= cfg.disc.start_step
        if self._gan_active:
            # the generator's view of D goes around the DDP wrapper (D is updated in after_step)
            g_loss = -self.accelerator.unwrap_model(self.disc)(rec).mean()
            w = cfg.disc.weight
            if cfg.disc.adaptive:
                layer = acc.unwrap_model(self.model).vae.encoder.conv_out.weight
                w = w * adaptive_weight(rec_loss, g_loss, layer)
            loss = loss + w * g_loss
            parts["g_loss"] = float(g_loss.detach())
            self._fake, self._real = rec.detach(), target
        return loss, parts

    def after_step(self, step):
        if not getattr(self, "_gan_active", False):
            return
        self.disc_opt.zero_grad(set_to_none=True)  # drop what the generator loss left in D
        d_loss = hinge_d_loss(self.disc(self._real), self.disc(self._fake))
        self.accelerator.backward(d_loss)
        self.disc_opt.step()
        self.disc_opt.zero_grad(set_to_none=True)
        self.history[-1]["d_loss"] = float(d_loss.detach())

    def extra_checkpoint_objects(self):
        return []  # the discriminator and its optimizer are prepared objects: accelerate saves them itself

    def robust_vae(self):
        """The trained AutoencoderKL (EMA weights when EMA is on)."""
        return self.accelerator.unwrap_model(self.model).vae

    def export(self, out_dir) -> dict:
        from .export import export_robust_vae

        acc = self.accelerator
        with averaged_weights(self.ema):
            paths = export_robust_vae(self.robust_vae(), out_dir, self.cfg.run.export_dtype) \
                if acc.is_main_process else {}
        acc.wait_for_everyone()
        return paths
