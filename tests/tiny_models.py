"""Tiny, deterministic stand-ins for every file a DPIR user may point the pack at.

No real weights can be downloaded in the test environment, so this module builds
miniature models with random (seeded, non-degenerate) weights and writes them in
exactly the on-disk formats that real users have:

* the DPIR transformer (SD3 MMDiT + the LQ branch ``control_conv``) as the
  authors' ``save_pretrained`` folder (single or sharded), as one
  ``.safetensors`` in diffusers names or in SAI/ComfyUI MMDiT names (optionally
  ``model.diffusion_model.``-prefixed), as the consolidated ``.pth`` state dict
  (optionally ``module.``-prefixed), and the LQ branch alone;
* the stock and the robust ("denoise") SD3 VAE (same decoder, other encoder) as
  a diffusers folder, single files in diffusers or LDM names, encoder-only files;
* the two CLIP vision towers (ViT-B/32 and bigG/14 geometry) as HF folders, HF
  single files and OpenAI/open_clip ``visual.*`` files;
* a tiny T5 encoder with a locally built T5 tokenizer, a single-file T5 and a
  precomputed T5 embedding;
* broken / foreign files (truncated, lying header, SDXL UNet, mismatched LQ
  branch width) and a malicious pickle.

This module is deliberately independent of the pack (``models/``) and of
ComfyUI: it only uses torch, diffusers, transformers, safetensors, tokenizers
and sentencepiece, so it can serve as an oracle for the code under test.

Every model is generated once per ``TinySpec`` (the seed is part of the spec)
and every layout is written from the same tensors, so all layouts hold
identical values.  Canonical values are rounded to float16-representable
numbers, so fp16 and fp32 files of the same model hold identical values too.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import io
import json
import os
import re
import struct
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import torch
from safetensors.torch import load_file, save_file
from torch import nn

__all__ = [
    "TinySpec",
    "ClipSpec",
    "CONTROL_CONV_KEYS",
    "DIFFUSERS_029_VERSION",
    # models / state dicts
    "transformer_state_dict",
    "control_conv_state_dict",
    "build_transformer",
    "build_control_conv",
    "mmdit_state_dict",
    "transformer_config",
    "vae_state_dict",
    "vae_config",
    "build_vae",
    "clip_vision_state_dict",
    "clip_vision_config",
    "build_clip_vision",
    "t5_state_dict",
    "t5_config",
    "build_t5",
    "build_t5_tokenizer",
    "t5_embedding",
    # key conversions (inverse of the diffusers / ComfyUI converters)
    "diffusers_to_mmdit",
    "diffusers_vae_to_ldm",
    "hf_clip_vision_to_openai",
    # writers
    "write_transformer_folder",
    "write_transformer_file",
    "write_control_conv_file",
    "write_transformer_pth",
    "write_malicious_pth",
    "write_vae_folder",
    "write_vae_file",
    "write_sai_checkpoint",
    "write_clip_vision_folder",
    "write_clip_vision_file",
    "write_t5_folder",
    "write_t5_file",
    "write_t5_embedding",
    "write_truncated_safetensors",
    "write_lying_header_safetensors",
    "write_sdxl_unet_file",
    "sd15_unet_state_dict",
    "write_sd15_unet_file",
    "write_sd15_vae_file",
    "write_clip_l_text_file",
    "write_mismatched_control_file",
    "write_bad_files",
    "build_all",
]

# The authors trained and saved with diffusers 0.29.2 (their requirements.txt).
DIFFUSERS_029_VERSION = "0.29.2"
# What the HF configs written here claim (real user folders come from 4.x).
TRANSFORMERS_4_VERSION = "4.44.2"
CONTROL_CONV_KEYS = tuple(f"control_conv.{i}.{p}" for i in range(6) for p in ("weight", "bias"))
T5_MAX_LENGTH = 256

# ---------------------------------------------------------------------------
# Spec
# ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ClipSpec:
    """Geometry of one CLIP vision tower (``CLIPVisionModelWithProjection``)."""

    image_size: int = 224
    patch_size: int = 32
    hidden_size: int = 32
    num_layers: int = 2
    num_heads: int = 2
    intermediate_size: int = 64
    projection_dim: int = 32
    hidden_act: str = "quick_gelu"
    layer_norm_eps: float = 1e-5

    @property
    def num_tokens(self) -> int:
        """Tokens of ``last_hidden_state``: patches + class token."""
        return (self.image_size // self.patch_size) ** 2 + 1


@dataclass(frozen=True)
class TinySpec:
    """All dimensions of the tiny model set (hashable; the seed is part of it).

    ComfyUI infers an MMDiT's depth as ``hidden // 64`` and its head count as
    the depth, so ``num_attention_heads * attention_head_dim`` must equal
    ``64 * num_layers`` (checked).
    """

    seed: int = 0
    # --- SD3 transformer (diffusers SD3Transformer2DModel) ---
    sample_size: int = 128
    patch_size: int = 2
    in_channels: int = 16
    out_channels: int = 16
    num_layers: int = 2
    attention_head_dim: int = 64
    num_attention_heads: int = 2
    joint_attention_dim: int = 64  # = T5 width (context features)
    caption_projection_dim: int = 128  # = hidden
    pooled_projection_dim: int = 64  # = clip1 hidden + clip2 projection
    pos_embed_max_size: int = 96
    # --- LQ branch control_conv (official layout, tiny widths) ---
    control_c1: int = 16
    control_c2: int = 32
    control_groups: tuple[int, int, int] = (4, 8, 8)
    # --- VAE (SD3-shaped AutoencoderKL) ---
    vae_latent_channels: int = 16
    vae_shift_factor: float = 0.0609
    vae_scaling_factor: float = 1.5305
    vae_block_out_channels: tuple[int, ...] = (32, 64, 64, 64)
    vae_layers_per_block: int = 1
    vae_norm_num_groups: int = 32
    vae_full_block_out_channels: tuple[int, ...] = (128, 256, 512, 512)
    vae_full_layers_per_block: int = 2
    # --- CLIP vision towers ---
    clip1: ClipSpec = ClipSpec()  # ViT-B/32 geometry: 50 tokens
    clip2: ClipSpec = ClipSpec(patch_size=14, hidden_act="gelu")  # bigG/14 geometry: 257 tokens
    # --- T5 encoder ---
    t5_d_model: int = 64
    t5_num_layers: int = 2
    t5_num_heads: int = 4
    t5_d_kv: int = 16
    t5_d_ff: int = 128
    t5_vocab_size: int = 32128
    t5_feed_forward_proj: str = "gated-gelu"
    t5_tokenizer_vocab_size: int = 256
    # --- random init ---
    init_std_min: float = 0.02
    init_std_max: float = 0.1
    norm_noise: float = 0.05
    bias_std: float = 0.02
    pos_embed_noise: float = 0.02

    def __post_init__(self):
        if self.hidden != 64 * self.num_layers:
            raise ValueError(
                f"hidden = heads*head_dim = {self.hidden} must be 64*num_layers = {64 * self.num_layers} "
                "(ComfyUI infers depth = hidden/64)"
            )
        if self.caption_projection_dim != self.hidden:
            raise ValueError("caption_projection_dim must equal the hidden size for SD3")
        if self.pooled_projection_dim != self.clip1.hidden_size + self.clip2.projection_dim:
            raise ValueError("pooled_projection_dim must be clip1.hidden_size + clip2.projection_dim")
        if self.joint_attention_dim != self.t5_d_model:
            raise ValueError("joint_attention_dim must equal the T5 width")

    @property
    def hidden(self) -> int:
        return self.num_attention_heads * self.attention_head_dim

    @property
    def context_dim(self) -> int:
        return self.joint_attention_dim

    @property
    def control_widths(self) -> tuple[int, int, int]:
        return (self.control_c1, self.control_c2, self.hidden)

    def clip(self, which: int) -> ClipSpec:
        if which not in (1, 2):
            raise ValueError("which must be 1 or 2")
        return self.clip1 if which == 1 else self.clip2

    def digest(self) -> str:
        """Stable short hash of every field (cache keys)."""
        text = json.dumps(dataclasses.asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:16]


# ---------------------------------------------------------------------------
# Seeded, non-degenerate initialisation
# ---------------------------------------------------------------------------


class _keep_global_rng:
    """Model constructors draw from the global RNG (their default init); the
    factory must not disturb a test's seeded global RNG."""

    def __enter__(self):
        self._state = torch.random.get_rng_state()

    def __exit__(self, *exc):
        torch.random.set_rng_state(self._state)
        return False


def _component_seed(spec: TinySpec, component: str) -> int:
    h = hashlib.sha256(f"{spec.seed}:{component}".encode()).digest()
    return int.from_bytes(h[:7], "little")


def _is_norm(module: nn.Module) -> bool:
    if isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        return True
    return "norm" in type(module).__name__.lower() and not list(module.children())


def _random_state_dict(
    model: nn.Module,
    spec: TinySpec,
    component: str,
    keep: Callable[[str], bool] = lambda k: True,
    buffer_noise: dict[str, float] | None = None,
) -> dict[str, torch.Tensor]:
    """A full state dict for ``model`` with fresh seeded values.

    Weights (>= 2-D, embeddings included) ~ N(0, clamp(1/sqrt(fan_in))), biases and
    other 1-D parameters ~ N(0, bias_std), norm weights ~ 1 + N(0, norm_noise).
    Persistent buffers keep their values (plus optional noise). ``model`` may live
    on the meta device (no buffers then). Values are rounded to fp16-representable.
    """
    gen = torch.Generator().manual_seed(_component_seed(spec, component))
    params = dict(model.named_parameters(remove_duplicate=False))
    seen: dict[int, torch.Tensor] = {}
    out: dict[str, torch.Tensor] = {}
    for key, ref in model.state_dict(keep_vars=True).items():
        if not keep(key):
            continue
        if key in params:
            p = params[key]
            if id(p) in seen:  # tied weights (T5 shared / embed_tokens)
                out[key] = seen[id(p)]
                continue
            owner = model.get_submodule(key.rsplit(".", 1)[0]) if "." in key else model
            name = key.rsplit(".", 1)[-1]
            shape = tuple(p.shape)
            val = torch.randn(shape, generator=gen)
            if _is_norm(owner):
                if name == "weight":
                    val.mul_(spec.norm_noise).add_(1.0)
                else:
                    val.mul_(spec.bias_std)
            elif p.ndim >= 2:
                fan_in = 1
                for d in shape[1:]:
                    fan_in *= d
                val.mul_(min(max(fan_in**-0.5, spec.init_std_min), spec.init_std_max))
            elif p.ndim == 0:  # CLIPModel.logit_scale: its real init ln(1/0.07) + noise
                val.mul_(spec.bias_std).add_(2.6592 if name == "logit_scale" else 0.0)
            elif name == "bias":
                val.mul_(spec.bias_std)
            else:  # other 1-D parameters, e.g. CLIP class_embedding
                val.mul_(min(max(shape[0] ** -0.5, spec.init_std_min), spec.init_std_max))
            val.copy_(val.half())  # fp16-representable: fp16 files hold the same values
            seen[id(p)] = val
            out[key] = val
        else:  # persistent buffer
            if ref.is_meta:
                raise RuntimeError(f"buffer {key} on the meta device")
            val = ref.detach().float().clone()
            if buffer_noise and key in buffer_noise:
                val.add_(torch.randn(val.shape, generator=gen).mul_(buffer_noise[key]))
            val.copy_(val.half())
            out[key] = val
    return out


def _clone(sd: dict[str, torch.Tensor], copy: bool = True) -> dict[str, torch.Tensor]:
    """A new dict; with ``copy`` also new tensors. Internal writers pass
    ``copy=False`` and share the cached tensors (allocation is slow on some
    sandboxed CPUs); public getters copy, because callers (e.g. ComfyUI's
    ``convert_diffusers_mmdit``) may write into the tensors they are given."""
    return {k: v.clone() for k, v in sd.items()} if copy else dict(sd)


def _cast(sd: dict[str, torch.Tensor], dtype: torch.dtype | None) -> dict[str, torch.Tensor]:
    if dtype is None:
        return {k: v.contiguous() for k, v in sd.items()}
    return {k: v.to(dtype).contiguous() for k, v in sd.items()}


def _save_safetensors(sd: dict[str, torch.Tensor], path: Path, metadata: dict[str, str] | None = None) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().contiguous() for k, v in sd.items()}, str(path), metadata=metadata)
    return path


def _write_json(obj, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    return path


def _prefixed(sd: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in sd.items()} if prefix else dict(sd)


# ---------------------------------------------------------------------------
# Transformer (SD3 MMDiT) + LQ branch
# ---------------------------------------------------------------------------


def transformer_config(spec: TinySpec = TinySpec()) -> dict:
    """config.json as the authors' class wrote it with diffusers 0.29.2.

    Their class is also named ``SD3Transformer2DModel`` and registers exactly
    these 11 arguments (no ``dual_attention_layers`` / ``qk_norm``).
    """
    return {
        "_class_name": "SD3Transformer2DModel",
        "_diffusers_version": DIFFUSERS_029_VERSION,
        "attention_head_dim": spec.attention_head_dim,
        "caption_projection_dim": spec.caption_projection_dim,
        "in_channels": spec.in_channels,
        "joint_attention_dim": spec.joint_attention_dim,
        "num_attention_heads": spec.num_attention_heads,
        "num_layers": spec.num_layers,
        "out_channels": spec.out_channels,
        "patch_size": spec.patch_size,
        "pooled_projection_dim": spec.pooled_projection_dim,
        "pos_embed_max_size": spec.pos_embed_max_size,
        "sample_size": spec.sample_size,
    }


def _new_sd3(spec: TinySpec):
    from diffusers import SD3Transformer2DModel

    cfg = {k: v for k, v in transformer_config(spec).items() if not k.startswith("_")}
    return SD3Transformer2DModel(**cfg)


def _new_control_conv(spec: TinySpec, out_channels: int | None = None) -> nn.Sequential:
    c1, c2, hidden = spec.control_widths
    hidden = out_channels or hidden
    g1, g2, g3 = spec.control_groups
    return nn.Sequential(
        nn.Conv2d(spec.in_channels, c1, 3, stride=1, padding=1),
        nn.GroupNorm(g1, c1),
        nn.Conv2d(c1, c2, 3, stride=2, padding=1),
        nn.GroupNorm(g2, c2),
        nn.Conv2d(c2, hidden, 3, stride=1, padding=1),
        nn.GroupNorm(g3, hidden),
    )


@functools.lru_cache(maxsize=None)
def _transformer_sd(spec: TinySpec) -> dict[str, torch.Tensor]:
    with _keep_global_rng():
        model = _new_sd3(spec)
    return _random_state_dict(
        model, spec, "transformer", buffer_noise={"pos_embed.pos_embed": spec.pos_embed_noise}
    )


@functools.lru_cache(maxsize=None)
def _control_sd(spec: TinySpec, out_channels: int | None = None) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        conv = _new_control_conv(spec, out_channels)
    component = "control_conv" if out_channels in (None, spec.hidden) else f"control_conv_{out_channels}"
    return _random_state_dict(conv, spec, component)


def control_conv_state_dict(
    spec: TinySpec = TinySpec(), prefix: str = "control_conv.", out_channels: int | None = None, *, copy: bool = True
) -> dict[str, torch.Tensor]:
    """The LQ branch weights, keys ``{prefix}{0..5}.{weight,bias}``."""
    return _prefixed(_clone(_control_sd(spec, out_channels), copy), prefix)


def transformer_state_dict(
    spec: TinySpec = TinySpec(), with_control: bool = True, *, copy: bool = True
) -> dict[str, torch.Tensor]:
    """The DPIR transformer in diffusers names (+ ``control_conv.*`` when asked)."""
    sd = _clone(_transformer_sd(spec), copy)
    if with_control:
        sd.update(control_conv_state_dict(spec, copy=copy))
    return sd


def mmdit_state_dict(
    spec: TinySpec = TinySpec(), with_control: bool = True, prefix: str = "", *, copy: bool = True
) -> dict[str, torch.Tensor]:
    """The DPIR transformer in SAI/ComfyUI MMDiT names (``control_conv.*`` kept
    as is), optionally prefixed (e.g. ``"model.diffusion_model."``)."""
    sd = _clone(_mmdit_sd(spec), copy)
    if with_control:
        sd.update(control_conv_state_dict(spec, copy=copy))
    return _prefixed(sd, prefix)


def build_transformer(spec: TinySpec = TinySpec(), dtype: torch.dtype = torch.float32):
    """Stock diffusers ``SD3Transformer2DModel`` holding the tiny weights (eval mode)."""
    with _keep_global_rng():
        model = _new_sd3(spec)
    model.load_state_dict(transformer_state_dict(spec, with_control=False, copy=False), strict=True)
    return model.to(dtype).eval()


def build_control_conv(
    spec: TinySpec = TinySpec(), dtype: torch.dtype = torch.float32, out_channels: int | None = None
) -> nn.Sequential:
    """The LQ branch as an ``nn.Sequential`` (keys ``0..5``), official layout."""
    with _keep_global_rng():
        conv = _new_control_conv(spec, out_channels)
    conv.load_state_dict(
        control_conv_state_dict(spec, prefix="", out_channels=out_channels, copy=False), strict=True
    )
    return conv.to(dtype).eval()


def _swap_scale_shift(w: torch.Tensor) -> torch.Tensor:
    a, b = w.chunk(2, dim=0)
    return torch.cat([b, a], dim=0)


_BLOCK_RE = re.compile(r"^transformer_blocks\.(\d+)\.(.+)$")

_MMDIT_BASIC = {
    "pos_embed.pos_embed": "pos_embed",
    "pos_embed.proj.weight": "x_embedder.proj.weight",
    "pos_embed.proj.bias": "x_embedder.proj.bias",
    "time_text_embed.timestep_embedder.linear_1.weight": "t_embedder.mlp.0.weight",
    "time_text_embed.timestep_embedder.linear_1.bias": "t_embedder.mlp.0.bias",
    "time_text_embed.timestep_embedder.linear_2.weight": "t_embedder.mlp.2.weight",
    "time_text_embed.timestep_embedder.linear_2.bias": "t_embedder.mlp.2.bias",
    "time_text_embed.text_embedder.linear_1.weight": "y_embedder.mlp.0.weight",
    "time_text_embed.text_embedder.linear_1.bias": "y_embedder.mlp.0.bias",
    "time_text_embed.text_embedder.linear_2.weight": "y_embedder.mlp.2.weight",
    "time_text_embed.text_embedder.linear_2.bias": "y_embedder.mlp.2.bias",
    "context_embedder.weight": "context_embedder.weight",
    "context_embedder.bias": "context_embedder.bias",
    "proj_out.weight": "final_layer.linear.weight",
    "proj_out.bias": "final_layer.linear.bias",
}

_MMDIT_BLOCK = {
    "norm1.linear": "x_block.adaLN_modulation.1",
    "norm1_context.linear": "context_block.adaLN_modulation.1",
    "attn.to_out.0": "x_block.attn.proj",
    "attn.to_add_out": "context_block.attn.proj",
    "attn.norm_q": "x_block.attn.ln_q",
    "attn.norm_k": "x_block.attn.ln_k",
    "attn.norm_added_q": "context_block.attn.ln_q",
    "attn.norm_added_k": "context_block.attn.ln_k",
    "attn2.to_out.0": "x_block.attn2.proj",
    "attn2.norm_q": "x_block.attn2.ln_q",
    "attn2.norm_k": "x_block.attn2.ln_k",
    "ff.net.0.proj": "x_block.mlp.fc1",
    "ff.net.2": "x_block.mlp.fc2",
    "ff_context.net.0.proj": "context_block.mlp.fc1",
    "ff_context.net.2": "context_block.mlp.fc2",
}

_QKV = {
    "attn": (("to_q", "to_k", "to_v"), "x_block.attn.qkv"),
    "attn_ctx": (("add_q_proj", "add_k_proj", "add_v_proj"), "context_block.attn.qkv"),
    "attn2": (("to_q", "to_k", "to_v"), "x_block.attn2.qkv"),
}


def diffusers_to_mmdit(
    sd: dict[str, torch.Tensor], prefix: str = "", keep_unknown: Iterable[str] = ("control_conv.",)
) -> dict[str, torch.Tensor]:
    """diffusers SD3 transformer names -> SAI/ComfyUI MMDiT names.

    The exact inverse of ``diffusers.loaders.single_file_utils.
    convert_sd3_transformer_checkpoint_to_diffusers``: fused q/k/v, ``x_embedder``,
    ``t_embedder``, ``y_embedder``, ``final_layer`` (adaLN halves swapped back to
    shift, scale), the last block's pre-only ``context_block`` (adaLN swapped, no
    proj / mlp). Keys starting with one of ``keep_unknown`` pass through
    unchanged (with ``prefix``); any other unknown key raises ``KeyError``.
    """
    keep_unknown = tuple(keep_unknown)
    num_layers = 1 + max(int(m.group(1)) for k in sd if (m := _BLOCK_RE.match(k)))
    out: dict[str, torch.Tensor] = {}
    used: set[str] = set()
    for k, v in sd.items():
        if k in _MMDIT_BASIC:
            if k.startswith("norm_out"):
                continue
            out[_MMDIT_BASIC[k]] = v
            used.add(k)
    for end in ("weight", "bias"):
        k = f"norm_out.linear.{end}"
        out[f"final_layer.adaLN_modulation.1.{end}"] = _swap_scale_shift(sd[k])
        used.add(k)
    for i in range(num_layers):
        pre = f"transformer_blocks.{i}."
        last = i == num_layers - 1
        for attn, (names, target) in _QKV.items():
            module = "attn2" if attn == "attn2" else "attn"
            for end in ("weight", "bias"):
                keys = [f"{pre}{module}.{n}.{end}" for n in names]
                if not all(k in sd for k in keys):
                    if any(k in sd for k in keys):
                        raise KeyError(f"incomplete q/k/v set in block {i}: {keys}")
                    continue
                out[f"joint_blocks.{i}.{target}.{end}"] = torch.cat([sd[k] for k in keys], dim=0)
                used.update(keys)
        for d_name, m_name in _MMDIT_BLOCK.items():
            for end in ("weight", "bias"):
                k = f"{pre}{d_name}.{end}"
                if k not in sd:
                    continue
                v = sd[k]
                if last and d_name == "norm1_context.linear":
                    v = _swap_scale_shift(v)
                out[f"joint_blocks.{i}.{m_name}.{end}"] = v
                used.add(k)
    for k, v in sd.items():
        if k in used:
            continue
        if k.startswith(keep_unknown):
            out[k] = v
        else:
            raise KeyError(f"no MMDiT name for diffusers key {k!r}")
    return _prefixed(out, prefix)


@functools.lru_cache(maxsize=None)
def _mmdit_sd(spec: TinySpec) -> dict[str, torch.Tensor]:
    return diffusers_to_mmdit(transformer_state_dict(spec, with_control=False, copy=False))


def write_transformer_folder(
    folder: str | os.PathLike,
    spec: TinySpec = TinySpec(),
    sharded: bool = False,
    max_shard_size: int | str = 4_000_000,
    dtype: torch.dtype = torch.float32,
    with_control: bool = True,
) -> Path:
    """The authors' ``save_pretrained`` folder: config.json (0.29.2 style) +
    ``diffusion_pytorch_model.safetensors``, or shards
    ``diffusion_pytorch_model-0000X-of-0000N.safetensors`` +
    ``diffusion_pytorch_model.safetensors.index.json`` (same split and index
    format as diffusers' ``save_pretrained``)."""
    from huggingface_hub import split_torch_state_dict_into_shards

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(transformer_config(spec), folder / "config.json")
    sd = _cast(transformer_state_dict(spec, with_control=with_control, copy=False), dtype)
    if not sharded:
        _save_safetensors(sd, folder / "diffusion_pytorch_model.safetensors", {"format": "pt"})
        return folder
    split = split_torch_state_dict_into_shards(
        sd, max_shard_size=max_shard_size, filename_pattern="diffusion_pytorch_model{suffix}.safetensors"
    )
    if not split.is_sharded:
        raise ValueError("max_shard_size too large: the state dict fits in one shard")
    for filename, names in split.filename_to_tensors.items():
        _save_safetensors({n: sd[n] for n in names}, folder / filename, {"format": "pt"})
    index = {"metadata": dict(split.metadata), "weight_map": split.tensor_to_filename}
    _write_json(index, folder / "diffusion_pytorch_model.safetensors.index.json")
    return folder


def write_transformer_file(
    path: str | os.PathLike,
    spec: TinySpec = TinySpec(),
    naming: str = "diffusers",
    prefix: str = "",
    with_control: bool = True,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """One ``.safetensors`` holding the transformer.

    ``naming``: ``"diffusers"`` (``transformer_blocks.N.attn.to_q.weight``...) or
    ``"mmdit"`` (SAI / ComfyUI: ``joint_blocks.N.x_block.attn.qkv.weight``...).
    ``prefix`` e.g. ``"model.diffusion_model."`` as in SAI all-in-one files
    (applied to ``control_conv.*`` too when present).
    """
    if naming == "diffusers":
        sd = transformer_state_dict(spec, with_control=with_control, copy=False)
    elif naming == "mmdit":
        sd = mmdit_state_dict(spec, with_control=with_control, copy=False)
    else:
        raise ValueError("naming must be 'diffusers' or 'mmdit'")
    return _save_safetensors(_cast(_prefixed(sd, prefix), dtype), path)


def write_control_conv_file(
    path: str | os.PathLike, spec: TinySpec = TinySpec(), prefix: str = "control_conv.", dtype=torch.float32
) -> Path:
    """The LQ branch alone (only ``control_conv.*`` keys by default)."""
    return _save_safetensors(_cast(control_conv_state_dict(spec, prefix=prefix, copy=False), dtype), path)


def write_transformer_pth(
    path: str | os.PathLike,
    spec: TinySpec = TinySpec(),
    module_prefix: bool = False,
    dtype: torch.dtype = torch.float32,
    with_control: bool = True,
) -> Path:
    """The authors' consolidated ``.pth``: ``torch.save`` of the diffusers-named
    dict incl. ``control_conv``; keys ``module.``-prefixed when asked."""
    sd = _cast(transformer_state_dict(spec, with_control=with_control, copy=False), dtype)
    if module_prefix:
        sd = _prefixed(sd, "module.")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, str(path))
    return path


class _Payload:
    """Unpickling this runs ``exec`` (writes a marker file): a hostile checkpoint."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        code = f"open({self.marker!r}, 'w').write('pwned')"
        return (exec, (code,))


def write_malicious_pth(
    path: str | os.PathLike, marker: str | os.PathLike, spec: TinySpec = TinySpec()
) -> Path:
    """A ``.pth`` that looks like a transformer state dict but whose unpickling
    writes ``marker`` (via ``builtins.exec``). ``torch.load(weights_only=True)``
    must refuse it and the marker must never appear."""
    sd: dict[str, object] = dict(control_conv_state_dict(spec, copy=False))
    sd["__payload__"] = _Payload(str(Path(marker).resolve()))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(sd, str(path))
    return path


# ---------------------------------------------------------------------------
# VAE (SD3 AutoencoderKL): stock and robust
# ---------------------------------------------------------------------------


def vae_config(spec: TinySpec = TinySpec(), full: bool = False) -> dict:
    """config.json in the style of SD3's ``vae/config.json``."""
    boc = spec.vae_full_block_out_channels if full else spec.vae_block_out_channels
    lpb = spec.vae_full_layers_per_block if full else spec.vae_layers_per_block
    return {
        "_class_name": "AutoencoderKL",
        "_diffusers_version": DIFFUSERS_029_VERSION,
        "act_fn": "silu",
        "block_out_channels": list(boc),
        "down_block_types": ["DownEncoderBlock2D"] * len(boc),
        "force_upcast": True,
        "in_channels": 3,
        "latent_channels": spec.vae_latent_channels,
        "latents_mean": None,
        "latents_std": None,
        "layers_per_block": lpb,
        "norm_num_groups": spec.vae_norm_num_groups,
        "out_channels": 3,
        "sample_size": 1024,
        "scaling_factor": spec.vae_scaling_factor,
        "shift_factor": spec.vae_shift_factor,
        "up_block_types": ["UpDecoderBlock2D"] * len(boc),
        "use_post_quant_conv": False,
        "use_quant_conv": False,
    }


def _new_vae(spec: TinySpec, full: bool):
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in vae_config(spec, full).items() if not k.startswith("_")}
    cfg["block_out_channels"] = tuple(cfg["block_out_channels"])
    return AutoencoderKL(**cfg)


def _full_vae_cache_dir() -> Path:
    return Path(os.environ.get("DPIR_TINY_CACHE") or Path(tempfile.gettempdir()) / "dpir-tiny-models-cache")


@functools.lru_cache(maxsize=None)
def _vae_part_sd(spec: TinySpec, full: bool, part: str) -> dict[str, torch.Tensor]:
    """``part``: "stock" (encoder+decoder) or "robust_encoder" (encoder only).

    The full-layout VAE is held in float16 (its values are fp16-representable
    anyway) and cached on disk, so its ~84 M parameters are generated once."""
    cache = None
    if full:
        cache = _full_vae_cache_dir() / f"vae_full_{part}_{spec.digest()}_v1.safetensors"
        if cache.is_file():
            try:
                return load_file(str(cache))
            except Exception:
                pass
    with torch.device("meta"):
        model = _new_vae(spec, full)
    component = f"vae_{'full' if full else 'tiny'}_{part}"
    keep = (lambda k: k.startswith("encoder.")) if part == "robust_encoder" else (lambda k: True)
    sd = _random_state_dict(model, spec, component, keep=keep)
    if cache is not None:
        sd = {k: v.half() for k, v in sd.items()}
        try:
            cache.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache.with_suffix(f".{os.getpid()}.tmp")
            save_file(sd, str(tmp))
            os.replace(tmp, cache)
        except OSError:
            pass
    return sd


def vae_state_dict(
    spec: TinySpec = TinySpec(), robust: bool = False, full: bool = False, encoder_only: bool = False,
    *, copy: bool = True,
) -> dict[str, torch.Tensor]:
    """VAE weights in diffusers names (float32 copies). The robust VAE shares
    the stock decoder and has its own encoder. ``encoder_only`` keeps only
    ``encoder.*`` keys. (``copy=False``, internal: shared tensors, float16 for
    the full layout.)"""
    sd = dict(_vae_part_sd(spec, full, "stock"))
    if robust:
        sd.update(_vae_part_sd(spec, full, "robust_encoder"))
    if encoder_only:
        sd = {k: v for k, v in sd.items() if k.startswith("encoder.")}
    if copy:
        return {k: v.to(torch.float32, copy=True) for k, v in sd.items()}
    return sd


def build_vae(spec: TinySpec = TinySpec(), robust: bool = False, full: bool = False, dtype=torch.float32):
    """Stock diffusers ``AutoencoderKL`` holding the tiny (or full-layout) weights."""
    with _keep_global_rng():
        model = _new_vae(spec, full)
    model.load_state_dict(vae_state_dict(spec, robust=robust, full=full, copy=False), strict=True)
    return model.to(dtype).eval()


_VAE_RULES: list[tuple[re.Pattern, Callable[[re.Match, int], str]]] = [
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$"),
     lambda m, n: f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"),
    (re.compile(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)$"),
     lambda m, n: f"encoder.down.{m[1]}.downsample.conv.{m[2]}"),
    (re.compile(r"^decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)$"),
     lambda m, n: f"decoder.up.{n - 1 - int(m[1])}.block.{m[2]}.{m[3]}"),
    (re.compile(r"^decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)$"),
     lambda m, n: f"decoder.up.{n - 1 - int(m[1])}.upsample.conv.{m[2]}"),
    (re.compile(r"^(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)$"),
     lambda m, n: f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"),
    (re.compile(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(group_norm|to_q|to_k|to_v|to_out\.0)\.(.+)$"),
     lambda m, n: f"{m[1]}.mid.attn_1."
     + {"group_norm": "norm", "to_q": "q", "to_k": "k", "to_v": "v", "to_out.0": "proj_out"}[m[2]]
     + f".{m[3]}"),
    (re.compile(r"^(encoder|decoder)\.conv_norm_out\.(.+)$"), lambda m, n: f"{m[1]}.norm_out.{m[2]}"),
    (re.compile(r"^((encoder|decoder)\.(conv_in|conv_out)|quant_conv|post_quant_conv)\.(weight|bias)$"),
     lambda m, n: m[0]),
]


def diffusers_vae_to_ldm(sd: dict[str, torch.Tensor], prefix: str = "", num_blocks: int | None = None):
    """diffusers AutoencoderKL names -> original LDM/SAI names (``encoder.down.0.
    block.0.norm1.weight``...; ``nin_shortcut``; ``mid.attn_1.{norm,q,k,v,proj_out}``
    with 1x1-conv shaped weights): the inverse of diffusers'
    ``convert_ldm_vae_checkpoint``. Works for encoder-only dicts too."""
    if num_blocks is None:
        ups = [int(m[1]) for k in sd if (m := re.match(r"^decoder\.up_blocks\.(\d+)\.", k))]
        downs = [int(m[1]) for k in sd if (m := re.match(r"^encoder\.down_blocks\.(\d+)\.", k))]
        num_blocks = 1 + max(ups or downs)
    out = {}
    for k, v in sd.items():
        for pat, fn in _VAE_RULES:
            m = pat.match(k)
            if m:
                new = fn(m, num_blocks).replace("conv_shortcut", "nin_shortcut")
                if ".mid.attn_1." in new and new.endswith(".weight") and not new.endswith("norm.weight"):
                    v = v.reshape(*v.shape, 1, 1)
                out[prefix + new] = v
                break
        else:
            raise KeyError(f"no LDM name for diffusers VAE key {k!r}")
    return out


def write_vae_folder(
    folder: str | os.PathLike,
    spec: TinySpec = TinySpec(),
    robust: bool = False,
    full: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """diffusers folder: config.json + diffusion_pytorch_model.safetensors.
    ``dtype`` defaults to fp32 (tiny) / fp16 (full, to keep files small)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    _write_json(vae_config(spec, full), folder / "config.json")
    dtype = dtype or (torch.float16 if full else torch.float32)
    sd = _cast(vae_state_dict(spec, robust=robust, full=full, copy=False), dtype)
    _save_safetensors(sd, folder / "diffusion_pytorch_model.safetensors", {"format": "pt"})
    return folder


def write_vae_file(
    path: str | os.PathLike,
    spec: TinySpec = TinySpec(),
    robust: bool = False,
    full: bool = False,
    naming: str = "diffusers",
    prefix: str = "",
    encoder_only: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """One ``.safetensors`` VAE. ``naming``: ``"diffusers"`` or ``"ldm"`` (SAI /
    ComfyUI ``vae/*.safetensors`` names); ``prefix`` e.g. ``"first_stage_model."``;
    ``encoder_only`` keeps only ``encoder.*`` keys (what a robust-encoder
    release would ship)."""
    sd = vae_state_dict(spec, robust=robust, full=full, encoder_only=encoder_only, copy=False)
    if naming == "ldm":
        n = len(spec.vae_full_block_out_channels if full else spec.vae_block_out_channels)
        sd = diffusers_vae_to_ldm(sd, num_blocks=n)
    elif naming != "diffusers":
        raise ValueError("naming must be 'diffusers' or 'ldm'")
    dtype = dtype or (torch.float16 if full else torch.float32)
    return _save_safetensors(_cast(_prefixed(sd, prefix), dtype), path)


def write_sai_checkpoint(
    path: str | os.PathLike,
    spec: TinySpec = TinySpec(),
    with_control: bool = True,
    full_vae: bool = False,
    robust_vae: bool = False,
    dtype: torch.dtype | None = None,
) -> Path:
    """An SAI-style all-in-one file: ``model.diffusion_model.*`` (MMDiT names,
    + ``control_conv.*`` under the same prefix) and ``first_stage_model.*``
    (LDM VAE names)."""
    sd = mmdit_state_dict(spec, with_control=with_control, prefix="model.diffusion_model.", copy=False)
    n = len(spec.vae_full_block_out_channels if full_vae else spec.vae_block_out_channels)
    sd.update(
        diffusers_vae_to_ldm(
            vae_state_dict(spec, robust=robust_vae, full=full_vae, copy=False), "first_stage_model.", n
        )
    )
    dtype = dtype or (torch.float16 if full_vae else torch.float32)
    return _save_safetensors(_cast(sd, dtype), path)


# ---------------------------------------------------------------------------
# CLIP vision towers
# ---------------------------------------------------------------------------


def clip_vision_config(spec: TinySpec = TinySpec(), which: int = 1):
    from transformers import CLIPVisionConfig

    c = spec.clip(which)
    return CLIPVisionConfig(
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_layers,
        num_attention_heads=c.num_heads,
        image_size=c.image_size,
        patch_size=c.patch_size,
        projection_dim=c.projection_dim,
        hidden_act=c.hidden_act,
        layer_norm_eps=c.layer_norm_eps,
        num_channels=3,
    )


def _new_clip(spec: TinySpec, which: int):
    from transformers import CLIPVisionModelWithProjection

    return CLIPVisionModelWithProjection(clip_vision_config(spec, which))


@functools.lru_cache(maxsize=None)
def _clip_sd(spec: TinySpec, which: int) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = _new_clip(spec, which)
    return _random_state_dict(model, spec, f"clip_vision_{which}")


def clip_vision_state_dict(
    spec: TinySpec = TinySpec(), which: int = 1, *, copy: bool = True
) -> dict[str, torch.Tensor]:
    """HF names: ``vision_model.*`` + ``visual_projection.weight``."""
    return _clone(_clip_sd(spec, which), copy)


def build_clip_vision(spec: TinySpec = TinySpec(), which: int = 1, dtype=torch.float32):
    """``CLIPVisionModelWithProjection`` holding the tiny weights (eval mode)."""
    with _keep_global_rng():
        model = _new_clip(spec, which)
    missing, unexpected = model.load_state_dict(clip_vision_state_dict(spec, which, copy=False), strict=False)
    if unexpected or [k for k in missing if not k.endswith("position_ids")]:
        raise RuntimeError(f"CLIP state dict mismatch: missing={missing} unexpected={unexpected}")
    return model.to(dtype).eval()


def hf_clip_vision_to_openai(sd: dict[str, torch.Tensor], prefix: str = "visual.") -> dict[str, torch.Tensor]:
    """HF CLIP vision names -> OpenAI / open_clip ``visual.*`` names (fused
    ``attn.in_proj_*``, ``ln_pre``/``ln_post``, ``conv1``, ``proj`` = W^T).
    Inverse of ComfyUI's ``clip_vision.convert_to_transformers``."""
    out: dict[str, torch.Tensor] = {}
    basic = {
        "vision_model.embeddings.class_embedding": "class_embedding",
        "vision_model.embeddings.patch_embedding.weight": "conv1.weight",
        "vision_model.embeddings.position_embedding.weight": "positional_embedding",
        "vision_model.pre_layrnorm.weight": "ln_pre.weight",
        "vision_model.pre_layrnorm.bias": "ln_pre.bias",
        "vision_model.post_layernorm.weight": "ln_post.weight",
        "vision_model.post_layernorm.bias": "ln_post.bias",
    }
    sub = {
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
        "self_attn.out_proj": "attn.out_proj",
    }
    layers = sorted({int(m[1]) for k in sd if (m := re.match(r"^vision_model\.encoder\.layers\.(\d+)\.", k))})
    used = set()
    for k, v in sd.items():
        if k in basic:
            out[prefix + basic[k]] = v
            used.add(k)
    if "visual_projection.weight" in sd:
        out[prefix + "proj"] = sd["visual_projection.weight"].t().contiguous()
        used.add("visual_projection.weight")
    for i in layers:
        src = f"vision_model.encoder.layers.{i}."
        dst = f"{prefix}transformer.resblocks.{i}."
        for end in ("weight", "bias"):
            qkv = [f"{src}self_attn.{n}_proj.{end}" for n in "qkv"]
            out[f"{dst}attn.in_proj_{end}"] = torch.cat([sd[x] for x in qkv], dim=0)
            used.update(qkv)
            for a, b in sub.items():
                out[f"{dst}{b}.{end}"] = sd[f"{src}{a}.{end}"]
                used.add(f"{src}{a}.{end}")
    rest = [k for k in sd if k not in used and not k.endswith("position_ids")]
    if rest:
        raise KeyError(f"no OpenAI name for {rest}")
    return out


_CLIP_PREPROCESSOR = {
    "crop_size": 224,
    "do_center_crop": True,
    "do_normalize": True,
    "do_resize": True,
    "feature_extractor_type": "CLIPFeatureExtractor",
    "image_mean": [0.48145466, 0.4578275, 0.40821073],
    "image_std": [0.26862954, 0.26130258, 0.27577711],
    "resample": 3,
    "size": 224,
}


def _v4_style_config(folder: Path, dtype: torch.dtype) -> None:
    """Make a transformers-5 config.json look like the 4.x ones users have."""
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.pop("dtype", None)
    cfg["torch_dtype"] = str(dtype).removeprefix("torch.")
    if "scale_decoder_outputs" in cfg:  # T5: v5 stores 4.x's tie_word_embeddings under this name
        cfg["tie_word_embeddings"] = cfg.pop("scale_decoder_outputs")
    cfg["transformers_version"] = TRANSFORMERS_4_VERSION
    _write_json(cfg, path)


def write_clip_vision_folder(
    folder: str | os.PathLike,
    spec: TinySpec = TinySpec(),
    which: int = 1,
    full_clip_model: bool = False,
    dtype: torch.dtype = torch.float32,
) -> Path:
    """HF folder (config.json + model.safetensors + preprocessor_config.json).

    ``full_clip_model=True`` writes a whole ``CLIPModel`` folder (text tower
    too, model_type "clip"), as ``openai/clip-vit-base-patch32`` or the LAION
    bigG repos are; ``CLIPVisionModelWithProjection.from_pretrained`` reads
    its vision part, which holds the same tensors."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    sd = clip_vision_state_dict(spec, which, copy=False)
    if full_clip_model:
        from transformers import CLIPConfig, CLIPModel, CLIPTextConfig

        c = spec.clip(which)
        text = CLIPTextConfig(
            vocab_size=49408, hidden_size=c.hidden_size, intermediate_size=c.intermediate_size,
            num_hidden_layers=c.num_layers, num_attention_heads=c.num_heads, max_position_embeddings=77,
            projection_dim=c.projection_dim, hidden_act=c.hidden_act,
        )
        config = CLIPConfig(
            text_config=text.to_dict(), vision_config=clip_vision_config(spec, which).to_dict(),
            projection_dim=c.projection_dim,
        )
        with torch.device("meta"):
            model = CLIPModel(config)
        full = _random_state_dict(model, spec, f"clip_text_{which}", keep=lambda k: k not in sd)
        full.update(sd)
        config.architectures = ["CLIPModel"]
        config.save_pretrained(folder)
        sd = full
    else:
        config = clip_vision_config(spec, which)
        config.architectures = ["CLIPVisionModelWithProjection"]
        config.save_pretrained(folder)
    _v4_style_config(folder, dtype)
    _write_json(_CLIP_PREPROCESSOR, folder / "preprocessor_config.json")
    _save_safetensors(_cast(sd, dtype), folder / "model.safetensors", {"format": "pt"})
    return folder


def write_clip_vision_file(
    path: str | os.PathLike,
    spec: TinySpec = TinySpec(),
    which: int = 1,
    naming: str = "hf",
    dtype: torch.dtype = torch.float32,
) -> Path:
    """One ``.safetensors``: ``naming="hf"`` (``vision_model.*`` +
    ``visual_projection.weight``, like ComfyUI's clip_vision files) or
    ``"openai"`` (``visual.conv1.weight``, ``visual.transformer.resblocks.N.attn.
    in_proj_weight``, ``visual.proj``...)."""
    sd = clip_vision_state_dict(spec, which, copy=False)
    if naming == "openai":
        sd = hf_clip_vision_to_openai(sd)
    elif naming != "hf":
        raise ValueError("naming must be 'hf' or 'openai'")
    return _save_safetensors(_cast(sd, dtype), path)


# ---------------------------------------------------------------------------
# T5 encoder + tokenizer
# ---------------------------------------------------------------------------

_T5_CORPUS = [
    "a photo of a cat sitting on a red sofa next to the window",
    "high quality restored image with sharp details and natural colors",
    "a dog running on the beach at sunset, waves and clouds",
    "the quick brown fox jumps over the lazy dog",
    "THE QUICK BROWN FOX JUMPS OVER THE LAZY DOG",
    "blurry noisy low resolution photograph of a city street at night",
    "portrait of an old man, detailed skin, soft light, 85mm lens",
    "landscape with mountains, a lake, green trees and a blue sky",
    "0123456789 .,;:!?'\"()[]{}-_+=*/\\&%$#@<>|~^`",
    "Cinematic, High Contrast, highly detailed, ultra HD, hyper sharpness",
]


def t5_config(spec: TinySpec = TinySpec()):
    from transformers import T5Config

    return T5Config(
        vocab_size=spec.t5_vocab_size,
        d_model=spec.t5_d_model,
        d_kv=spec.t5_d_kv,
        d_ff=spec.t5_d_ff,
        num_layers=spec.t5_num_layers,
        num_decoder_layers=spec.t5_num_layers,
        num_heads=spec.t5_num_heads,
        feed_forward_proj=spec.t5_feed_forward_proj,
        relative_attention_num_buckets=32,
        relative_attention_max_distance=128,
        layer_norm_epsilon=1e-6,
        dropout_rate=0.1,
        is_encoder_decoder=False,
        use_cache=False,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
        tie_word_embeddings=False,
    )


def _new_t5(spec: TinySpec):
    from transformers import T5EncoderModel

    return T5EncoderModel(t5_config(spec))


@functools.lru_cache(maxsize=None)
def _t5_sd(spec: TinySpec) -> dict[str, torch.Tensor]:
    with torch.device("meta"):
        model = _new_t5(spec)
    return _random_state_dict(model, spec, "t5")


def t5_state_dict(
    spec: TinySpec = TinySpec(), include_embed_tokens: bool = False, *, copy: bool = True
) -> dict[str, torch.Tensor]:
    """T5 encoder in HF names as saved files hold them: ``shared.weight`` +
    ``encoder.*`` (the tied ``encoder.embed_tokens.weight`` only on request)."""
    sd = _clone(_t5_sd(spec), copy)
    if not include_embed_tokens:
        sd.pop("encoder.embed_tokens.weight", None)
    return sd


def build_t5(spec: TinySpec = TinySpec(), dtype=torch.float32):
    """``T5EncoderModel`` holding the tiny weights (eval mode)."""
    with _keep_global_rng():
        model = _new_t5(spec)
    model.load_state_dict(t5_state_dict(spec, include_embed_tokens=True, copy=False), strict=True)
    return model.to(dtype).eval()


@functools.lru_cache(maxsize=None)
def _spm_model(vocab_size: int) -> bytes:
    """A tiny sentencepiece unigram model with T5's special ids
    (pad 0, eos 1, unk 2, no bos), identity normalisation."""
    import sentencepiece as spm

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(_T5_CORPUS * 3),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="unigram",
        pad_id=0,
        eos_id=1,
        unk_id=2,
        bos_id=-1,
        pad_piece="<pad>",
        eos_piece="</s>",
        unk_piece="<unk>",
        hard_vocab_limit=False,
        character_coverage=1.0,
        normalization_rule_name="identity",
        num_threads=1,
        minloglevel=2,
    )
    return buf.getvalue()


def _spm_vocab(vocab_size: int) -> list[tuple[str, float]]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=_spm_model(vocab_size))
    return [(sp.id_to_piece(i), float(sp.get_score(i))) for i in range(sp.get_piece_size())]


def build_t5_tokenizer(spec: TinySpec = TinySpec()):
    """A T5 tokenizer (transformers ``T5Tokenizer``, tokenizers-backed) built from
    a locally trained sentencepiece unigram model: pad id 0, eos id 1 appended,
    unk id 2, 100 ``<extra_id_N>`` sentinels after the vocabulary."""
    from transformers import T5Tokenizer

    vocab = _spm_vocab(spec.t5_tokenizer_vocab_size)
    tok = T5Tokenizer(vocab=vocab, extra_ids=100)
    tok.model_max_length = 512
    return tok


def t5_embedding(spec: TinySpec = TinySpec(), prompt: str = "a photo of a cat", max_length: int = T5_MAX_LENGTH):
    """``(1, max_length, width)`` T5 last hidden state as DPIR computes it
    (padding to max_length, truncation, no attention mask)."""
    return _t5_embedding(spec, prompt, max_length).clone()


@functools.lru_cache(maxsize=None)
def _t5_embedding(spec: TinySpec, prompt: str, max_length: int) -> torch.Tensor:
    tok = build_t5_tokenizer(spec)
    ids = tok(
        [prompt], padding="max_length", max_length=max_length, truncation=True, add_special_tokens=True,
        return_tensors="pt",
    ).input_ids
    with torch.no_grad():
        return build_t5(spec)(ids)[0].float().contiguous()


def write_t5_folder(
    folder: str | os.PathLike, spec: TinySpec = TinySpec(), dtype: torch.dtype = torch.float32,
    with_tokenizer: bool = True,
) -> Path:
    """HF folder: config.json + model.safetensors (+ tokenizer: spiece.model,
    tokenizer.json, tokenizer_config.json, special_tokens_map.json)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    config = t5_config(spec)
    config.architectures = ["T5EncoderModel"]
    config.save_pretrained(folder)
    _v4_style_config(folder, dtype)
    _save_safetensors(_cast(t5_state_dict(spec, copy=False), dtype), folder / "model.safetensors", {"format": "pt"})
    if with_tokenizer:
        tok = build_t5_tokenizer(spec)
        tok.save_pretrained(str(folder))
        (folder / "spiece.model").write_bytes(_spm_model(spec.t5_tokenizer_vocab_size))
        # tokenizer_config.json as transformers 4.x wrote it for T5 (SD3's tokenizer_3)
        added = json.loads((folder / "tokenizer.json").read_text())["added_tokens"]
        tc = {
            "added_tokens_decoder": {
                str(t["id"]): {x: t[x] for x in ("content", "lstrip", "normalized", "rstrip", "single_word", "special")}
                for t in added
            },
            "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)],
            "clean_up_tokenization_spaces": True,
            "eos_token": "</s>",
            "extra_ids": 100,
            "legacy": True,
            "model_max_length": 512,
            "pad_token": "<pad>",
            "sp_model_kwargs": {},
            "tokenizer_class": "T5Tokenizer",
            "unk_token": "<unk>",
        }
        _write_json(tc, folder / "tokenizer_config.json")
        special = {
            "eos_token": "</s>",
            "pad_token": "<pad>",
            "unk_token": "<unk>",
            "additional_special_tokens": [f"<extra_id_{i}>" for i in range(100)],
        }
        _write_json(special, folder / "special_tokens_map.json")
    return folder


def write_t5_file(path: str | os.PathLike, spec: TinySpec = TinySpec(), dtype: torch.dtype = torch.float32) -> Path:
    """Single-file T5 encoder in HF names (like ComfyUI's ``t5xxl_*.safetensors``)."""
    return _save_safetensors(_cast(t5_state_dict(spec, copy=False), dtype), path)


def write_t5_embedding(
    path: str | os.PathLike, spec: TinySpec = TinySpec(), prompt: str = "a photo of a cat",
    max_length: int = T5_MAX_LENGTH,
) -> Path:
    """Precomputed T5 embedding ``(1, 256, width)``: ``.safetensors`` with key
    ``"t5_embedding"``, or (any other suffix, e.g. ``.pt``) ``torch.save`` of the tensor."""
    emb = t5_embedding(spec, prompt, max_length)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".safetensors":
        save_file({"t5_embedding": emb}, str(path))
    else:
        torch.save(emb, str(path))
    return path


# ---------------------------------------------------------------------------
# Bad / foreign files
# ---------------------------------------------------------------------------


def write_truncated_safetensors(path: str | os.PathLike, spec: TinySpec = TinySpec()) -> Path:
    """A transformer ``.safetensors`` cut in the middle of its data section."""
    path = Path(path)
    write_transformer_file(path, spec, naming="diffusers")
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    data_start = 8 + n
    path.write_bytes(raw[: data_start + (len(raw) - data_start) // 2])
    return path


def write_lying_header_safetensors(path: str | os.PathLike, kind: str = "offsets") -> Path:
    """A ``.safetensors`` whose header lies: ``kind="offsets"`` claims data
    beyond the end of the file; ``kind="shape"`` declares a shape whose byte
    size does not match its data offsets; ``kind="header_size"`` has an 8-byte
    header length far larger than the file."""
    data = torch.arange(16, dtype=torch.float32).numpy().tobytes()  # 64 bytes
    if kind == "header_size":
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        hb = json.dumps({"x": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}).encode()
        hb += b" " * (-len(hb) % 8)
        path.write_bytes(struct.pack("<Q", 50_000_000) + hb + data)
        return path
    if kind == "offsets":
        header = {
            "control_conv.0.weight": {"dtype": "F32", "shape": [64, 16, 3, 3], "data_offsets": [0, 36864]},
        }
    elif kind == "shape":
        header = {"control_conv.0.bias": {"dtype": "F32", "shape": [1024], "data_offsets": [0, 64]}}
    else:
        raise ValueError("kind must be 'offsets', 'shape' or 'header_size'")
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * (-len(hb) % 8)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(struct.pack("<Q", len(hb)) + hb + data)
    return path


def write_sdxl_unet_file(path: str | os.PathLike, prefix: str = "model.diffusion_model.", seed: int = 0) -> Path:
    """An SDXL-UNet-shaped state dict with tiny shapes (``input_blocks.0.0.weight``,
    ``time_embed.0.weight``, ``label_emb.0.0.weight``, ...): a foreign model
    that must be refused."""
    g = torch.Generator().manual_seed(seed)
    c, t, adm = 8, 32, 64
    shapes = {
        "time_embed.0.weight": (t, c), "time_embed.0.bias": (t,),
        "time_embed.2.weight": (t, t), "time_embed.2.bias": (t,),
        "label_emb.0.0.weight": (t, adm), "label_emb.0.0.bias": (t,),
        "label_emb.0.2.weight": (t, t), "label_emb.0.2.bias": (t,),
        "input_blocks.0.0.weight": (c, 4, 3, 3), "input_blocks.0.0.bias": (c,),
        "input_blocks.1.0.in_layers.0.weight": (c,), "input_blocks.1.0.in_layers.0.bias": (c,),
        "input_blocks.1.0.in_layers.2.weight": (c, c, 3, 3), "input_blocks.1.0.in_layers.2.bias": (c,),
        "input_blocks.1.0.emb_layers.1.weight": (c, t), "input_blocks.1.0.emb_layers.1.bias": (c,),
        "input_blocks.1.0.out_layers.0.weight": (c,), "input_blocks.1.0.out_layers.0.bias": (c,),
        "input_blocks.1.0.out_layers.3.weight": (c, c, 3, 3), "input_blocks.1.0.out_layers.3.bias": (c,),
        "middle_block.1.proj_in.weight": (c, c), "middle_block.1.proj_in.bias": (c,),
        "middle_block.1.transformer_blocks.0.attn2.to_k.weight": (c, 16),
        "output_blocks.0.0.skip_connection.weight": (c, 2 * c, 1, 1),
        "out.0.weight": (c,), "out.0.bias": (c,),
        "out.2.weight": (4, c, 3, 3), "out.2.bias": (4,),
    }
    sd = {prefix + k: 0.05 * torch.randn(s, generator=g) for k, s in shapes.items()}
    return _save_safetensors(sd, path)


def sd15_unet_state_dict(seed: int = 0) -> dict[str, torch.Tensor]:
    """A small UNet that ComfyUI detects as **SD1.5** (LDM names, no prefix).

    ComfyUI recognises SD1.5 by model width 320, cross-attention context 768,
    conv ``proj_in`` and no ``label_emb``; depth is free. This one has one
    level (``channel_mult`` (1,)), one res block + one spatial transformer in
    the input level, a middle made of one res block and two output res blocks:
    every key of ComfyUI's ``UNetModel`` for that config (~16 M parameters),
    seeded values, float32. A foreign ``MODEL`` for wrong-wiring tests."""
    g = torch.Generator().manual_seed(seed)
    mc, emb, ctx = 320, 1280, 768
    shapes: dict[str, tuple[int, ...]] = {
        "time_embed.0.weight": (emb, mc), "time_embed.0.bias": (emb,),
        "time_embed.2.weight": (emb, emb), "time_embed.2.bias": (emb,),
        "input_blocks.0.0.weight": (mc, 4, 3, 3), "input_blocks.0.0.bias": (mc,),
        "out.0.weight": (mc,), "out.0.bias": (mc,),
        "out.2.weight": (4, mc, 3, 3), "out.2.bias": (4,),
    }

    def res_block(prefix: str, cin: int, cout: int) -> None:
        shapes.update({
            f"{prefix}in_layers.0.weight": (cin,), f"{prefix}in_layers.0.bias": (cin,),
            f"{prefix}in_layers.2.weight": (cout, cin, 3, 3), f"{prefix}in_layers.2.bias": (cout,),
            f"{prefix}emb_layers.1.weight": (cout, emb), f"{prefix}emb_layers.1.bias": (cout,),
            f"{prefix}out_layers.0.weight": (cout,), f"{prefix}out_layers.0.bias": (cout,),
            f"{prefix}out_layers.3.weight": (cout, cout, 3, 3), f"{prefix}out_layers.3.bias": (cout,),
        })
        if cin != cout:
            shapes.update({f"{prefix}skip_connection.weight": (cout, cin, 1, 1), f"{prefix}skip_connection.bias": (cout,)})

    def spatial_transformer(prefix: str, c: int) -> None:
        b = f"{prefix}transformer_blocks.0."
        shapes.update({
            f"{prefix}norm.weight": (c,), f"{prefix}norm.bias": (c,),
            f"{prefix}proj_in.weight": (c, c, 1, 1), f"{prefix}proj_in.bias": (c,),
            f"{prefix}proj_out.weight": (c, c, 1, 1), f"{prefix}proj_out.bias": (c,),
            f"{b}attn1.to_q.weight": (c, c), f"{b}attn1.to_k.weight": (c, c), f"{b}attn1.to_v.weight": (c, c),
            f"{b}attn1.to_out.0.weight": (c, c), f"{b}attn1.to_out.0.bias": (c,),
            f"{b}attn2.to_q.weight": (c, c), f"{b}attn2.to_k.weight": (c, ctx), f"{b}attn2.to_v.weight": (c, ctx),
            f"{b}attn2.to_out.0.weight": (c, c), f"{b}attn2.to_out.0.bias": (c,),
            f"{b}ff.net.0.proj.weight": (8 * c, c), f"{b}ff.net.0.proj.bias": (8 * c,),
            f"{b}ff.net.2.weight": (c, 4 * c), f"{b}ff.net.2.bias": (c,),
            **{f"{b}norm{i}.{p}": (c,) for i in (1, 2, 3) for p in ("weight", "bias")},
        })

    res_block("input_blocks.1.0.", mc, mc)
    spatial_transformer("input_blocks.1.1.", mc)
    res_block("middle_block.0.", mc, mc)
    res_block("output_blocks.0.0.", 2 * mc, mc)
    res_block("output_blocks.1.0.", 2 * mc, mc)
    out = {}
    for k, s in shapes.items():
        if len(s) == 1:
            norm = ".norm" in k or "in_layers.0" in k or "out_layers.0" in k or k.startswith("out.0")
            out[k] = (1.0 if norm and k.endswith("weight") else 0.0) + 0.02 * torch.randn(s, generator=g)
        else:
            fan_in = 1
            for d in s[1:]:
                fan_in *= d
            out[k] = torch.randn(s, generator=g) * fan_in ** -0.5
    return out


def write_sd15_unet_file(path: str | os.PathLike, prefix: str = "", seed: int = 0) -> Path:
    """``sd15_unet_state_dict`` as a ``diffusion_models/`` file (fp16) that the
    core *Load Diffusion Model* node loads as an SD1.5 ``MODEL``."""
    return _save_safetensors(_cast(_prefixed(sd15_unet_state_dict(seed), prefix), torch.float16), path)


def write_sd15_vae_file(path: str | os.PathLike, spec: TinySpec = TinySpec()) -> Path:
    """A 4-latent-channel SD1.5/SDXL-style VAE (diffusers names, full SD layout
    so ComfyUI's ``VAE`` loads it): the full tiny SD3 VAE with a 4-channel
    latent (``encoder.conv_out`` 8 out, ``decoder.conv_in`` 4 in) and the
    ``quant_conv``/``post_quant_conv`` SD1.5 has. fp16."""
    g = torch.Generator().manual_seed(_component_seed(spec, "sd15_vae"))
    sd = dict(vae_state_dict(spec, full=True, copy=False))
    width = sd["encoder.conv_out.weight"].shape[1]
    sd["encoder.conv_out.weight"] = 0.02 * torch.randn(8, width, 3, 3, generator=g)
    sd["encoder.conv_out.bias"] = torch.zeros(8)
    sd["decoder.conv_in.weight"] = 0.1 * torch.randn(sd["decoder.conv_in.weight"].shape[0], 4, 3, 3, generator=g)
    sd["quant_conv.weight"], sd["quant_conv.bias"] = torch.eye(8).view(8, 8, 1, 1), torch.zeros(8)
    sd["post_quant_conv.weight"], sd["post_quant_conv.bias"] = torch.eye(4).view(4, 4, 1, 1), torch.zeros(4)
    return _save_safetensors(_cast(sd, torch.float16), path)


def write_clip_l_text_file(path: str | os.PathLike, seed: int = 0) -> Path:
    """A text encoder file that ComfyUI's *Load CLIP* (type sd3) takes for CLIP-L
    alone: a CLIP that holds **no T5**. ComfyUI builds CLIP-L at full size from
    its own config whatever the file holds, so only the keys it detects and
    routes CLIP-L by are written (the rest stays uninitialised; nothing is
    encoded with it)."""
    g = torch.Generator().manual_seed(seed)
    sd = {f"text_model.encoder.layers.{i}.mlp.fc1.weight": 0.02 * torch.randn(3072, 768, generator=g) for i in (0, 1)}
    return _save_safetensors(_cast(sd, torch.float16), path)


def write_mismatched_control_file(
    path: str | os.PathLike, spec: TinySpec = TinySpec(), naming: str = "diffusers", control_width: int | None = None
) -> Path:
    """A transformer file whose ``control_conv`` output width (default hidden/2)
    does not match the transformer's hidden size."""
    width = control_width or spec.hidden // 2
    if width == spec.hidden:
        raise ValueError("control_width must differ from the hidden size")
    if naming == "diffusers":
        sd = transformer_state_dict(spec, with_control=False, copy=False)
    elif naming == "mmdit":
        sd = mmdit_state_dict(spec, with_control=False, copy=False)
    else:
        raise ValueError("naming must be 'diffusers' or 'mmdit'")
    sd.update(control_conv_state_dict(spec, out_channels=width, copy=False))
    return _save_safetensors(sd, path)


def write_bad_files(folder: str | os.PathLike, spec: TinySpec = TinySpec()) -> dict[str, Path]:
    """All broken/foreign files in ``folder``; returns named paths."""
    folder = Path(folder)
    return {
        "truncated": write_truncated_safetensors(folder / "truncated.safetensors", spec),
        "lying_header_offsets": write_lying_header_safetensors(folder / "lying_offsets.safetensors", "offsets"),
        "lying_header_shape": write_lying_header_safetensors(folder / "lying_shape.safetensors", "shape"),
        "lying_header_size": write_lying_header_safetensors(folder / "lying_header_size.safetensors", "header_size"),
        "sdxl_unet": write_sdxl_unet_file(folder / "sdxl_unet.safetensors"),
        "control_width_mismatch": write_mismatched_control_file(folder / "control_mismatch.safetensors", spec),
        "control_width_mismatch_mmdit": write_mismatched_control_file(
            folder / "control_mismatch_mmdit.safetensors", spec, naming="mmdit"
        ),
    }


# ---------------------------------------------------------------------------
# Everything at once
# ---------------------------------------------------------------------------


def build_all(folder: str | os.PathLike, spec: TinySpec = TinySpec(), full_vae: bool = False) -> dict[str, Path]:
    """Write one complete set of every layout into ``folder``; returns named paths.

    ``full_vae=True`` writes the VAE layouts with the real SD3 layout (~84 M
    params, fp16 files, which ComfyUI's ``VAE`` class can load) instead of the
    tiny one. The key ``"malicious_marker"`` names the file that must never appear.
    """
    f = Path(folder)
    f.mkdir(parents=True, exist_ok=True)
    p: dict[str, Path] = {}
    # transformer
    p["transformer_folder"] = write_transformer_folder(f / "transformer", spec)
    p["transformer_folder_sharded"] = write_transformer_folder(f / "transformer_sharded", spec, sharded=True)
    p["transformer_diffusers"] = write_transformer_file(f / "dpir_transformer_diffusers.safetensors", spec)
    p["transformer_diffusers_no_control"] = write_transformer_file(
        f / "sd3_transformer_diffusers.safetensors", spec, with_control=False
    )
    p["transformer_mmdit"] = write_transformer_file(f / "dpir_transformer_mmdit.safetensors", spec, naming="mmdit")
    p["transformer_mmdit_prefixed"] = write_transformer_file(
        f / "dpir_transformer_mmdit_prefixed.safetensors", spec, naming="mmdit", prefix="model.diffusion_model."
    )
    p["transformer_mmdit_no_control"] = write_transformer_file(
        f / "sd3_transformer_mmdit.safetensors", spec, naming="mmdit", with_control=False
    )
    p["control_conv"] = write_control_conv_file(f / "dpir_lq_branch.safetensors", spec)
    p["transformer_pth"] = write_transformer_pth(f / "consolidated.00-of-01.pth", spec)
    p["transformer_pth_module"] = write_transformer_pth(f / "consolidated_module.pth", spec, module_prefix=True)
    p["malicious_marker"] = f / "MALICIOUS_CODE_RAN"
    p["malicious_pth"] = write_malicious_pth(f / "malicious.pth", p["malicious_marker"], spec)
    # VAEs
    fv = full_vae
    p["vae_stock_folder"] = write_vae_folder(f / "vae_stock", spec, full=fv)
    p["vae_robust_folder"] = write_vae_folder(f / "vae_robust", spec, robust=True, full=fv)
    p["vae_stock_diffusers"] = write_vae_file(f / "vae_stock_diffusers.safetensors", spec, full=fv)
    p["vae_stock_ldm"] = write_vae_file(f / "vae_stock_ldm.safetensors", spec, full=fv, naming="ldm")
    p["vae_robust_diffusers"] = write_vae_file(f / "vae_robust_diffusers.safetensors", spec, robust=True, full=fv)
    p["vae_robust_ldm"] = write_vae_file(f / "vae_robust_ldm.safetensors", spec, robust=True, full=fv, naming="ldm")
    p["vae_robust_encoder_diffusers"] = write_vae_file(
        f / "vae_robust_encoder_diffusers.safetensors", spec, robust=True, full=fv, encoder_only=True
    )
    p["vae_robust_encoder_ldm"] = write_vae_file(
        f / "vae_robust_encoder_ldm.safetensors", spec, robust=True, full=fv, encoder_only=True, naming="ldm"
    )
    p["sai_checkpoint"] = write_sai_checkpoint(f / "sd3_dpir_sai_checkpoint.safetensors", spec, full_vae=fv)
    # CLIP vision
    for w in (1, 2):
        p[f"clip{w}_folder"] = write_clip_vision_folder(f / f"clip_vision_{w}", spec, w)
        p[f"clip{w}_hf"] = write_clip_vision_file(f / f"clip_vision_{w}_hf.safetensors", spec, w)
        p[f"clip{w}_openai"] = write_clip_vision_file(f / f"clip_vision_{w}_openai.safetensors", spec, w, "openai")
    # T5
    p["t5_folder"] = write_t5_folder(f / "t5", spec)
    p["t5_file"] = write_t5_file(f / "t5xxl_tiny.safetensors", spec)
    p["t5_embedding"] = write_t5_embedding(f / "t5_embedding.safetensors", spec)
    p["t5_embedding_pt"] = write_t5_embedding(f / "t5_embedding.pt", spec)
    # bad files
    p.update({f"bad_{k}": v for k, v in write_bad_files(f / "bad", spec).items()})
    return p
