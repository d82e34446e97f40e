"""Conformance: the pack's nodes inside ComfyUI against the independent diffusers reference.

Runs ComfyUI in this process (CPU, fp32; on a GPU with DPIR_TEST_DEVICE=cuda or CUDA found: IEEE fp32 there,
see tests/host/conftest.py) on tiny official-format files; the reference runs on the CPU.
Tolerances: ComfyUI's MMDiT and diffusers' SD3Transformer2DModel are different
implementations of the same network (fused vs split q/k/v, their own
attention calls), so fp32 results agree to float rounding (~1e-6 relative)
compounded over the sampling steps; we allow 1e-4.
"""
from __future__ import annotations

import sys

import pytest
import torch

import reference
import tiny_models as tm
from host.comfy_harness import PACK_NAME, find_comfyui, host_device, pack_module

SPEC = tm.TinySpec()
HOST = find_comfyui()
pytestmark = pytest.mark.skipif(HOST.path is None, reason=f"no ComfyUI host: {HOST.reason}")


@pytest.fixture(scope="module")
def diffusers_models(pack_nodes):
    from diffusers import SD3Transformer2DModel

    return {"transformer": tm.build_transformer(SPEC), "control_conv": tm.control_conv_state_dict(SPEC),
            "vae": tm.build_vae(SPEC, robust=True, full=True), "SD3Transformer2DModel": SD3Transformer2DModel}


def reference_sample(transformer, control_sd, z_lq_raw, context, pooled, steps, seed, cfg, strength):
    """The reference's sampling loop, returning the VAE-space latent (what ComfyUI's sampler returns)."""
    z_lq = (z_lq_raw - SPEC.vae_shift_factor) * SPEC.vae_scaling_factor
    conv = reference.control_conv_from_weights(control_sd)
    latents = reference.sample_latents(transformer, conv, z_lq, context, pooled, steps, seed, cfg, strength)
    return latents / SPEC.vae_scaling_factor + SPEC.vae_shift_factor


def lq_model(nodes, z_lq_raw, strength, weight_dtype="default"):
    """The tiny DPIR MODEL from the pack's loader, with the LQ condition of ``z_lq_raw`` applied."""
    model, branch = nodes["DPIRModelLoader"]().load("transformer/diffusion_pytorch_model.safetensors", weight_dtype)
    return nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z_lq_raw}, strength, 0.0, 1.0)[0]


def sample_model(nodes, model, z_lq_raw, context, pooled, steps, seed, cfg):
    """Sampling through DPIR Sampler Patch's GUIDER, from the LQ latent, as ComfyUI runs a prompt."""
    import comfy.sample

    _, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(
        model, [[context, {"pooled_output": pooled}]], steps, cfg, 3.0)
    latent = torch.zeros_like(z_lq_raw)
    noise = comfy.sample.prepare_noise(latent, seed)
    with torch.inference_mode():
        return guider.sample(noise, latent, sampler, sigmas, seed=seed).cpu()  # on the GPU's device there


def comfy_sample(nodes, z_lq_raw, context, pooled, steps, seed, cfg, strength):
    return sample_model(nodes, lq_model(nodes, z_lq_raw, strength), z_lq_raw, context, pooled, steps, seed, cfg)


def inputs(seed=0, h=8, w=12):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(1, 16, h, w, generator=g), torch.randn(1, 333, SPEC.joint_attention_dim, generator=g),
            torch.randn(1, SPEC.pooled_projection_dim, generator=g))


@pytest.mark.parametrize("steps,cfg,strength", [(1, 1.0, 1.0), (4, 1.0, 1.0), (4, 3.0, 0.7), (2, 1.0, 0.0)])
def test_sampling_equals_reference(pack_nodes, diffusers_models, steps, cfg, strength):
    z, ctx, pooled = inputs()
    ours = comfy_sample(pack_nodes, z, ctx, pooled, steps, 11, cfg, strength)
    theirs = reference_sample(diffusers_models["transformer"], diffusers_models["control_conv"], z, ctx, pooled,
                              steps, 11, cfg, strength)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    if strength:
        plain = reference_sample(diffusers_models["transformer"], diffusers_models["control_conv"], z, ctx, pooled,
                                 steps, 11, cfg, 0.0)
        assert (ours - plain).abs().max() > 1e-2  # the LQ condition is active inside ComfyUI


def test_odd_latent_and_batch_of_two(pack_nodes, diffusers_models):
    """Odd token grids are padded by ComfyUI; two LQ images in one batch stay with their own sample."""
    z1, ctx, pooled = inputs(1, 9, 11)
    z2 = inputs(2, 9, 11)[0]
    both = comfy_sample(pack_nodes, torch.cat([z1, z2]), ctx, pooled, 2, 5, 1.0, 1.0)
    first = comfy_sample(pack_nodes, z1, ctx, pooled, 2, 5, 1.0, 1.0)
    assert both.shape == (2, 16, 9, 11) and torch.isfinite(both).all()
    # the batch's noise starts with the batch-1 noise (one generator), so sample 0 must equal the lone run:
    # its LQ features and statistics never mix with sample 1's (a GPU picks other kernels per batch size)
    tol = 1e-5 if host_device() == "cpu" else 1e-4
    torch.testing.assert_close(both[:1], first, rtol=tol, atol=tol)
    assert (both[1] - both[0]).abs().max() > 1e-2


def test_robust_vae_encode_and_decode_equal_diffusers(pack_nodes, diffusers_models):
    import comfy.sd
    import comfy.utils

    stock = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(_models_dir() / "vae" / "sd3_vae.safetensors")))
    vae = pack_nodes["DPIRRobustVAELoader"]().load("robust_vae/diffusion_pytorch_model.safetensors", vae=stock)[0]
    image = torch.rand(1, 40, 56, 3, generator=torch.Generator().manual_seed(3))  # padded to 48×64 inside
    latent, lq = pack_nodes["DPIRRobustVAEEncode"]().encode(image, vae, "keep size", 1024, 1.0)["result"]
    decoded = pack_nodes["DPIRRobustVAEDecode"]().decode(latent, vae)["result"][0]
    assert lq.shape == image.shape and decoded.shape == image.shape
    ref = diffusers_models["vae"]
    padded = torch.nn.functional.pad(image.movedim(-1, 1), (0, 8, 0, 8), mode="replicate")
    with torch.no_grad():
        z = ref.encode(padded * 2 - 1).latent_dist.mode()
        img = ((ref.decode(z).sample + 1) / 2).clamp(0, 1)[:, :, :40, :56].movedim(1, -1)
    torch.testing.assert_close(latent["samples"], z, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(decoded, img, rtol=1e-4, atol=1e-4)


def test_visual_prompt_node_equals_core(pack_nodes):
    from dpir_pack.models.dual_prompt import visual_prompt
    from dpir_pack.models.visual_encoders import load_hf_vision_encoder

    load = pack_nodes["DPIRCLIPVisionLoader"]().load
    clip1, clip2 = load("clip_b32/model.safetensors")[0], load("clip_bigg/model.safetensors")[0]
    image = torch.rand(2, 64, 96, 3, generator=torch.Generator().manual_seed(4))
    cond = pack_nodes["DPIRVisualPrompt"]().encode(clip1, clip2, image)[0]
    tokens, pooled = cond[0][0], cond[0][1]["pooled_output"]
    enc1 = load_hf_vision_encoder(_models_dir() / "clip_vision" / "clip_b32")
    enc2 = load_hf_vision_encoder(_models_dir() / "clip_vision" / "clip_bigg")
    img = image.movedim(-1, 1)
    ref_tokens, ref_pooled = visual_prompt(img, img, enc1, enc2)
    assert tokens.shape == (2, 77, SPEC.pooled_projection_dim)
    torch.testing.assert_close(tokens, ref_tokens, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(pooled, ref_pooled, rtol=1e-4, atol=1e-4)


def _models_dir():
    import folder_paths
    from pathlib import Path

    return Path(folder_paths.models_dir)


@pytest.mark.parametrize("cfg", [1.0, 2.5])
def test_core_ksampler_path_equals_reference(pack_nodes, diffusers_models, cfg):
    """The Sampler Patch's MODEL with the core KSampler (euler / normal) and the Dual Prompt's zero negative."""
    import comfy.sample

    z, ctx, pooled = inputs(3)
    model, branch = pack_nodes["DPIRModelLoader"]().load("transformer/diffusion_pytorch_model.safetensors", "default")
    patched = pack_nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
    positive = [[ctx, {"pooled_output": pooled}]]
    m = pack_nodes["DPIRSamplerPatch"]().patch(patched, positive, 3, cfg, 3.0)[0]
    negative = [[torch.zeros_like(ctx), {"pooled_output": torch.zeros_like(pooled)}]]
    latent = torch.zeros_like(z)
    noise = comfy.sample.prepare_noise(latent, 9)
    ours = comfy.sample.sample(m, noise, 3, cfg, "euler", "normal", positive, negative, latent, seed=9)
    theirs = reference_sample(diffusers_models["transformer"], diffusers_models["control_conv"], z, ctx, pooled,
                              3, 9, cfg, 1.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_openai_style_clip_file_equals_hf_folder(pack_nodes, tmp_path):
    import folder_paths

    path = tm.write_clip_vision_file(tmp_path / "openai_b32.safetensors", SPEC, which=1, naming="openai")
    (tmp_path / "openai_b32.json").write_text(tm.clip_vision_config(SPEC, 1).to_json_string())
    folder_paths.add_model_folder_path("clip_vision", str(tmp_path))
    openai = pack_nodes["DPIRCLIPVisionLoader"]().load("openai_b32.safetensors")[0]
    hf = pack_nodes["DPIRCLIPVisionLoader"]().load("clip_b32/model.safetensors")[0]
    image = torch.rand(1, 50, 70, 3, generator=torch.Generator().manual_seed(6))
    a, b = openai.encode_image(image), hf.encode_image(image)
    torch.testing.assert_close(a["last_hidden_state"], b["last_hidden_state"])
    torch.testing.assert_close(a["image_embeds"], b["image_embeds"])


def test_t5_tokens_match_the_released_tokenisation(pack_nodes):
    """ComfyUI's T5 tokens, padded/cut to 256 by the node, equal HF's max_length=256 + truncation ids."""
    from pathlib import Path

    import comfy.text_encoders.sd3_clip as sd3_clip
    from transformers import T5TokenizerFast

    t5_only_tokens = sys.modules[f"{PACK_NAME}.nodes.text_prompt"].t5_only_tokens

    class TokenizerOnlyCLIP:
        """ComfyUI's real SD3 tokenizer; T5-XXL itself is too large to build here."""
        cond_stage_model = type("M", (), {"t5xxl": object()})()
        tokenizer = sd3_clip.SD3Tokenizer()

        def tokenize(self, text, **kwargs):
            return self.tokenizer.tokenize_with_weights(text, **kwargs)

    hf = T5TokenizerFast.from_pretrained(str(Path(sd3_clip.__file__).parent / "t5_tokenizer"))
    for text in ("a sharp photo of a cat", "word " * 400, ""):
        tokens = t5_only_tokens(TokenizerOnlyCLIP(), text)
        ours = [t[0] for t in tokens["t5xxl"][0]]
        want = hf(text, padding="max_length", max_length=256, truncation=True).input_ids
        assert ours == want
        assert tokens["l"] == [] and tokens["g"] == []


def test_cpu_attention_is_sdpa_where_comfyui_would_use_sub_quadratic(pack_nodes, diffusers_models):
    """The DPIR MODEL's attention override (nodes/cpu_attention.py): every DiT attention call of a sampling run on
    the CPU reaches it with ComfyUI's sub-quadratic attention and takes the SDPA path; the result stays within
    the reference's tolerance and within 1e-5 of ComfyUI's own attention; other calls are ComfyUI's, unchanged."""
    import comfy.ldm.modules.attention as attention

    cpu_attention = pack_module("cpu_attention")
    z, ctx, pooled = inputs(5)
    model = lq_model(pack_nodes, z, 1.0)
    options = model.model_options["transformer_options"]
    assert options[cpu_attention.KEY] is cpu_attention.sdpa_on_cpu
    calls = []

    def recording(func, q, k, v, heads, **kwargs):
        calls.append((func.__name__, cpu_attention.takes_over(func, q, k, v, **kwargs)))
        return cpu_attention.sdpa_on_cpu(func, q, k, v, heads, **kwargs)

    recorded = model.clone()
    recorded.model_options["transformer_options"][cpu_attention.KEY] = recording
    comfys = model.clone()
    del comfys.model_options["transformer_options"][cpu_attention.KEY]
    ours = sample_model(pack_nodes, model, z, ctx, pooled, 2, 3, 1.0)
    assert torch.equal(sample_model(pack_nodes, recorded, z, ctx, pooled, 2, 3, 1.0), ours)
    assert len(calls) == 2 * SPEC.num_layers
    assert set(calls) == {("attention_sub_quad", True)}  # every call: ComfyUI's CPU default, run as SDPA
    torch.testing.assert_close(ours, sample_model(pack_nodes, comfys, z, ctx, pooled, 2, 3, 1.0), rtol=0, atol=1e-5)
    theirs = reference_sample(diffusers_models["transformer"], diffusers_models["control_conv"], z, ctx, pooled,
                              2, 3, 1.0, 1.0)
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)
    # the function itself against softmax(q kᵀ / √d) v in float64, and ComfyUI's own calls handed back
    g = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(2, 37, 4 * 16, generator=g) for _ in range(3))
    split = lambda t: t.double().view(2, 37, 4, 16).transpose(1, 2)  # noqa: E731
    exact = torch.softmax(split(q) @ split(k).transpose(-1, -2) / 4.0, -1) @ split(v)
    exact = exact.transpose(1, 2).reshape(2, 37, 64)
    sub_quad = getattr(attention.attention_sub_quad, "__wrapped__", attention.attention_sub_quad)
    out = cpu_attention.sdpa_on_cpu(sub_quad, q, k, v, 4)
    torch.testing.assert_close(out.double(), exact, rtol=0, atol=1e-6)
    sdpa = torch.nn.functional.scaled_dot_product_attention(*(t.view(2, 37, 4, 16).transpose(1, 2) for t in (q, k, v)))
    assert torch.equal(out, sdpa.transpose(1, 2).reshape(2, 37, 64))  # the SDPA path, taken on such calls
    # v as SD3's joint attention hands it over: (B, tokens, heads, dim)
    assert torch.equal(cpu_attention.sdpa_on_cpu(sub_quad, q, k, v.view(2, 37, 4, 16), 4), out)
    mask = torch.zeros(37, 37)
    mask[:, -5:] = float("-inf")
    for func, kwargs in ((sub_quad, {"mask": mask}), (attention.attention_basic.__wrapped__, {})):
        assert torch.equal(cpu_attention.sdpa_on_cpu(func, q, k, v, 4, **kwargs), func(q, k, v, 4, **kwargs))
