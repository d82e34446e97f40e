"""Real-size random weights in the official file formats, written frugally.

    python bench/real_weights.py OUT [--size sd3-medium|small|tiny] [--t5xxl] [--shard-gb 2]

writes under OUT/ the model set the shipped workflows name (the layout of
tests/host/dpir_env.py, at real size):

    dpir/transformer/            the DPIR transformer as the authors' save_pretrained folder: config.json,
                                 bf16 shards + diffusion_pytorch_model.safetensors.index.json, control_conv.* inside
    dpir/robust_vae/             the robust VAE, a diffusers AutoencoderKL folder (fp32, as trained)
    dpir/prompt.safetensors      a T5 embedding file (1, 256, 4096), key "t5_embedding"
    vae/sd3_vae.safetensors      the stock SD3 VAE (SD3's vae/diffusion_pytorch_model.safetensors: fp16, diffusers names)
    clip_vision/clip_vit_b32.safetensors   openai/clip-vit-base-patch32's model.safetensors (whole CLIPModel, fp32)
    clip_vision/clip_vision_g.safetensors  ComfyUI's clip_vision_g (ViT-bigG/14 vision tower, HF names, fp16)
    text_encoders/t5xxl_fp16.safetensors   with --t5xxl: T5-XXL encoder as ComfyUI ships it (HF names, fp16)

Each tensor is generated on its own (seeded by its name), cast and appended to
its file, whose safetensors header is written first from the known shapes: the
process never holds more than one tensor, so real-size files (SD3-medium 2.1 B,
ViT-bigG 1.8 B, T5-XXL 4.7 B parameters) can be written on a small machine, and
quickly on a GPU machine. Needs torch and safetensors only for writing
(transformers only for the CLIP/T5 key lists, on the meta device; no diffusers,
no ComfyUI).

Key names and shapes come from tests/tiny_models.py's specs (TinySpec,
configs, key converters); the SD3 transformer and VAE key tables below are
written out because diffusers may be absent where this runs, and
tests/test_real_weights.py checks them against diffusers' own models.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import struct
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT / "tests") not in sys.path:
    sys.path.insert(0, str(ROOT / "tests"))

import tiny_models as tm  # noqa: E402

GiB = 2**30
_DTYPE_CODES = {torch.float32: "F32", torch.float16: "F16", torch.bfloat16: "BF16"}

# ---------------------------------------------------------------------------
# Specs
# ---------------------------------------------------------------------------


def spec_for(size: str) -> tm.TinySpec:
    """'tiny' (the tests' models), 'small' (a CPU-sized SD3, 8 blocks, width 512) or 'sd3-medium' (real shapes:
    24 blocks, width 1536, context 4096, the LQ branch of the release, ViT-B/32 and ViT-bigG/14 towers, T5-XXL)."""
    if size == "tiny":
        return tm.TinySpec()
    if size == "small":
        return tm.TinySpec(num_layers=8, num_attention_heads=8, caption_projection_dim=512,
                           joint_attention_dim=256, t5_d_model=256)
    if size == "sd3-medium":
        return tm.TinySpec(
            num_layers=24, num_attention_heads=24, caption_projection_dim=1536, joint_attention_dim=4096,
            pooled_projection_dim=2048, pos_embed_max_size=192, control_c1=256, control_c2=512, t5_d_model=4096,
            t5_num_layers=24, t5_num_heads=64, t5_d_kv=64, t5_d_ff=10240,
            clip1=tm.ClipSpec(hidden_size=768, num_layers=12, num_heads=12, intermediate_size=3072,
                              projection_dim=512),
            clip2=tm.ClipSpec(patch_size=14, hidden_size=1664, num_layers=48, num_heads=16, intermediate_size=8192,
                              projection_dim=1280, hidden_act="gelu"))
    raise SystemExit(f"unknown size {size!r}")


def _meta(*shape: int) -> torch.Tensor:
    return torch.empty(shape, device="meta")


# ---------------------------------------------------------------------------
# Key tables: name -> meta tensor (shape only), in the official names and order
# ---------------------------------------------------------------------------


def transformer_shapes(spec: tm.TinySpec, with_control: bool = True) -> dict[str, torch.Tensor]:
    """diffusers ``SD3Transformer2DModel`` (0.29, no qk norm, no dual attention) + ``control_conv.*``."""
    d, p = spec.hidden, spec.patch_size
    sd: dict[str, torch.Tensor] = {}

    def linear(name, out, inp):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = _meta(out, inp), _meta(out)

    sd["pos_embed.proj.weight"], sd["pos_embed.proj.bias"] = _meta(d, spec.in_channels, p, p), _meta(d)
    sd["pos_embed.pos_embed"] = _meta(1, spec.pos_embed_max_size ** 2, d)
    linear("time_text_embed.timestep_embedder.linear_1", d, 256)
    linear("time_text_embed.timestep_embedder.linear_2", d, d)
    linear("time_text_embed.text_embedder.linear_1", d, spec.pooled_projection_dim)
    linear("time_text_embed.text_embedder.linear_2", d, d)
    linear("context_embedder", spec.caption_projection_dim, spec.joint_attention_dim)
    for i in range(spec.num_layers):
        b, last = f"transformer_blocks.{i}.", i == spec.num_layers - 1  # the last block's context is pre-only
        linear(b + "norm1.linear", 6 * d, d)
        linear(b + "norm1_context.linear", (2 if last else 6) * d, d)
        for n in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj", "to_out.0") + (
                () if last else ("to_add_out",)):
            linear(f"{b}attn.{n}", d, d)
        for ff in ("ff",) + (() if last else ("ff_context",)):
            linear(f"{b}{ff}.net.0.proj", 4 * d, d)
            linear(f"{b}{ff}.net.2", d, 4 * d)
    linear("norm_out.linear", 2 * d, d)
    linear("proj_out", p * p * spec.out_channels, d)
    if with_control:
        c1, c2, c3 = spec.control_widths
        for i, (out, inp) in enumerate(((c1, spec.in_channels), (c2, c1), (c3, c2))):
            sd[f"control_conv.{2 * i}.weight"], sd[f"control_conv.{2 * i}.bias"] = _meta(out, inp, 3, 3), _meta(out)
            sd[f"control_conv.{2 * i + 1}.weight"], sd[f"control_conv.{2 * i + 1}.bias"] = _meta(out), _meta(out)
    return sd


def vae_shapes(spec: tm.TinySpec, full: bool = True, encoder_only: bool = False) -> dict[str, torch.Tensor]:
    """diffusers ``AutoencoderKL`` of ``tm.vae_config`` (SD3: no quant convs)."""
    cfg = tm.vae_config(spec, full)
    boc, lpb, z = cfg["block_out_channels"], cfg["layers_per_block"], cfg["latent_channels"]
    sd: dict[str, torch.Tensor] = {}

    def conv(name, out, inp, k=3):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = _meta(out, inp, k, k), _meta(out)

    def norm(name, c):
        sd[f"{name}.weight"], sd[f"{name}.bias"] = _meta(c), _meta(c)

    def resnet(name, cin, cout):
        norm(f"{name}.norm1", cin)
        conv(f"{name}.conv1", cout, cin)
        norm(f"{name}.norm2", cout)
        conv(f"{name}.conv2", cout, cout)
        if cin != cout:
            conv(f"{name}.conv_shortcut", cout, cin, 1)

    def mid(side, c):
        resnet(f"{side}.mid_block.resnets.0", c, c)
        norm(f"{side}.mid_block.attentions.0.group_norm", c)
        for n in ("to_q", "to_k", "to_v", "to_out.0"):
            sd[f"{side}.mid_block.attentions.0.{n}.weight"] = _meta(c, c)
            sd[f"{side}.mid_block.attentions.0.{n}.bias"] = _meta(c)
        resnet(f"{side}.mid_block.resnets.1", c, c)

    conv("encoder.conv_in", boc[0], 3)
    cout = boc[0]
    for i, c in enumerate(boc):
        cin, cout = cout, c
        for j in range(lpb):
            resnet(f"encoder.down_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i < len(boc) - 1:
            conv(f"encoder.down_blocks.{i}.downsamplers.0.conv", cout, cout)
    mid("encoder", boc[-1])
    norm("encoder.conv_norm_out", boc[-1])
    conv("encoder.conv_out", 2 * z, boc[-1])
    if encoder_only:
        return sd
    rev = list(reversed(boc))
    conv("decoder.conv_in", rev[0], z)
    mid("decoder", rev[0])
    cout = rev[0]
    for i, c in enumerate(rev):
        cin, cout = cout, c
        for j in range(lpb + 1):
            resnet(f"decoder.up_blocks.{i}.resnets.{j}", cin if j == 0 else cout, cout)
        if i < len(rev) - 1:
            conv(f"decoder.up_blocks.{i}.upsamplers.0.conv", cout, cout)
    norm("decoder.conv_norm_out", boc[0])
    conv("decoder.conv_out", 3, boc[0])
    return sd


def _hf_shapes(model_fn, drop=()) -> dict[str, torch.Tensor]:
    """State dict keys and shapes of a transformers model built on the meta device (no memory)."""
    with torch.device("meta"):
        model = model_fn()
    return {k: v for k, v in model.state_dict().items() if not k.endswith("position_ids") and k not in drop}


def clip_vision_shapes(spec: tm.TinySpec, which: int) -> dict[str, torch.Tensor]:
    """``CLIPVisionModelWithProjection`` in HF names (ComfyUI's clip_vision files)."""
    from transformers import CLIPVisionModelWithProjection

    return _hf_shapes(lambda: CLIPVisionModelWithProjection(tm.clip_vision_config(spec, which)))


def clip_vit_b32_config(spec: tm.TinySpec):
    """openai/clip-vit-base-patch32's CLIPConfig: the vision tower of ``spec.clip1`` and, at real size, the
    repo's text tower (width 512, 8 heads, 12 layers)."""
    from transformers import CLIPConfig, CLIPTextConfig

    c = spec.clip1
    real = c.hidden_size == 768
    text = CLIPTextConfig(vocab_size=49408, hidden_size=512 if real else c.hidden_size,
                          intermediate_size=2048 if real else c.intermediate_size,
                          num_hidden_layers=12 if real else c.num_layers, num_attention_heads=8 if real else c.num_heads,
                          max_position_embeddings=77, projection_dim=c.projection_dim, hidden_act="quick_gelu")
    return CLIPConfig(text_config=text.to_dict(), vision_config=tm.clip_vision_config(spec, 1).to_dict(),
                      projection_dim=c.projection_dim)


def clip_model_shapes(spec: tm.TinySpec) -> dict[str, torch.Tensor]:
    """The whole ``CLIPModel`` (text and vision towers) as openai/clip-vit-base-patch32's model.safetensors."""
    from transformers import CLIPModel

    return _hf_shapes(lambda: CLIPModel(clip_vit_b32_config(spec)))


def t5_shapes(spec: tm.TinySpec) -> dict[str, torch.Tensor]:
    """T5 encoder in HF names as ComfyUI's t5xxl_*.safetensors hold them (``shared.weight``, no tied copy)."""
    from transformers import T5EncoderModel

    return _hf_shapes(lambda: T5EncoderModel(tm.t5_config(spec)), drop=("encoder.embed_tokens.weight",))


def param_count(shapes: dict[str, torch.Tensor]) -> int:
    return sum(v.numel() for v in shapes.values())


# ---------------------------------------------------------------------------
# Values: one seeded generator per tensor, the tiny models' initialisation rule
# ---------------------------------------------------------------------------


def _is_norm(key: str) -> bool:
    module = key.rsplit(".", 1)[0]
    return "norm" in module or module in ("control_conv.1", "control_conv.3", "control_conv.5")


def _sincos(hidden: int, side: int, base: int) -> torch.Tensor:
    """SD3's 2-D sin-cos position table (1, side², hidden) (diffusers' get_2d_sincos_pos_embed)."""
    grid = torch.arange(side, dtype=torch.float64) / (side / base)
    omega = 1.0 / 10000 ** (torch.arange(hidden // 4, dtype=torch.float64) / (hidden / 4))
    h, w = torch.meshgrid(grid, grid, indexing="ij")

    def emb(pos):
        out = pos.reshape(-1, 1) * omega
        return torch.cat([out.sin(), out.cos()], dim=1)

    return torch.cat([emb(w), emb(h)], dim=1).float().unsqueeze(0)


def random_tensor(key: str, shape: tuple, spec: tm.TinySpec, component: str, device="cpu") -> torch.Tensor:
    """fp32 values for one tensor, seeded by (spec seed, component, key): independent of write order (and
    generated on ``device``, e.g. "cuda" to write fast on a GPU machine; other values than the CPU's)."""
    seed = int.from_bytes(hashlib.sha256(f"{spec.seed}:{component}:{key}".encode()).digest()[:7], "little")
    gen = torch.Generator(device).manual_seed(seed)
    name = key.rsplit(".", 1)[-1]
    if key == "pos_embed.pos_embed":
        side = math.isqrt(shape[1])
        val = _sincos(shape[2], side, spec.sample_size // spec.patch_size).to(device)
        return val.add_(torch.randn(val.shape, generator=gen, device=device).mul_(spec.pos_embed_noise))
    val = torch.randn(shape, generator=gen, device=device)
    if len(shape) == 0:  # CLIPModel.logit_scale: ln(1/0.07)
        return val.mul_(spec.bias_std).add_(2.6592)
    if len(shape) == 1:
        if _is_norm(key) and name == "weight":
            return val.mul_(spec.norm_noise).add_(1.0)
        return val.mul_(spec.bias_std)
    fan_in = math.prod(shape[1:])
    return val.mul_(min(max(fan_in ** -0.5, spec.init_std_min), spec.init_std_max))


# ---------------------------------------------------------------------------
# Writers: header first, then one tensor at a time
# ---------------------------------------------------------------------------


def write_safetensors(path, shapes: dict[str, torch.Tensor], dtype: torch.dtype, spec: tm.TinySpec, component,
                      metadata: dict[str, str] | None = None, device="cpu") -> Path:
    """A safetensors file of ``shapes`` (meta tensors) with seeded random values, written tensor by tensor."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    size = torch.tensor([], dtype=dtype).element_size()
    header, offset = {}, 0
    for key, t in shapes.items():
        n = t.numel() * size
        header[key] = {"dtype": _DTYPE_CODES[dtype], "shape": list(t.shape), "data_offsets": [offset, offset + n]}
        offset += n
    if metadata:
        header["__metadata__"] = metadata
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)
    tmp = path.with_name(path.name + ".partial")
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)) + raw)
        for key, t in shapes.items():
            comp = component(key) if callable(component) else component  # str, or per key
            val = random_tensor(key, tuple(t.shape), spec, comp, device).to(dtype).cpu().contiguous()
            f.write(val.reshape(-1).view(torch.uint8).numpy().tobytes() if val.numel() else b"")
            del val
    tmp.replace(path)
    return path


def shard(shapes: dict[str, torch.Tensor], dtype: torch.dtype, max_bytes: int) -> list[list[str]]:
    """Consecutive keys in shards of at most ``max_bytes`` (a bigger tensor gets a shard of its own)."""
    size = torch.tensor([], dtype=dtype).element_size()
    shards, current, used = [], [], 0
    for key, t in shapes.items():
        n = t.numel() * size
        if current and used + n > max_bytes:
            shards.append(current)
            current, used = [], 0
        current.append(key)
        used += n
    if current:
        shards.append(current)
    return shards


def write_sharded(folder, shapes, dtype, spec, component, max_bytes: int, stem: str = "diffusion_pytorch_model",
                  device="cpu"):
    """Shards ``{stem}-0000i-of-0000N.safetensors`` + ``{stem}.safetensors.index.json`` as save_pretrained writes
    them; one ``{stem}.safetensors`` when everything fits one shard."""
    folder = Path(folder)
    groups = shard(shapes, dtype, max_bytes)
    if len(groups) == 1:
        write_safetensors(folder / f"{stem}.safetensors", shapes, dtype, spec, component, {"format": "pt"}, device)
        return folder
    size = torch.tensor([], dtype=dtype).element_size()
    weight_map = {}
    for i, keys in enumerate(groups, 1):
        name = f"{stem}-{i:05d}-of-{len(groups):05d}.safetensors"
        write_safetensors(folder / name, {k: shapes[k] for k in keys}, dtype, spec, component, {"format": "pt"},
                          device)
        weight_map.update({k: name for k in keys})
    index = {"metadata": {"total_size": sum(t.numel() * size for t in shapes.values())}, "weight_map": weight_map}
    tm._write_json(index, folder / f"{stem}.safetensors.index.json")
    return folder


def write_transformer_folder(folder, spec: tm.TinySpec, dtype=torch.bfloat16, max_bytes: int = 2 * GiB,
                             device="cpu") -> Path:
    """The DPIR transformer as the authors' ``save_pretrained`` folder (config.json + shards + index)."""
    folder = Path(folder)
    tm._write_json(tm.transformer_config(spec), folder / "config.json")
    return write_sharded(folder, transformer_shapes(spec), dtype, spec, "transformer", max_bytes, device=device)


def write_vae_folder(folder, spec: tm.TinySpec, dtype=torch.float32, full: bool = True, device="cpu") -> Path:
    """The robust VAE as a diffusers ``AutoencoderKL`` folder (one file, like the release's save_pretrained):
    its own encoder, the stock SD3 VAE's decoder (the release fine-tuned the encoder only)."""
    folder = Path(folder)
    tm._write_json(tm.vae_config(spec, full), folder / "config.json")

    def component(key):
        return "robust_vae" if key.startswith("encoder.") else "sd3_vae"

    write_safetensors(folder / "diffusion_pytorch_model.safetensors", vae_shapes(spec, full), dtype, spec, component,
                      {"format": "pt"}, device)
    return folder


def write_t5_embedding(path, spec: tm.TinySpec, length: int = tm.T5_MAX_LENGTH) -> Path:
    """A (1, length, T5 width) embedding file, key ``t5_embedding``, fp32, values of a T5 output's scale."""
    from safetensors.torch import save_file

    gen = torch.Generator().manual_seed(spec.seed)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file({"t5_embedding": 0.2 * torch.randn(1, length, spec.t5_d_model, generator=gen)}, str(path))
    return path


def write_model_set(root, size: str = "sd3-medium", t5xxl: bool = False, shard_gb: float = 2.0,
                    log=None, device="cpu") -> dict[str, Path]:
    """Every file of the shipped workflows under ``root`` (see the module doc); returns named paths.
    ``device``: where the values are generated ("cuda" on a GPU machine: much faster)."""
    root, spec = Path(root), spec_for(size)
    steps = [
        ("transformer", root / "dpir" / "transformer",
         lambda p: write_transformer_folder(p, spec, max_bytes=int(shard_gb * GiB), device=device)),
        ("robust_vae", root / "dpir" / "robust_vae", lambda p: write_vae_folder(p, spec, device=device)),
        ("t5_embedding", root / "dpir" / "prompt.safetensors", lambda p: write_t5_embedding(p, spec)),
        ("sd3_vae", root / "vae" / "sd3_vae.safetensors",
         lambda p: write_safetensors(p, vae_shapes(spec), torch.float16, spec, "sd3_vae", device=device)),
        ("clip_vit_b32", root / "clip_vision" / "clip_vit_b32.safetensors",
         lambda p: write_safetensors(p, clip_model_shapes(spec), torch.float32, spec, "clip_vision_1",
                                     {"format": "pt"}, device)),
        ("clip_vision_g", root / "clip_vision" / "clip_vision_g.safetensors",
         lambda p: write_safetensors(p, clip_vision_shapes(spec, 2), torch.float16, spec, "clip_vision_2",
                                     device=device)),
    ]
    if t5xxl:
        steps.append(("t5xxl", root / "text_encoders" / "t5xxl_fp16.safetensors",
                      lambda p: write_safetensors(p, t5_shapes(spec), torch.float16, spec, "t5", device=device)))
    if size != "sd3-medium":  # towers of no published geometry: a same-name config says what they are
        for which, name in ((1, "clip_vit_b32"), (2, "clip_vision_g")):
            steps.append((f"{name}_config", root / "clip_vision" / f"{name}.json", lambda p, w=which: p.write_text(
                tm.clip_vision_config(spec, w).to_json_string()) and p))
    paths = {}
    for name, path, write in steps:
        t0 = time.perf_counter()
        paths[name] = write(path)
        if log:
            files = [path] if path.is_file() else sorted(path.iterdir())
            log(f"{name}: {sum(f.stat().st_size for f in files) / GiB:.2f} GiB in {time.perf_counter() - t0:.1f} s")
    return paths


def extra_model_paths(root) -> dict:
    """The extra_model_paths mapping that points ComfyUI at a set written by ``write_model_set``."""
    return {"dpir_real": {"base_path": str(Path(root)), "dpir": "dpir", "vae": "vae", "clip_vision": "clip_vision",
                          "text_encoders": "text_encoders"}}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", default="sd3-medium", choices=["tiny", "small", "sd3-medium"])
    ap.add_argument("--t5xxl", action="store_true", help="also T5-XXL (4.7 B parameters, 9.5 GB fp16)")
    ap.add_argument("--shard-gb", type=float, default=2.0, help="transformer shard size in GiB")
    ap.add_argument("--device", default="cpu", help="where to generate the values (cuda: much faster)")
    args = ap.parse_args()
    write_model_set(args.out, args.size, args.t5xxl, args.shard_gb, log=lambda m: print(m, file=sys.stderr),
                    device=args.device)


if __name__ == "__main__":
    main()
