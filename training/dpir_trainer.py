"""DPIR training: rectified-flow CFM on SD3 with the LQ branch and the dual prompt (dpir-reference §5).

One step, per image:

    HQ crop ──stock VAE (posterior sample)──────────────► z0
    HQ crop ──degrade──► LQ ──resize back──► robust VAE (mode) ──► z_lq ──control_conv──► LQ features
    LQ crop + LQ global view ──CLIP ×2 (models/dual_prompt.py)──► 77 visual tokens + pooled
    caption (+ restoration prompt) ──T5 (or the cache)──► 256 T5 tokens
    dropout: visual and T5 prompts zeroed independently (p = 0.464 each)
    σ = sigmoid(N(0, 1)); x_t = (1 - σ) z0 + σ ε; loss = ‖v(x_t, 1000σ) - (ε - z0)‖²

The transformer is diffusers' ``SD3Transformer2DModel`` with the LQ branch
added after joint block 0 by ``models/restore.LQHook`` — the same code the
nodes' reference and the validation images use.
"""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..models.checkpoints import load_lq_branch, load_transformer, load_vae
from ..models.dual_prompt import (GLOBAL_OVERLAP, GLOBAL_TILE, T5_TOKENS, global_summary, summary_tokens,
                                  visual_tokens)
from ..models.lq_condition import LQCondition
from ..models.restore import LQHook
from .common import OptimConfig, RunConfig, averaged_weights, fill_dataclass
from .data import DataConfig, step_seed
from .degradation import Degrader, config_from_dict, restoration_prompt
from .loop import TrainerBase

log = logging.getLogger("dpir.training")

DEFAULT_LORA_TARGETS = ("to_q", "to_k", "to_v", "to_out.0", "add_q_proj", "add_k_proj", "add_v_proj", "to_add_out")


@dataclasses.dataclass
class ModelPaths:
    transformer: str = ""              # DPIR transformer, or a plain SD3-medium transformer (fresh LQ branch)
    lq_branch: str | None = None       # separate control_conv file (wins over one inside the transformer)
    lq_branch_widths: tuple = (256, 512)  # inner widths of a fresh LQ branch (the release's)
    stock_vae: str = ""                # SD3's VAE: encodes the HQ target
    robust_vae: str = ""               # the robust VAE: encodes the LQ (and decodes validation images)
    clip_local: str = ""               # visual encoder 1 (HF CLIP vision folder; ViT-B/32 geometry in the release)
    clip_global: str = ""              # visual encoder 2 (HF CLIP vision folder; bigG/14 geometry)
    t5: str | None = None              # HF T5 encoder folder with its tokenizer
    t5_cache: str | None = None        # folder of precomputed caption embeddings (train.py cache-t5)


@dataclasses.dataclass
class LoraConfig:
    rank: int = 64
    alpha: float = 64.0
    dropout: float = 0.0
    targets: tuple = DEFAULT_LORA_TARGETS


@dataclasses.dataclass
class ValidationConfig:
    every: int = 0                     # steps between validation images (0: never)
    folder: str | None = None          # HQ images to degrade and restore (default: the first training images)
    count: int = 2
    size: int = 0                      # square centre crop (0: data.crop_size)
    steps: int = 28
    seed: int = 1234
    caption: str = ""


@dataclasses.dataclass
class DPIRTrainConfig:
    models: ModelPaths = dataclasses.field(default_factory=ModelPaths)
    data: DataConfig = dataclasses.field(default_factory=DataConfig)
    degradation: dict = dataclasses.field(default_factory=dict)
    run: RunConfig = dataclasses.field(default_factory=RunConfig)
    optim: OptimConfig = dataclasses.field(default_factory=OptimConfig)
    trainable: str = "full"            # full (official: LQ branch + whole DiT) | lora | attention
    lora: LoraConfig = dataclasses.field(default_factory=LoraConfig)
    caption_dropout_visual: float = 0.464
    caption_dropout_text: float = 0.464
    logit_mean: float = 0.0
    logit_std: float = 1.0
    hq_posterior: str = "sample"       # the release samples the HQ posterior
    lq_posterior: str = "mode"         # the nodes encode the LQ with the mode
    global_tile: int = GLOBAL_TILE
    global_overlap: int = GLOBAL_OVERLAP
    global_degrade: bool = True        # the global view is degraded like its crop (the visual prompt sees LQ)
    restoration_prompts: bool = False  # SPIRE-style: append the drawn degradation to the T5 prompt
    restoration_prompt_prob: float = 1.0
    gradient_checkpointing: bool = False
    ema_decay: float = 0.0
    frozen_dtype: str = "auto"         # dtype of the frozen VAEs/CLIPs/T5 (and frozen DiT weights): auto|fp32|bf16|fp16
    validation: ValidationConfig = dataclasses.field(default_factory=ValidationConfig)


def dpir_config_from_dict(d: dict) -> DPIRTrainConfig:
    cfg = fill_dataclass(DPIRTrainConfig, d)
    m = cfg.models
    for key in ("transformer", "stock_vae", "robust_vae", "clip_local", "clip_global"):
        if not getattr(m, key):
            raise ValueError(f"models.{key} is required")
    if cfg.trainable not in ("full", "lora", "attention"):
        raise ValueError(f"trainable must be full, lora or attention; got {cfg.trainable!r}")
    if cfg.restoration_prompts and not m.t5:
        raise ValueError("restoration_prompts need the T5 encoder (models.t5): the prompts change every step "
                         "and cannot come from the caption cache")
    return cfg


class DPIRDenoiser(nn.Module):
    """SD3 transformer + LQ branch: one module for DDP/FSDP/DeepSpeed, forward = the velocity prediction."""

    def __init__(self, transformer, lq_branch: LQCondition):
        super().__init__()
        self.transformer = transformer
        self.lq_branch = lq_branch
        self.hook = LQHook(transformer)

    def forward(self, x_t, timestep, context, pooled, z_lq, strength: float = 1.0):
        # the features stay set after the call: gradient checkpointing re-runs block 0 (and this hook) in backward
        self.hook.features, self.hook.strength = self.lq_branch.features(z_lq), strength
        return self.transformer(hidden_states=x_t, encoder_hidden_states=context, pooled_projections=pooled,
                                timestep=timestep, return_dict=False)[0]

    def release(self):
        self.hook.features = None


def _groups_by_shape(images) -> list[list[int]]:
    groups: dict[tuple, list[int]] = {}
    for i, im in enumerate(images):
        groups.setdefault(tuple(im.shape), []).append(i)
    return list(groups.values())


def caption_key(caption: str) -> str:
    return hashlib.sha256(caption.encode("utf-8")).hexdigest()[:32]


def _dtype_for(name: str, mixed: str) -> torch.dtype:
    if name == "auto":
        name = {"bf16": "bf16", "fp16": "fp16"}.get(mixed, "fp32")
    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[name]


def build_transformer(models: ModelPaths):
    from diffusers import SD3Transformer2DModel

    ckpt = load_transformer(models.transformer, models.lq_branch)
    transformer = SD3Transformer2DModel.from_config(ckpt.config)
    transformer.load_state_dict(ckpt.state_dict)
    if ckpt.lq_state_dict:
        branch = LQCondition.from_state_dict(ckpt.lq_state_dict, ckpt.source)
    else:
        hidden = ckpt.config["num_attention_heads"] * ckpt.config["attention_head_dim"]
        branch = LQCondition(ckpt.config["in_channels"], tuple(models.lq_branch_widths), hidden)
        log.info("%s has no LQ branch: training a fresh control_conv (%s)", ckpt.source, models.lq_branch_widths)
    return transformer, branch


def build_vae(path):
    from diffusers import AutoencoderKL

    ckpt = load_vae(path)
    vae = AutoencoderKL.from_config(ckpt.config)
    vae.load_state_dict(ckpt.state_dict, strict=ckpt.has_decoder)
    return vae


class TextPrompts:
    """T5 embeddings of captions: from the encoder, the cache, or zeros when neither is given."""

    def __init__(self, models: ModelPaths, width: int, device, dtype):
        from ..models.text_prompt import encode_text, load_t5_embedding

        self.encode_text, self.load = encode_text, load_t5_embedding
        self.width, self.device = width, device
        self.memo: dict[str, torch.Tensor] = {}
        self.tokenizer = self.t5 = None
        self.cache = Path(models.t5_cache) if models.t5_cache else None
        if models.t5:
            from transformers import AutoTokenizer, T5EncoderModel

            self.tokenizer = AutoTokenizer.from_pretrained(models.t5)
            self.t5 = T5EncoderModel.from_pretrained(models.t5).to(device, dtype).eval().requires_grad_(False)
        elif self.cache is None:
            warnings.warn("no T5 encoder and no T5 cache: the T5 half of the prompt is always zeros")

    def __call__(self, captions: list[str]) -> torch.Tensor:
        out = []
        for c in captions:
            if c not in self.memo:
                if self.t5 is not None:
                    emb = self.encode_text(self.tokenizer, self.t5, [c]).float().cpu()
                elif self.cache is not None:
                    path = self.cache / f"{caption_key(c)}.safetensors"
                    if not path.is_file():
                        raise FileNotFoundError(f"caption {c[:60]!r} is not in the T5 cache '{self.cache}'; "
                                                "rebuild it with `train.py cache-t5` for these folders")
                    emb = self.load(path)
                else:
                    emb = torch.zeros(1, T5_TOKENS, self.width)
                if len(self.memo) < 100_000:
                    self.memo[c] = emb
            else:
                emb = self.memo[c]
            out.append(emb)
        return torch.cat(out).to(self.device)


class DPIRTrainer(TrainerBase):
    name = "dpir"

    def build(self, accelerator):
        cfg, dev = self.cfg, accelerator.device
        frozen = _dtype_for(cfg.frozen_dtype, accelerator.mixed_precision)
        self.degrader = Degrader(config_from_dict(cfg.degradation))
        transformer, branch = build_transformer(cfg.models)
        self.stock_vae = build_vae(cfg.models.stock_vae).to(dev, frozen).eval().requires_grad_(False)
        self.robust_vae = build_vae(cfg.models.robust_vae).to(dev, frozen).eval().requires_grad_(False)
        from ..models.visual_encoders import load_hf_vision_encoder

        self.encoder1 = load_hf_vision_encoder(cfg.models.clip_local)
        self.encoder2 = load_hf_vision_encoder(cfg.models.clip_global)
        for enc in (self.encoder1, self.encoder2):
            enc.model.to(dev, frozen).requires_grad_(False)
        self.context_width = transformer.config.joint_attention_dim
        self.text = TextPrompts(cfg.models, self.context_width, dev, frozen)

        transformer.requires_grad_(cfg.trainable == "full")
        if cfg.trainable == "attention":
            for name, p in transformer.named_parameters():
                if ".attn." in name or ".attn2." in name:
                    p.requires_grad_(True)
        elif cfg.trainable == "lora":
            try:
                from peft import LoraConfig as PeftLora
            except ImportError:
                raise RuntimeError("trainable: lora needs peft (`pip install -r requirements-training.txt`)") from None
            transformer.add_adapter(PeftLora(r=cfg.lora.rank, lora_alpha=cfg.lora.alpha, lora_dropout=cfg.lora.dropout,
                                             target_modules=list(cfg.lora.targets), init_lora_weights="gaussian"))
        if cfg.trainable != "full" and frozen != torch.float32:
            for p in transformer.parameters():  # frozen DiT weights in the low precision, trained ones in fp32
                if not p.requires_grad:
                    p.data = p.data.to(frozen)
        if cfg.gradient_checkpointing:
            transformer.enable_gradient_checkpointing()
        branch.requires_grad_(True)
        self._validation_batch = None
        return DPIRDenoiser(transformer, branch)

    # ---- pieces of a step
    @torch.no_grad()
    def encode(self, vae, images, posterior, generator=None):
        cfg = vae.config
        p = next(vae.parameters())
        dist = vae.encode((images * 2 - 1).to(p.dtype)).latent_dist
        z = dist.mode() if posterior == "mode" else dist.sample(generator)
        return ((z - cfg.shift_factor) * cfg.scaling_factor).float()

    @torch.no_grad()
    def visual(self, local_lq, global_lq):
        """Visual tokens and pooled vectors; global views of one size share one encoder batch."""
        cfg = self.cfg
        hidden1, pooled = summary_tokens(local_lq, self.encoder1, self.encoder2)
        hidden1, pooled = hidden1.float(), pooled.float()
        global_tokens = [None] * len(global_lq)
        for idx in _groups_by_shape(global_lq):
            gt = global_summary(torch.stack([global_lq[i] for i in idx]), self.encoder1, self.encoder2,
                                cfg.global_tile, cfg.global_overlap).float()
            for j, i in enumerate(idx):
                global_tokens[i] = gt[j:j + 1]
        tokens = [visual_tokens(hidden1[i:i + 1], global_tokens[i], self.context_width) for i in range(len(global_lq))]
        return torch.cat(tokens), pooled

    def conditions(self, batch, seed_of):
        """(z0, z_lq, context, pooled, degradation params) of a batch, dropout applied."""
        cfg, dev = self.cfg, self.accelerator.device
        hq = batch["hq"].to(dev)
        deg = self.degrader(hq, seed=seed_of("degrade"))
        s = self.degrader.cfg.scale
        global_lq = [None] * hq.shape[0]
        views = []
        for i, g in enumerate(batch["global"]):
            if g.shape == batch["hq"][i].shape and torch.equal(g, batch["hq"][i]):
                global_lq[i] = deg.lq_up[i]  # no context beyond the crop
            else:
                views.append((i, g[:, : g.shape[1] // s * s, : g.shape[2] // s * s]))
        for idx in _groups_by_shape([v for _, v in views]):
            rows = [views[j][0] for j in idx]
            g = torch.stack([views[j][1] for j in idx]).to(dev)
            if cfg.global_degrade:  # the same draw as the sample's crop (resizes are shared by the batch)
                g = self.degrader(g, params=[deg.params[i] for i in rows]).lq_up
            for k, i in enumerate(rows):
                global_lq[i] = g[k]
        gen = torch.Generator(dev).manual_seed(seed_of("hq_posterior"))
        z0 = self.encode(self.stock_vae, hq, cfg.hq_posterior, gen)
        z_lq = self.encode(self.robust_vae, deg.lq_up, cfg.lq_posterior)
        visual, pooled = self.visual(deg.lq_up, global_lq)
        captions = list(batch["caption"])
        if cfg.restoration_prompts:
            g = torch.Generator().manual_seed(seed_of("restoration_prompt"))
            for i, p in enumerate(deg.params):
                if torch.rand((), generator=g) < cfg.restoration_prompt_prob:
                    r = restoration_prompt(p, s)
                    captions[i] = f"{captions[i]}, {r}" if captions[i] else r
        text = self.text(captions).float()
        g = torch.Generator().manual_seed(seed_of("dropout"))
        b = hq.shape[0]
        keep_v = (torch.rand(b, generator=g) >= cfg.caption_dropout_visual).float().to(dev)
        keep_t = (torch.rand(b, generator=g) >= cfg.caption_dropout_text).float().to(dev)
        visual = visual * keep_v.view(b, 1, 1)
        pooled = pooled * keep_v.view(b, 1)
        text = text * keep_t.view(b, 1, 1)
        context = torch.cat([visual, text], dim=1)
        return z0, z_lq, context, pooled, deg

    def compute(self, batch, step, micro):
        cfg, acc = self.cfg, self.accelerator
        self.note_batch(batch)
        micro_step = step * cfg.run.grad_accum + micro
        seed_of = lambda what: step_seed(cfg.run.seed, micro_step, acc.process_index, what)  # noqa: E731
        z0, z_lq, context, pooled, _ = self.conditions(batch, seed_of)
        g = torch.Generator(acc.device).manual_seed(seed_of("noise"))
        noise = torch.randn(z0.shape, generator=g, device=acc.device)
        u = torch.randn(z0.shape[0], generator=g, device=acc.device) * cfg.logit_std + cfg.logit_mean
        sigma = torch.sigmoid(u)
        s = sigma.view(-1, 1, 1, 1)
        x_t = (1 - s) * z0 + s * noise
        target = noise - z0
        pred = self.model(x_t, sigma * 1000, context, pooled, z_lq)
        loss = F.mse_loss(pred.float(), target)
        return loss, {"loss": float(loss.detach())}

    # ---- validation
    def after_step(self, step):
        v = self.cfg.validation
        if v.every and step % v.every == 0 and self.accelerator.is_main_process:
            self.validate(step)

    def validation_images(self):
        v, c = self.cfg.validation, self.cfg.data
        size = v.size or c.crop_size
        if v.folder:
            from .data import DataConfig, ImageFolders

            ds = ImageFolders(DataConfig(folders=[v.folder], crop_size=size, resolutions=("native",),
                                         random_flip=False, global_context=False))
        else:
            ds = self.dataset
        hq = []
        for i in range(min(v.count, len(ds))):
            hq.append(ds[(i, v.seed + i)].local)
        hq = torch.stack(hq)
        hq = F.interpolate(hq, size=(size, size), mode="bicubic", antialias=True).clamp(0, 1) \
            if hq.shape[-1] != size else hq
        return hq[:, :, : size // 16 * 16, : size // 16 * 16]

    @torch.no_grad()
    def validate(self, step) -> Path:
        """Degrade the validation images (fixed seed), restore them with models/restore.DPIRPipeline, save a grid."""
        from PIL import Image

        from ..models.restore import DPIRPipeline

        acc, v = self.accelerator, self.cfg.validation
        den = acc.unwrap_model(self.model)
        den.release()
        if self._validation_batch is None:
            hq = self.validation_images().to(acc.device)
            self._validation_batch = (hq, self.degrader(hq, seed=v.seed).lq_up)
        hq, lq = self._validation_batch
        was_training = den.training
        den.eval()
        pipe = DPIRPipeline(den.transformer, den.lq_branch, self.robust_vae, self.encoder1, self.encoder2)
        try:
            with averaged_weights(self.ema), acc.autocast():
                t5 = self.text([v.caption]).float()
                out = pipe.restore(lq, t5, steps=v.steps, seed=v.seed)
        finally:
            pipe.hook.remove()
            den.train(was_training)
        rows = torch.cat([lq, out.float().to(lq.device), hq], dim=-1)          # LQ | restored | HQ
        grid = torch.cat(list(rows), dim=-2).clamp(0, 1)
        path = Path(self.cfg.run.output_dir) / "validation" / f"step-{step:07d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        arr = (grid.permute(1, 2, 0).cpu().float().numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).save(path)
        log.info("validation images: %s", path)
        return path

    # ---- export
    def export(self, out_dir) -> dict:
        from .export import export_transformer

        acc = self.accelerator
        den = acc.unwrap_model(self.model)
        with averaged_weights(self.ema):
            paths = export_transformer(den.transformer, den.lq_branch, out_dir, self.cfg.run.export_dtype) \
                if acc.is_main_process else {}
        acc.wait_for_everyone()
        return paths


def build_t5_cache(t5_folder, captions, out_dir, device="cpu", dtype=torch.float32) -> int:
    """Encode every distinct caption once; files are T5 embedding files the nodes can load too."""
    from transformers import AutoTokenizer, T5EncoderModel

    from ..models.text_prompt import encode_text
    from safetensors.torch import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = AutoTokenizer.from_pretrained(t5_folder)
    t5 = T5EncoderModel.from_pretrained(t5_folder).to(device, dtype).eval()
    n = 0
    for caption in sorted(set(captions) | {""}):
        path = out / f"{caption_key(caption)}.safetensors"
        if path.exists():
            continue
        emb = encode_text(tok, t5, [caption]).float().cpu().contiguous()
        save_file({"t5_embedding": emb}, str(path), metadata={"caption": caption[:2000]})
        n += 1
    return n
