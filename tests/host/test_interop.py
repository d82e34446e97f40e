"""Core SD3 nodes on the DPIR MODEL or latent, through a real ComfyUI server with tiny models (docs/interop.md).

Each case wires one core node into the shipped workflow -- untiled (dpir_restore) and tiled (dpir_restore_large,
2×2 tiles and seam-shifted plans) -- and asserts what the node does: same latent bit for bit where it must
not act, a changed one where it must, the steps a step cache skipped (core's own log line), or the pack's
error where a combination cannot work. The sampled latent is saved with core SaveLatent and read back
through /view (decoding would only blur the comparison and cost time). A node absent from the host's
object_info skips its own cases, by name.
"""
from __future__ import annotations

import re
import uuid

import pytest
import torch
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

import tiny_models as tm
from host.comfy_harness import ExecutionFailed
from host.dpir_env import PHOTO, SPEC, api_of, node_id, write_photo

MODES = ("untiled", "tiled")
SQUARE = "square.png"  # 80×80, ×4 = 320×320: a 40×40 latent in 2×2 tiles of 256 px (32 latent px), overlap 64
LORA_RANK = 4


def lora_peft(spec: tm.TinySpec, seed: int) -> dict:
    """A PEFT / diffusers LoRA of the tiny DiT's image attention (diffusers names, lora_A / lora_B)."""
    g, sd = torch.Generator().manual_seed(seed), {}
    for i in range(spec.num_layers):
        for name in ("to_q", "to_k", "to_v", "to_out.0"):
            key = f"transformer.transformer_blocks.{i}.attn.{name}"
            sd[f"{key}.lora_A.weight"] = torch.randn(LORA_RANK, spec.hidden, generator=g) * 0.1
            sd[f"{key}.lora_B.weight"] = torch.randn(spec.hidden, LORA_RANK, generator=g) * 0.1
    return sd


def lora_kohya(spec: tm.TinySpec, seed: int) -> dict:
    """A kohya LoRA of the same layers in ComfyUI's own (MMDiT) names: lora_unet_*, lora_down / lora_up, alpha."""
    g, sd = torch.Generator().manual_seed(seed), {}
    for i in range(spec.num_layers):
        for name, out in (("qkv", 3 * spec.hidden), ("proj", spec.hidden)):
            key = f"lora_unet_joint_blocks_{i}_x_block_attn_{name}"
            sd[f"{key}.lora_down.weight"] = torch.randn(LORA_RANK, spec.hidden, generator=g) * 0.1
            sd[f"{key}.lora_up.weight"] = torch.randn(out, LORA_RANK, generator=g) * 0.1
            sd[f"{key}.alpha"] = torch.tensor(float(LORA_RANK))
    return sd


class Matrix:
    """The shared server, the workflows in API form and the run helpers of this module."""

    def __init__(self, server, object_info, workflow_api):
        self.server, self.info, self.wf = server, object_info, workflow_api
        self._baselines = {}

    def need(self, *classes):
        missing = [c for c in classes if c not in self.info]
        if missing:
            pytest.skip(f"core node(s) {', '.join(missing)} not in this host's object_info")

    def inputs(self, class_type: str, **given) -> dict:
        """The node's required widget inputs at their defaults (from /object_info), then ``given``."""
        out = {}
        for name, spec in self.info[class_type]["input"]["required"].items():
            if isinstance(spec, list) and len(spec) > 1 and isinstance(spec[1], dict) and "default" in spec[1]:
                out[name] = spec[1]["default"]
        return {**out, **given}

    def base(self, mode: str, steps: int = 3, cfg: float = 1.0, **overrides) -> dict:
        """The shipped workflow of ``mode`` with its sampled latent saved (SaveLatent, node 900) instead of
        decoded; ``overrides`` as in dpir_env.api_of."""
        patch = {"steps": steps, "cfg": cfg, **overrides.pop("DPIRSamplerPatch", {})}
        if mode == "untiled":
            api = api_of("dpir_restore", self.server, self.info, self.wf, DPIRSamplerPatch=patch, **overrides)
        else:
            api = api_of("dpir_restore_large", self.server, self.info, self.wf, DPIRSamplerPatch=patch,
                         LoadImage={"image": SQUARE},
                         DPIRRobustVAEEncode={"resize": "upscale factor", "upscale_factor": 4.0},
                         DPIRTiledPrompt={"tile_size": 256, "tile_overlap": 64}, **overrides)
        for nid in [k for k, v in api.items()
                    if v["class_type"] in ("VAEDecode", "VAEDecodeTiled", "DPIRColourFix", "SaveImage", "PreviewImage")]:
            del api[nid]
        api["900"] = {"class_type": "SaveLatent", "inputs": {"samples": [node_id(api, "SamplerCustomAdvanced"), 0],
                                                             "filename_prefix": f"interop/{uuid.uuid4().hex[:8]}"}}
        return api

    @staticmethod
    def insert(api: dict, consumer: str, input_name: str, class_type: str, link_input: str, **inputs) -> str:
        """Put a new node between input ``input_name`` of node ``consumer`` and what fed it; its id."""
        new = str(800 + sum(1 for k in api if k.startswith("8") and len(k) == 3))
        api[new] = {"class_type": class_type, "inputs": {link_input: api[consumer]["inputs"][input_name], **inputs}}
        api[consumer]["inputs"][input_name] = [new, 0]
        return new

    def run(self, api: dict, timeout: float = 900) -> tuple[torch.Tensor, str, dict]:
        """(saved latent, the server log written during the run, history entry)."""
        start = len(self.server.log_text())
        entry = self.server.run(api, timeout=timeout)
        latents = entry["outputs"]["900"]["latents"]
        data = self.server.view(latents[0]["filename"], latents[0].get("subfolder", ""), "output")
        return load_safetensors(data)["latent_tensor"], self.server.log_text()[start:], entry

    def baseline(self, mode: str, steps: int = 3, cfg: float = 1.0) -> torch.Tensor:
        key = (mode, steps, cfg)
        if key not in self._baselines:
            api = self.base(mode, steps, cfg)
            latent, _, entry = self.run(api)
            if mode == "tiled":  # the plan really is tiled: 2×2 tiles unshifted
                plan = entry["outputs"][node_id(api, "DPIRTiledPrompt")]["dpir_tiles"][0]
                assert len(plan["tiles"]) >= 4 and plan["shifts"] > 1
            self._baselines[key] = latent
        return self._baselines[key]

    def lq_latent(self, mode: str) -> torch.Tensor:
        """The robust-encoded LQ latent of ``mode``'s workflow, as ComfyUI hands it to the sampler."""
        if ("lq", mode) not in self._baselines:
            api = self.base(mode)
            api["900"]["inputs"]["samples"] = api[node_id(api, "SamplerCustomAdvanced")]["inputs"]["latent_image"]
            self._baselines["lq", mode] = self.run(api)[0]
        return self._baselines["lq", mode]

    def ksampled(self, mode: str) -> torch.Tensor:
        """The workflow sampled by core KSampler on the Sampler Patch's MODEL (``ksampler_api``, denoise 1)."""
        if ("ksampler", mode) not in self._baselines:
            self._baselines["ksampler", mode] = self.run(ksampler_api(self, mode))[0]
        return self._baselines["ksampler", mode]

    def fails(self, api: dict) -> str:
        with pytest.raises(ExecutionFailed) as e:
            self.run(api)
        return str(e.value)


@pytest.fixture(scope="module")
def matrix(dpir_server, object_info, workflow_api, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("interop")
    dpir_server.add_input(write_photo(tmp / PHOTO))
    dpir_server.add_input(write_photo(tmp / SQUARE, 80, 80, seed=1))
    for fmt, make in (("peft", lora_peft), ("kohya", lora_kohya)):
        save_file(make(SPEC, 1), str(tmp / f"tiny_dit_{fmt}.safetensors"))
        dpir_server.add_model("loras", tmp / f"tiny_dit_{fmt}.safetensors")
    # another SD3 of the same shape (other weights, no LQ branch) for the merges, in ComfyUI's own key names
    dpir_server.add_model("diffusion_models", tm.write_transformer_file(
        tmp / "other_sd3.safetensors", tm.TinySpec(seed=1), naming="mmdit", with_control=False))
    return Matrix(dpir_server, object_info, workflow_api)


def changed(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and bool((a - b).abs().max() > 1e-4)


# ------------------------------------------------------------------ LoRA

@pytest.mark.parametrize("fmt", ["peft", "kohya"])
@pytest.mark.parametrize("mode", MODES)
def test_lora_model_only(matrix, mode, fmt):
    """LoraLoaderModelOnly between DPIR Model Loader and Apply LQ Condition: every key of both formats is
    loaded (no 'lora key not loaded'), strength 0 gives the latent bit for bit, strength 1 changes it."""
    matrix.need("LoraLoaderModelOnly")
    base = matrix.baseline(mode)
    out = {}
    for strength in (0.0, 1.0):
        api = matrix.base(mode)
        matrix.insert(api, node_id(api, "DPIRApplyLQCondition"), "model", "LoraLoaderModelOnly", "model",
                      lora_name=f"tiny_dit_{fmt}.safetensors", strength_model=strength)
        out[strength], log, _ = matrix.run(api)
        assert "lora key not loaded" not in log
    assert torch.equal(out[0.0], base)
    assert changed(out[1.0], base)


# ------------------------------------------------------------------ guidance on the MODEL

@pytest.mark.parametrize("mode", MODES)
def test_skip_layer_guidance_sd3(matrix, mode):
    """SkipLayerGuidanceSD3 after Apply LQ Condition (layer 1 of the 2-layer tiny DiT; block 0 carries the LQ
    condition), scale 3 over the whole schedule: the latent changes."""
    matrix.need("SkipLayerGuidanceSD3")
    api = matrix.base(mode)
    matrix.insert(api, node_id(api, "DPIRSamplerPatch"), "model", "SkipLayerGuidanceSD3", "model",
                  layers="1", scale=3.0, start_percent=0.0, end_percent=1.0)
    out, _, _ = matrix.run(api)
    assert changed(out, matrix.baseline(mode))


CFG_NODES = {"CFGZeroStar": {}, "CFGNorm": {"strength": 1.0}, "APG": {}, "TCFG": {}}


@pytest.mark.parametrize("node", list(CFG_NODES))
@pytest.mark.parametrize("mode", MODES)
def test_cfg_node(matrix, mode, node):
    """A CFG node after Apply LQ Condition, with CFG on (2.0; at 1.0 ComfyUI skips the negative these nodes
    work on): the latent differs from CFG 2 without it."""
    matrix.need(node)
    base = matrix.baseline(mode, cfg=2.0)
    api = matrix.base(mode, cfg=2.0)
    matrix.insert(api, node_id(api, "DPIRSamplerPatch"), "model", node, "model", **matrix.inputs(node, **CFG_NODES[node]))
    out, _, _ = matrix.run(api)
    assert changed(out, base)


# ------------------------------------------------------------------ step caches

def skipped(log: str, name: str) -> tuple[int, int]:
    """(skipped, total) from core's '<name> - skipped k/n steps' line."""
    found = re.findall(rf"{name} - skipped (\d+)/(\d+) steps", log)
    assert found, f"no '{name} - skipped' line in the server log:\n{log[-2000:]}"
    return int(found[-1][0]), int(found[-1][1])


def cache_api(matrix, mode, node, threshold):
    api = matrix.base(mode, steps=10)
    matrix.insert(api, node_id(api, "DPIRSamplerPatch"), "model", node, "model",
                  **matrix.inputs(node, reuse_threshold=threshold))
    return api


@pytest.mark.parametrize("mode", MODES)
def test_lazycache_skips_steps(matrix, mode):
    """LazyCache (whole-step cache) at a high threshold skips steps of the 10 and changes the latent."""
    matrix.need("LazyCache")
    on, log, _ = matrix.run(cache_api(matrix, mode, "LazyCache", 1.0))
    assert skipped(log, "LazyCache")[0] > 0 and changed(on, matrix.baseline(mode, steps=10))


def test_easycache_skips_steps_untiled(matrix):
    """EasyCache hooks the diffusion model's forward (DIFFUSION_MODEL wrapper), which SD3's MMDiT never calls;
    the pack runs those wrappers for it, so EasyCache skips steps on the DPIR model too: threshold 0 skips none
    and leaves the latent bit for bit (the hook itself changes nothing), a high one skips steps and changes it."""
    matrix.need("EasyCache")
    base = matrix.baseline("untiled", steps=10)
    off, log, _ = matrix.run(cache_api(matrix, "untiled", "EasyCache", 0.0))
    assert skipped(log, "EasyCache") == (0, 10) and torch.equal(off, base)
    on, log, _ = matrix.run(cache_api(matrix, "untiled", "EasyCache", 1.0))
    assert skipped(log, "EasyCache")[0] > 0 and changed(on, base)


def test_easycache_in_tiles_is_refused_naming_lazycache(matrix):
    """EasyCache caches one model call per step, tiled sampling makes one per tile batch: a clear error."""
    matrix.need("EasyCache")
    text = matrix.fails(cache_api(matrix, "tiled", "EasyCache", 1.0))
    assert "EasyCache cannot be combined with DPIR's tiled sampling" in text and "LazyCache" in text


# ------------------------------------------------------------------ sampling: shift, KSampler, denoise, masks

def ksampler_api(matrix, mode, denoise=1.0, shift=None):
    """The workflow sampled by core KSampler on the Sampler Patch's MODEL (seed 42, as RandomNoise), from the
    LQ latent; ``shift``: a ModelSamplingSD3 between them."""
    api = matrix.base(mode)
    patch, dual = node_id(api, "DPIRSamplerPatch"), node_id(api, "DPIRDualPrompt")
    api["850"] = {"class_type": "KSampler", "inputs": {
        "model": [patch, 0], "seed": 42, "steps": 3, "cfg": 1.0, "sampler_name": "euler", "scheduler": "normal",
        "positive": [dual, 0], "negative": [dual, 1], "denoise": denoise,
        "latent_image": api[node_id(api, "SamplerCustomAdvanced")]["inputs"]["latent_image"]}}
    if shift is not None:
        matrix.insert(api, "850", "model", "ModelSamplingSD3", "model", shift=shift)
    api["900"]["inputs"]["samples"] = ["850", 0]
    return api


@pytest.mark.parametrize("mode", MODES)
def test_model_sampling_sd3_after_the_patches(matrix, mode):
    """KSampler on the Sampler Patch's MODEL samples as SamplerCustomAdvanced does (bit for bit); a
    ModelSamplingSD3 after the patches sets the shift as the Sampler Patch's own 'shift' does (bit for bit),
    with the LQ condition kept."""
    matrix.need("KSampler", "ModelSamplingSD3")
    ks = matrix.ksampled(mode)
    assert torch.equal(ks, matrix.baseline(mode))
    shifted, _, _ = matrix.run(ksampler_api(matrix, mode, shift=6.0))
    patch_shift, _, _ = matrix.run(matrix.base(mode, DPIRSamplerPatch={"shift": 6.0}))
    assert torch.equal(shifted, patch_shift) and changed(shifted, ks)


@pytest.mark.parametrize("mode", MODES)
def test_denoise_below_one_from_the_lq_latent(matrix, mode):
    """KSampler from the LQ latent at denoise 0.5 starts from the photo: the result depends on the starting
    latent (from a zero latent it differs) and stays nearer to the LQ latent than at denoise 1 (pure noise at
    sigma 1, where the starting latent has no weight)."""
    matrix.need("KSampler", "LatentMultiply")
    runs = {}
    for start in ("lq", "zero"):
        api = ksampler_api(matrix, mode, 0.5)
        if start == "zero":
            matrix.insert(api, "850", "latent_image", "LatentMultiply", "samples", multiplier=0.0)
        runs[start], _, _ = matrix.run(api)
    full, lq = matrix.ksampled(mode), matrix.lq_latent(mode)
    assert changed(runs["lq"], runs["zero"]) and changed(runs["lq"], full)
    assert (runs["lq"] - lq).abs().mean() < (full - lq).abs().mean()


@pytest.mark.parametrize("mode", MODES)
def test_set_latent_noise_mask(matrix, mode):
    """SetLatentNoiseMask on the LQ latent (mask: left half of the image): the unmasked right half of the
    result is the LQ latent, bit for bit after SD3's fp32 latent scaling in and out (core samples in the
    scaled space), so within 1e-6 of it; the masked half is sampled."""
    matrix.need("SetLatentNoiseMask", "SolidMask", "MaskComposite")
    lq = matrix.lq_latent(mode)
    h, w = lq.shape[-2] * 8, lq.shape[-1] * 8
    api = matrix.base(mode)
    api["860"] = {"class_type": "SolidMask", "inputs": {"value": 0.0, "width": w, "height": h}}
    api["861"] = {"class_type": "SolidMask", "inputs": {"value": 1.0, "width": w // 2, "height": h}}
    api["862"] = {"class_type": "MaskComposite", "inputs": {"destination": ["860", 0], "source": ["861", 0],
                                                            "x": 0, "y": 0, "operation": "add"}}
    matrix.insert(api, node_id(api, "SamplerCustomAdvanced"), "latent_image", "SetLatentNoiseMask", "samples",
                  mask=["862", 0])
    out, _, _ = matrix.run(api)
    half = lq.shape[-1] // 2  # bilinear resizing of the px mask to the latent keeps 1 | 0 exactly at this edge
    sampled, kept = out[..., :half], out[..., half:]
    s, f = SPEC.vae_scaling_factor, SPEC.vae_shift_factor
    roundtrip = ((lq - f) * s) / s + f  # process_in, then process_out, in fp32
    assert torch.equal(kept, roundtrip[..., half:])
    torch.testing.assert_close(kept, lq[..., half:], rtol=0, atol=1e-5)  # the round trip moves ≤ 1 ulp
    assert changed(sampled, lq[..., :half])


# ------------------------------------------------------------------ merges and a missing LQ condition

MERGES = ("ModelMergeSimple", "ModelMergeSD3_2B")


def merge_api(matrix, mode, node, dpir_as: str, ratio: float):
    """The DPIR MODEL (after Apply LQ Condition) merged with another SD3 (core UNETLoader) before the Sampler
    Patch; ``dpir_as`` 'model1' or 'model2'; ModelMergeSimple's ratio, or every block ratio of ModelMergeSD3_2B."""
    api = matrix.base(mode)
    patch = node_id(api, "DPIRSamplerPatch")
    api["870"] = {"class_type": "UNETLoader", "inputs": {"unet_name": "other_sd3.safetensors",
                                                         "weight_dtype": "default"}}
    ratios = {k: ratio for k in matrix.inputs(node) if k not in ("model1", "model2")}
    other = "model2" if dpir_as == "model1" else "model1"
    api["871"] = {"class_type": node, "inputs": {dpir_as: api[patch]["inputs"]["model"], other: ["870", 0], **ratios}}
    api[patch]["inputs"]["model"] = ["871", 0]
    return api


@pytest.mark.parametrize("node", MERGES)
@pytest.mark.parametrize("mode", MODES)
def test_merge_with_dpir_as_model1(matrix, mode, node):
    """ModelMergeSimple / ModelMergeSD3_2B keep model1's patches: with the DPIR MODEL as model1 the LQ condition
    survives (DPIR Sampler Patch finds it) and half of the other model's weights change the latent."""
    matrix.need(node, "UNETLoader")
    half, _, _ = matrix.run(merge_api(matrix, mode, node, "model1", 0.5))
    assert changed(half, matrix.baseline(mode))


@pytest.mark.parametrize("node", MERGES)
def test_merge_with_dpir_as_model2_is_an_error_naming_the_cause(matrix, node):
    matrix.need(node, "UNETLoader")
    text = matrix.fails(merge_api(matrix, "untiled", node, "model2", 0.5))
    assert "DPIRSamplerPatch" in text and "model merge" in text and "as model1" in text


def test_bypassed_apply_lq_condition_is_an_error(matrix):
    api = matrix.base("untiled")
    patch, apply = node_id(api, "DPIRSamplerPatch"), node_id(api, "DPIRApplyLQCondition")
    api[patch]["inputs"]["model"] = api[apply]["inputs"]["model"]  # what bypassing the node does
    del api[apply]
    text = matrix.fails(api)
    assert "DPIRSamplerPatch" in text and "no DPIR LQ condition" in text and "'DPIR Apply LQ Condition'" in text
