"""Tests of the tiny-model factory itself (tests/tiny_models.py).

They prove that every layout the factory writes is readable by the real
libraries (diffusers, transformers, safetensors, torch), that the inverse key
mappings are exact inverses of diffusers' / ComfyUI's converters, that all
layouts hold identical tensors, and that values are deterministic per seed and
not degenerate. ComfyUI checks run only when a host copy exists
(``$COMFYUI_PATH`` or ``~/comfy/ComfyUI``).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import pickle
import sys
import types
from pathlib import Path

import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import tiny_models as tm

SPEC = tm.TinySpec()
COMFY_ROOT = Path(os.environ.get("COMFYUI_PATH") or Path.home() / "comfy" / "ComfyUI")


# ---------------------------------------------------------------------------
# fixtures / helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory) -> dict[str, Path]:
    return tm.build_all(tmp_path_factory.mktemp("tiny_set"), SPEC)


@pytest.fixture(scope="module")
def comfy():
    """ComfyUI's converters (CPU mode), or skip when no host copy exists."""
    if not (COMFY_ROOT / "comfy" / "model_detection.py").is_file():
        pytest.skip("no ComfyUI host copy")
    if str(COMFY_ROOT) not in sys.path:
        sys.path.append(str(COMFY_ROOT))
    import comfy.cli_args

    if "comfy.model_management" not in sys.modules:
        comfy.cli_args.args.cpu = True
    import comfy.clip_vision
    import comfy.diffusers_convert
    import comfy.model_detection
    import comfy.utils

    return types.SimpleNamespace(
        model_detection=comfy.model_detection,
        utils=comfy.utils,
        clip_vision=comfy.clip_vision,
        diffusers_convert=comfy.diffusers_convert,
    )


def assert_same_tensors(a: dict, b: dict, what: str = ""):
    assert sorted(a) == sorted(b), f"{what}: key sets differ: {sorted(set(a) ^ set(b))[:8]}"
    for k in a:
        assert a[k].shape == b[k].shape, f"{what}: {k} shape {a[k].shape} != {b[k].shape}"
        assert a[k].dtype == b[k].dtype, f"{what}: {k} dtype {a[k].dtype} != {b[k].dtype}"
        assert torch.equal(a[k], b[k]), f"{what}: {k} differs"


def read_diffusers_folder(folder: Path) -> dict:
    index = folder / "diffusion_pytorch_model.safetensors.index.json"
    if not index.exists():
        return load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    sd = {}
    for shard in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        sd.update(load_file(str(folder / shard)))
    return sd


def sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def dit_inputs(spec=SPEC, batch=1, h=16, w=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return dict(
        hidden_states=torch.randn(batch, spec.in_channels, h, w, generator=g),
        encoder_hidden_states=torch.randn(batch, 5, spec.joint_attention_dim, generator=g),
        pooled_projections=torch.randn(batch, spec.pooled_projection_dim, generator=g),
        timestep=torch.tensor([500.0] * batch),
    )


# ---------------------------------------------------------------------------
# spec
# ---------------------------------------------------------------------------


def test_spec_defaults_and_validation():
    assert SPEC.hidden == 128 == 64 * SPEC.num_layers
    assert SPEC.control_widths == (16, 32, 128)
    assert SPEC.clip1.num_tokens == 50 and SPEC.clip2.num_tokens == 257
    assert SPEC.pooled_projection_dim == SPEC.clip1.hidden_size + SPEC.clip2.projection_dim
    with pytest.raises(ValueError):
        tm.TinySpec(num_attention_heads=3)  # hidden 192 != 64 * 2
    deeper = tm.TinySpec(num_layers=3, num_attention_heads=3, caption_projection_dim=192)
    assert deeper.hidden == 192
    assert hash(SPEC) == hash(tm.TinySpec()) and SPEC.digest() == tm.TinySpec().digest()
    assert tm.TinySpec(seed=1).digest() != SPEC.digest()


# ---------------------------------------------------------------------------
# transformer
# ---------------------------------------------------------------------------


def test_transformer_folder_loads_in_diffusers(tiny_set):
    from diffusers import SD3Transformer2DModel

    ref = tm.build_transformer(SPEC)
    x = dit_inputs()
    with torch.no_grad():
        want = ref(**x).sample
    for key in ("transformer_folder", "transformer_folder_sharded"):
        loaded = SD3Transformer2DModel.from_pretrained(str(tiny_set[key])).eval()  # control_conv ignored
        assert loaded.config.num_layers == SPEC.num_layers
        assert loaded.config.num_attention_heads == SPEC.num_attention_heads
        got_sd = loaded.state_dict()
        for k, v in tm.transformer_state_dict(SPEC, with_control=False).items():
            assert torch.equal(got_sd[k], v), (key, k)
        with torch.no_grad():  # same parameters; memory alignment may change the last bits
            torch.testing.assert_close(loaded(**x).sample, want, rtol=0, atol=1e-5)
    assert want.shape == (1, SPEC.out_channels, 16, 16)


def test_transformer_folder_format(tiny_set):
    folder = tiny_set["transformer_folder"]
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg == tm.transformer_config(SPEC)
    assert cfg["_class_name"] == "SD3Transformer2DModel" and cfg["_diffusers_version"] == "0.29.2"
    assert (folder / "config.json").read_text().endswith("}\n")
    sharded = tiny_set["transformer_folder_sharded"]
    index = json.loads((sharded / "diffusion_pytorch_model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) >= 2
    assert all(s.startswith("diffusion_pytorch_model-0000") and s.endswith(f"-of-0000{len(shards)}.safetensors")
               for s in shards)
    assert sorted(p.name for p in sharded.glob("*.safetensors")) == shards
    sd = tm.transformer_state_dict(SPEC)
    assert index["metadata"]["total_size"] == sum(v.numel() * v.element_size() for v in sd.values())
    assert set(index["weight_map"]) == set(sd)
    from safetensors import safe_open

    with safe_open(str(folder / "diffusion_pytorch_model.safetensors"), "pt") as f:
        assert f.metadata() == {"format": "pt"}


def test_transformer_layouts_hold_identical_tensors(tiny_set):
    ref = tm.transformer_state_dict(SPEC)
    assert set(tm.CONTROL_CONV_KEYS) <= set(ref)
    assert_same_tensors(read_diffusers_folder(tiny_set["transformer_folder"]), ref, "folder")
    assert_same_tensors(read_diffusers_folder(tiny_set["transformer_folder_sharded"]), ref, "sharded")
    assert_same_tensors(load_file(str(tiny_set["transformer_diffusers"])), ref, "diffusers file")
    no_ctl = {k: v for k, v in ref.items() if not k.startswith("control_conv.")}
    assert_same_tensors(load_file(str(tiny_set["transformer_diffusers_no_control"])), no_ctl, "no control")
    assert_same_tensors(torch.load(tiny_set["transformer_pth"], weights_only=True), ref, "pth")
    mod = torch.load(tiny_set["transformer_pth_module"], weights_only=True)
    assert all(k.startswith("module.") for k in mod)
    assert_same_tensors({k.removeprefix("module."): v for k, v in mod.items()}, ref, "module pth")
    assert_same_tensors(load_file(str(tiny_set["control_conv"])), {k: ref[k] for k in tm.CONTROL_CONV_KEYS}, "lq")


def test_mmdit_file_roundtrips_through_diffusers_converter(tiny_set):
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers

    ref = tm.transformer_state_dict(SPEC, with_control=False)
    ctl = tm.control_conv_state_dict(SPEC)
    for key, prefix in (("transformer_mmdit", ""), ("transformer_mmdit_prefixed", "model.diffusion_model."),
                        ("transformer_mmdit_no_control", "")):
        mmdit = load_file(str(tiny_set[key]))
        assert all(k.startswith(prefix) for k in mmdit)
        assert prefix + "joint_blocks.0.x_block.attn.qkv.weight" in mmdit
        assert prefix + "final_layer.linear.weight" in mmdit and prefix + "y_embedder.mlp.0.weight" in mmdit
        last = SPEC.num_layers - 1
        # the last context block is pre-only: adaLN (shift, scale) and qkv, no proj / mlp
        assert prefix + f"joint_blocks.{last}.context_block.attn.proj.weight" not in mmdit
        assert prefix + f"joint_blocks.{last}.context_block.mlp.fc1.weight" not in mmdit
        assert mmdit[prefix + f"joint_blocks.{last}.context_block.adaLN_modulation.1.weight"].shape[0] == 2 * SPEC.hidden
        converted = convert_sd3_transformer_checkpoint_to_diffusers(dict(mmdit))
        assert_same_tensors(converted, ref, key)
        left = {k.removeprefix(prefix): v for k, v in mmdit.items() if "control_conv" in k}
        if key.endswith("no_control"):
            assert not left
        else:
            assert_same_tensors(left, ctl, key + " control_conv")


def test_diffusers_to_mmdit_rejects_unknown_keys():
    sd = tm.transformer_state_dict(SPEC, with_control=False)
    sd["something.else"] = torch.zeros(1)
    with pytest.raises(KeyError):
        tm.diffusers_to_mmdit(sd)


def test_mmdit_matches_comfyui(tiny_set, comfy):
    mmdit = load_file(str(tiny_set["transformer_mmdit"]))
    cfg = comfy.model_detection.detect_unet_config(mmdit, "")
    assert cfg["depth"] == SPEC.num_layers
    assert cfg["in_channels"] == SPEC.in_channels and cfg["patch_size"] == SPEC.patch_size
    assert cfg["out_channels"] == SPEC.out_channels
    assert cfg["adm_in_channels"] == SPEC.pooled_projection_dim
    assert cfg["pos_embed_max_size"] == SPEC.pos_embed_max_size
    assert cfg["context_embedder_config"]["params"] == {
        "in_features": SPEC.joint_attention_dim, "out_features": SPEC.hidden}
    prefixed = load_file(str(tiny_set["transformer_mmdit_prefixed"]))
    assert comfy.model_detection.detect_unet_config(prefixed, "model.diffusion_model.")["depth"] == SPEC.num_layers
    # ComfyUI's diffusers -> MMDiT conversion (utils.mmdit_to_diffusers key map) gives our file
    diffusers_sd = dict(tm.transformer_state_dict(SPEC))
    out = comfy.model_detection.convert_diffusers_mmdit(diffusers_sd, "")
    assert sorted(diffusers_sd) == sorted(tm.CONTROL_CONV_KEYS)  # what ComfyUI leaves over
    assert_same_tensors(out, {k: v for k, v in mmdit.items() if not k.startswith("control_conv.")}, "comfy")


def test_transformer_is_not_degenerate():
    model = tm.build_transformer(SPEC)
    for name, p in model.named_parameters():
        assert p.std() > 0 if p.numel() > 1 else p.abs() > 0, name
        assert p.abs().max() > 0, name
    x = dit_inputs()
    with torch.no_grad():
        base = model(**x).sample
        assert base.std() > 1e-3
        for k in ("hidden_states", "encoder_hidden_states", "pooled_projections"):
            y = dict(x)
            y[k] = x[k] + 0.5
            assert not torch.allclose(model(**y).sample, base), k
        y = dict(x, timestep=torch.tensor([100.0]))
        assert not torch.allclose(model(**y).sample, base)
    # the proj_out / adaLN layers diffusers zero-initialises are random here
    sd = tm.transformer_state_dict(SPEC)
    for k in ("proj_out.weight", "norm_out.linear.weight", "transformer_blocks.0.norm1.linear.weight"):
        assert sd[k].abs().min() >= 0 and sd[k].std() > 0.01, k


def test_control_conv_module():
    conv = tm.build_control_conv(SPEC)
    assert [type(m).__name__ for m in conv] == ["Conv2d", "GroupNorm"] * 3
    assert conv[0].in_channels == 16 and conv[2].stride == (2, 2) and conv[4].out_channels == SPEC.hidden
    assert (conv[1].num_groups, conv[3].num_groups, conv[5].num_groups) == (4, 8, 8)
    z = torch.randn(2, 16, 12, 10)
    with torch.no_grad():
        c = conv(z)
    assert c.shape == (2, SPEC.hidden, 6, 5)
    assert not torch.allclose(conv[5].weight, torch.ones_like(conv[5].weight))


# ---------------------------------------------------------------------------
# pickles
# ---------------------------------------------------------------------------


def test_malicious_pth_is_refused_and_really_malicious(tiny_set, tmp_path):
    marker = tiny_set["malicious_marker"]
    with pytest.raises(pickle.UnpicklingError):
        torch.load(tiny_set["malicious_pth"], weights_only=True)
    assert not marker.exists()
    # prove the payload works (so tests that rely on the refusal mean something)
    own_marker = tmp_path / "ran"
    path = tm.write_malicious_pth(tmp_path / "evil.pth", own_marker)
    torch.load(path, weights_only=False)
    assert own_marker.read_text() == "pwned"


# ---------------------------------------------------------------------------
# VAE
# ---------------------------------------------------------------------------


def test_vae_folders_load_in_diffusers(tiny_set):
    from diffusers import AutoencoderKL

    stock = AutoencoderKL.from_pretrained(str(tiny_set["vae_stock_folder"])).eval()
    robust = AutoencoderKL.from_pretrained(str(tiny_set["vae_robust_folder"])).eval()
    assert stock.config.shift_factor == 0.0609 and stock.config.scaling_factor == 1.5305
    assert stock.config.latent_channels == 16 and stock.quant_conv is None and stock.post_quant_conv is None
    assert_same_tensors(stock.state_dict(), tm.vae_state_dict(SPEC), "stock")
    assert_same_tensors(robust.state_dict(), tm.vae_state_dict(SPEC, robust=True), "robust")
    x = torch.rand(1, 3, 32, 48, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        z_stock = stock.encode(x).latent_dist.mode()
        z_robust = robust.encode(x).latent_dist.mode()
        assert z_stock.shape == (1, 16, 4, 6)
        assert (z_stock - z_robust).abs().mean() > 1e-2  # other encoder
        assert torch.equal(stock.decode(z_stock).sample, robust.decode(z_stock).sample)  # same decoder
        assert stock.decode(z_stock).sample.shape == x.shape
        ref = tm.build_vae(SPEC, robust=True)
        assert torch.equal(ref.encode(x).latent_dist.mode(), z_robust)


def test_vae_layouts_and_ldm_roundtrip(tiny_set):
    from diffusers.loaders.single_file_utils import convert_ldm_vae_checkpoint

    cfg = tm.vae_config(SPEC)
    for robust, name in ((False, "stock"), (True, "robust")):
        ref = tm.vae_state_dict(SPEC, robust=robust)
        assert_same_tensors(load_file(str(tiny_set[f"vae_{name}_diffusers"])), ref, name)
        ldm = load_file(str(tiny_set[f"vae_{name}_ldm"]))
        assert "encoder.down.0.block.0.norm1.weight" in ldm and "decoder.up.0.block.0.norm1.weight" in ldm
        assert "encoder.down.1.block.0.nin_shortcut.weight" in ldm  # channel change 32 -> 64
        assert "decoder.up.0.block.0.nin_shortcut.weight" in ldm  # 64 -> 32 (last diffusers up block)
        assert "encoder.norm_out.weight" in ldm and "decoder.mid.attn_1.q.weight" in ldm
        assert ldm["encoder.mid.attn_1.q.weight"].ndim == 4  # 1x1 conv shape as in LDM files
        assert not any("quant_conv" in k for k in ldm)
        assert_same_tensors(convert_ldm_vae_checkpoint(dict(ldm), cfg), ref, name + " ldm")
        pre = tm.diffusers_vae_to_ldm(ref, prefix="first_stage_model.")
        assert_same_tensors(convert_ldm_vae_checkpoint(pre, cfg), ref, name + " prefixed ldm")
    enc = tm.vae_state_dict(SPEC, robust=True, encoder_only=True)
    assert enc and all(k.startswith("encoder.") for k in enc)
    assert_same_tensors(load_file(str(tiny_set["vae_robust_encoder_diffusers"])), enc, "encoder only")
    enc_ldm = load_file(str(tiny_set["vae_robust_encoder_ldm"]))
    assert all(k.startswith("encoder.") for k in enc_ldm)
    assert_same_tensors(convert_ldm_vae_checkpoint(dict(enc_ldm), cfg), enc, "encoder only ldm")
    stock, robust = tm.vae_state_dict(SPEC), tm.vae_state_dict(SPEC, robust=True)
    for k in stock:
        if k.startswith("decoder."):
            assert torch.equal(stock[k], robust[k])
        elif k.endswith("weight") and stock[k].numel() > 1:
            assert not torch.equal(stock[k], robust[k]), k


def test_vae_ldm_matches_comfyui(comfy):
    for robust in (False, True):
        sd = tm.vae_state_dict(SPEC, robust=robust)
        # ComfyUI's converter hard-codes SD-family block counts; compare on the keys it maps
        theirs = comfy.diffusers_convert.convert_vae_state_dict(dict(sd))
        ours = tm.diffusers_vae_to_ldm(sd)
        assert_same_tensors(theirs, ours, "comfy vae")


def test_sai_checkpoint(tiny_set):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_vae_checkpoint,
        convert_sd3_transformer_checkpoint_to_diffusers,
    )

    sd = load_file(str(tiny_set["sai_checkpoint"]))
    assert {k.split(".")[0] for k in sd} == {"model", "first_stage_model"}
    dit = {k: v for k, v in sd.items() if k.startswith("model.diffusion_model.")}
    assert_same_tensors(
        convert_sd3_transformer_checkpoint_to_diffusers(dict(dit)), tm.transformer_state_dict(SPEC, False), "sai dit"
    )
    vae = {k: v for k, v in sd.items() if k.startswith("first_stage_model.")}
    assert_same_tensors(convert_ldm_vae_checkpoint(vae, tm.vae_config(SPEC)), tm.vae_state_dict(SPEC), "sai vae")


def test_full_vae_layout_matches_sd3():
    """The full-layout VAE (opt-in; ~84 M params) has SD3's exact shapes.

    Checked on the meta device (no weights generated) to stay fast; the weights
    are generated by ``vae_state_dict(full=True)`` / ``build_all(full_vae=True)``.
    """
    from diffusers import AutoencoderKL

    cfg = {k: v for k, v in tm.vae_config(SPEC, full=True).items() if not k.startswith("_")}
    assert cfg["block_out_channels"] == [128, 256, 512, 512] and cfg["layers_per_block"] == 2
    with torch.device("meta"):
        model = AutoencoderKL(**cfg)
    n = sum(p.numel() for p in model.parameters())
    assert 83_000_000 < n < 85_000_000
    ldm_keys = tm.diffusers_vae_to_ldm({k: v for k, v in model.state_dict().items()})
    assert "decoder.up.3.block.2.conv2.weight" in ldm_keys and "encoder.down.3.block.1.conv2.weight" in ldm_keys


@pytest.mark.skipif(not os.environ.get("DPIR_FULL_VAE_TESTS"), reason="set DPIR_FULL_VAE_TESTS=1 (slow: ~84M params)")
def test_full_vae_files(tmp_path, comfy):
    folder = tm.write_vae_folder(tmp_path / "vae_full", SPEC, robust=True, full=True)
    sd = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in sd.values())
    assert_same_tensors({k: v.float() for k, v in sd.items()}, tm.vae_state_dict(SPEC, robust=True, full=True), "full")
    from diffusers import AutoencoderKL

    loaded = AutoencoderKL.from_pretrained(str(folder), torch_dtype=torch.float32).eval()
    with torch.no_grad():
        z = loaded.encode(torch.zeros(1, 3, 64, 64)).latent_dist.mode()
    assert z.shape == (1, 16, 8, 8) and torch.isfinite(z).all()
    import comfy.sd

    ldm = load_file(str(tm.write_vae_file(tmp_path / "full_ldm.safetensors", SPEC, full=True, naming="ldm")))
    vae = comfy.sd.VAE(sd=ldm)
    assert vae.latent_channels == 16


# ---------------------------------------------------------------------------
# CLIP vision
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("which,tokens", [(1, 50), (2, 257)])
def test_clip_vision_folder_loads_in_transformers(tiny_set, which, tokens):
    from transformers import CLIPVisionModelWithProjection

    c = SPEC.clip(which)
    loaded = CLIPVisionModelWithProjection.from_pretrained(str(tiny_set[f"clip{which}_folder"])).eval()
    cfg = json.loads((tiny_set[f"clip{which}_folder"] / "config.json").read_text())
    assert cfg["model_type"] == "clip_vision_model" and cfg["patch_size"] == c.patch_size
    assert "torch_dtype" in cfg and "dtype" not in cfg  # 4.x-style config
    assert (tiny_set[f"clip{which}_folder"] / "preprocessor_config.json").is_file()
    pixels = torch.randn(2, 3, 224, 224, generator=torch.Generator().manual_seed(which))
    with torch.no_grad():
        out = loaded(pixel_values=pixels)
        ref = tm.build_clip_vision(SPEC, which)(pixel_values=pixels)
    assert out.last_hidden_state.shape == (2, tokens, c.hidden_size)
    assert out.image_embeds.shape == (2, c.projection_dim)
    assert torch.equal(out.last_hidden_state, ref.last_hidden_state)
    assert torch.equal(out.image_embeds, ref.image_embeds)
    assert out.image_embeds.std() > 1e-3 and not torch.allclose(out.image_embeds[0], out.image_embeds[1])


@pytest.mark.parametrize("which", [1, 2])
def test_clip_vision_files(tiny_set, which):
    ref = tm.clip_vision_state_dict(SPEC, which)
    assert "visual_projection.weight" in ref and "vision_model.pre_layrnorm.weight" in ref
    assert_same_tensors(load_file(str(tiny_set[f"clip{which}_folder"] / "model.safetensors")), ref, "folder")
    assert_same_tensors(load_file(str(tiny_set[f"clip{which}_hf"])), ref, "hf file")
    oa = load_file(str(tiny_set[f"clip{which}_openai"]))
    c = SPEC.clip(which)
    assert oa["visual.conv1.weight"].shape == (c.hidden_size, 3, c.patch_size, c.patch_size)
    assert oa["visual.class_embedding"].shape == (c.hidden_size,)
    assert oa["visual.positional_embedding"].shape == (c.num_tokens, c.hidden_size)
    assert oa["visual.proj"].shape == (c.hidden_size, c.projection_dim)
    assert oa["visual.transformer.resblocks.0.attn.in_proj_weight"].shape == (3 * c.hidden_size, c.hidden_size)
    assert "visual.ln_pre.weight" in oa and "visual.ln_post.bias" in oa
    assert "visual.transformer.resblocks.1.mlp.c_proj.weight" in oa
    # independent inverse: OpenAI -> HF
    back = {}
    for k, v in oa.items():
        k2 = k.removeprefix("visual.")
        if k2.startswith("transformer.resblocks."):
            i, rest = k2.split(".")[2], ".".join(k2.split(".")[3:])
            dst = f"vision_model.encoder.layers.{i}."
            if rest.startswith("attn.in_proj_"):
                end = rest.rsplit("_", 1)[1]
                for n, part in zip("qkv", v.chunk(3, 0)):
                    back[f"{dst}self_attn.{n}_proj.{end}"] = part
                continue
            rest = (rest.replace("ln_1", "layer_norm1").replace("ln_2", "layer_norm2")
                    .replace("mlp.c_fc", "mlp.fc1").replace("mlp.c_proj", "mlp.fc2")
                    .replace("attn.out_proj", "self_attn.out_proj"))
            back[dst + rest] = v
        else:
            name = {
                "class_embedding": "vision_model.embeddings.class_embedding",
                "conv1.weight": "vision_model.embeddings.patch_embedding.weight",
                "positional_embedding": "vision_model.embeddings.position_embedding.weight",
                "ln_pre.weight": "vision_model.pre_layrnorm.weight",
                "ln_pre.bias": "vision_model.pre_layrnorm.bias",
                "ln_post.weight": "vision_model.post_layernorm.weight",
                "ln_post.bias": "vision_model.post_layernorm.bias",
                "proj": "visual_projection.weight",
            }[k2]
            back[name] = v.t() if k2 == "proj" else v
    assert_same_tensors(back, ref, "openai inverse")


@pytest.mark.parametrize("which", [1, 2])
def test_clip_openai_matches_comfyui(tiny_set, comfy, which):
    oa = load_file(str(tiny_set[f"clip{which}_openai"]))
    hf = comfy.clip_vision.convert_to_transformers(dict(oa), "visual.")
    assert_same_tensors({k: v.contiguous() for k, v in hf.items()}, tm.clip_vision_state_dict(SPEC, which), "comfy")


def test_clip_full_clipmodel_folder(tmp_path):
    from transformers import CLIPVisionModelWithProjection

    folder = tm.write_clip_vision_folder(tmp_path / "clip", SPEC, 1, full_clip_model=True)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["model_type"] == "clip" and cfg["architectures"] == ["CLIPModel"]
    sd = load_file(str(folder / "model.safetensors"))
    assert any(k.startswith("text_model.") for k in sd) and "logit_scale" in sd
    vis = CLIPVisionModelWithProjection.from_pretrained(str(folder)).eval()
    assert_same_tensors(
        {k: v for k, v in vis.state_dict().items() if not k.endswith("position_ids")},
        tm.clip_vision_state_dict(SPEC, 1), "clipmodel vision part",
    )


# ---------------------------------------------------------------------------
# T5
# ---------------------------------------------------------------------------


def test_t5_folder_loads_in_transformers(tiny_set):
    from transformers import AutoTokenizer, T5EncoderModel, T5TokenizerFast

    folder = tiny_set["t5_folder"]
    model = T5EncoderModel.from_pretrained(str(folder)).eval()
    tok = AutoTokenizer.from_pretrained(str(folder))
    tok_fast = T5TokenizerFast.from_pretrained(str(folder))
    prompt = "a photo of a cat, sharp details"
    enc = tok(prompt, padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    ids = enc.input_ids
    assert ids.shape == (1, 256)
    n = int(enc.attention_mask.sum())
    assert 3 < n < 256
    assert ids[0, n - 1] == 1 and (ids[0, n:] == 0).all() and (ids[0, : n - 1] > 2).all()  # eos, pad
    assert tok.pad_token_id == 0 and tok.eos_token_id == 1 and tok.unk_token_id == 2
    assert torch.equal(tok_fast(prompt, return_tensors="pt").input_ids, ids[:, :n])
    assert tok.convert_tokens_to_ids("<extra_id_0>") > 2
    long = tok("word " * 400, padding="max_length", max_length=256, truncation=True).input_ids
    assert len(long) == 256 and long[-1] == 1
    ref_tok = tm.build_t5_tokenizer(SPEC)
    assert ref_tok(prompt).input_ids == tok(prompt).input_ids
    with torch.no_grad():
        out = model(ids)[0]
        ref = tm.build_t5(SPEC)(ids)[0]
        hi = model(torch.tensor([[SPEC.t5_vocab_size - 1, 32099, 1]]))[0]  # real T5 ids fit
    assert torch.equal(out, ref)
    assert out.shape == (1, 256, SPEC.t5_d_model) and hi.shape == (1, 3, SPEC.t5_d_model)
    # embed_tokens is the file's shared.weight (tied), not a fresh random table
    assert torch.equal(model.encoder.embed_tokens.weight, tm.t5_state_dict(SPEC)["shared.weight"])
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["architectures"] == ["T5EncoderModel"] and "torch_dtype" in cfg
    assert {p.name for p in folder.iterdir()} >= {
        "config.json", "model.safetensors", "spiece.model", "tokenizer.json", "tokenizer_config.json",
        "special_tokens_map.json",
    }


def test_t5_sentencepiece_model_agrees():
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_proto=tm._spm_model(SPEC.t5_tokenizer_vocab_size))
    assert (sp.pad_id(), sp.eos_id(), sp.unk_id(), sp.bos_id()) == (0, 1, 2, -1)
    tok = tm.build_t5_tokenizer(SPEC)
    text = "the quick brown fox on a sofa"
    assert tok(text).input_ids == sp.encode(text) + [1]


def test_t5_files(tiny_set):
    ref = tm.t5_state_dict(SPEC)
    assert "shared.weight" in ref and "encoder.embed_tokens.weight" not in ref
    assert ref["shared.weight"].shape == (32128, SPEC.t5_d_model)
    assert_same_tensors(load_file(str(tiny_set["t5_file"])), ref, "t5 file")
    assert_same_tensors(load_file(str(tiny_set["t5_folder"] / "model.safetensors")), ref, "t5 folder")


def test_t5_embedding_files(tiny_set):
    from transformers import AutoTokenizer, T5EncoderModel

    st = load_file(str(tiny_set["t5_embedding"]))
    assert list(st) == ["t5_embedding"]
    emb = st["t5_embedding"]
    assert emb.shape == (1, 256, SPEC.t5_d_model) and emb.dtype == torch.float32
    assert torch.equal(torch.load(tiny_set["t5_embedding_pt"], weights_only=True), emb)
    folder = tiny_set["t5_folder"]
    tok = AutoTokenizer.from_pretrained(str(folder))
    ids = tok("a photo of a cat", padding="max_length", max_length=256, truncation=True, return_tensors="pt")
    with torch.no_grad():
        want = T5EncoderModel.from_pretrained(str(folder)).eval()(ids.input_ids)[0]
    assert torch.equal(emb, want)
    assert not torch.equal(tm.t5_embedding(SPEC, "a dog on the beach"), emb)


# ---------------------------------------------------------------------------
# bad files
# ---------------------------------------------------------------------------


def test_bad_files(tiny_set):
    for key in ("bad_truncated", "bad_lying_header_offsets", "bad_lying_header_shape", "bad_lying_header_size"):
        with pytest.raises(SafetensorError):
            load_file(str(tiny_set[key]))
    sdxl = load_file(str(tiny_set["bad_sdxl_unet"]))
    assert {"model.diffusion_model.input_blocks.0.0.weight", "model.diffusion_model.time_embed.0.weight",
            "model.diffusion_model.label_emb.0.0.weight"} <= set(sdxl)
    for key, qkv in (("bad_control_width_mismatch", "transformer_blocks.0.attn.to_q.weight"),
                     ("bad_control_width_mismatch_mmdit", "joint_blocks.0.x_block.attn.qkv.weight")):
        sd = load_file(str(tiny_set[key]))
        assert qkv in sd
        assert sd["control_conv.4.weight"].shape[0] == SPEC.hidden // 2 != SPEC.hidden
        assert sd["control_conv.5.weight"].shape == (SPEC.hidden // 2,)


# ---------------------------------------------------------------------------
# determinism, non-degeneracy, build_all
# ---------------------------------------------------------------------------


def test_determinism_per_seed(tmp_path):
    a = tm.write_transformer_file(tmp_path / "a.safetensors", SPEC)
    b = tm.write_transformer_file(tmp_path / "b.safetensors", tm.TinySpec())
    assert sha(a) == sha(b)
    # regenerating from scratch (bypassing the cache) gives the same values
    cached = tm.transformer_state_dict(SPEC, with_control=False)
    assert_same_tensors(tm._transformer_sd.__wrapped__(SPEC), cached, "regenerated")
    assert_same_tensors(tm._clip_sd.__wrapped__(SPEC, 2), tm.clip_vision_state_dict(SPEC, 2), "clip regenerated")
    other = tm.transformer_state_dict(tm.TinySpec(seed=1))
    assert not torch.equal(other["proj_out.weight"], cached["proj_out.weight"])
    assert not torch.equal(tm.t5_state_dict(tm.TinySpec(seed=1))["shared.weight"], tm.t5_state_dict(SPEC)["shared.weight"])
    # changing the global RNG does not change the models
    torch.manual_seed(1234)
    assert torch.equal(tm.build_control_conv(SPEC)[0].weight, tm.control_conv_state_dict(SPEC)["control_conv.0.weight"])


def test_factory_leaves_global_rng_alone(tmp_path):
    spec = tm.TinySpec(seed=7)  # not cached yet: everything is generated here
    torch.manual_seed(0)
    want = torch.randn(4)
    torch.manual_seed(0)
    tm.build_transformer(spec)
    tm.build_control_conv(spec)
    tm.build_vae(spec, robust=True)
    tm.build_clip_vision(spec, 2)
    tm.build_t5(spec)
    tm.write_clip_vision_folder(tmp_path / "clip", spec, 1, full_clip_model=True)
    tm.write_t5_embedding(tmp_path / "e.safetensors", spec, "a dog")
    assert torch.equal(torch.randn(4), want)


def test_getters_return_copies():
    a = tm.transformer_state_dict(SPEC)
    a["proj_out.weight"].zero_()
    assert tm.transformer_state_dict(SPEC)["proj_out.weight"].abs().sum() > 0
    b = tm.mmdit_state_dict(SPEC)
    b["final_layer.linear.weight"].zero_()
    assert tm.mmdit_state_dict(SPEC)["final_layer.linear.weight"].abs().sum() > 0


def test_state_dicts_are_not_degenerate():
    dicts = {  # copy=False: read-only look at the cached tensors
        "transformer": tm.transformer_state_dict(SPEC, copy=False),
        "vae": tm.vae_state_dict(SPEC, robust=True, copy=False),
        "clip1": tm.clip_vision_state_dict(SPEC, 1, copy=False),
        "clip2": tm.clip_vision_state_dict(SPEC, 2, copy=False),
        "t5": tm.t5_state_dict(SPEC, copy=False),
    }
    for name, sd in dicts.items():
        for k, v in sd.items():
            assert v.dtype == torch.float32, (name, k)
            assert torch.isfinite(v).all(), (name, k)
            if v.numel() > 1:
                assert v.std() > 1e-3, (name, k)
            assert torch.equal(v, v.half().float()), (name, k)  # fp16-representable
    gn = dicts["transformer"]["control_conv.5.weight"]
    assert (gn - 1).abs().max() < 0.5 and gn.std() > 0.01  # norm weights ~ 1 + noise


def test_build_all(tiny_set):
    for key, path in tiny_set.items():
        if key == "malicious_marker":
            assert not path.exists()
        else:
            assert path.exists(), key
    expected = {
        "transformer_folder", "transformer_folder_sharded", "transformer_diffusers", "transformer_mmdit",
        "transformer_mmdit_prefixed", "control_conv", "transformer_pth", "transformer_pth_module", "malicious_pth",
        "vae_stock_folder", "vae_robust_folder", "vae_stock_ldm", "vae_robust_ldm", "vae_robust_encoder_diffusers",
        "vae_robust_encoder_ldm", "clip1_folder", "clip2_folder", "clip1_hf", "clip1_openai", "clip2_openai",
        "t5_folder", "t5_file", "t5_embedding", "t5_embedding_pt", "bad_truncated", "bad_sdxl_unet",
        "bad_control_width_mismatch", "sai_checkpoint",
    }
    assert expected <= set(tiny_set)


def test_build_all_is_reproducible_and_fast(tmp_path, tiny_set):
    import time

    t0 = time.perf_counter()
    again = tm.build_all(tmp_path / "again", SPEC)
    elapsed = time.perf_counter() - t0
    for key in ("transformer_diffusers", "transformer_mmdit", "vae_robust_ldm", "clip2_openai", "t5_file",
                "t5_embedding", "control_conv"):
        assert sha(again[key]) == sha(tiny_set[key]), key
    assert elapsed < 30  # cached models: writing only (a few seconds on a quiet machine)
