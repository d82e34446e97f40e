"""The fidelity knobs of DPIR Apply LQ Condition inside ComfyUI (tiny models, in this process).

* strength_start / strength_end: the LQ condition's strength at every model call against the formula over sigma
  (core SUPIRPatch's: end + min(sigma / sigma_max, 1) * (start - end));
* restore_cfg / restore_cfg_s_tmin: the sampled latent against a plain Euler loop written here that pulls the
  model's denoised estimate toward z_LQ (SUPIR's RestoreEDMSampler step), through the core KSampler path and the
  GUIDER of SamplerCustomAdvanced, untiled and tiled; the result moves closer to z_LQ as tau goes down;
* every new knob at its default: the shipped dpir_restore workflow, executed by ComfyUI's PromptExecutor, gives
  the bytes of the code before the knobs (its LQ patch, copied below, run in the same process).
"""
from __future__ import annotations

import asyncio
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

import tiny_models as tm
from host.comfy_harness import (PACK_NAME, QuietServer, host_device, load_compat, load_workflow_api, object_info_of,
                                 pack_module)
from host.dpir_env import PHOTO, PROMPT_EMBEDDING, api_of, write_photo

SPEC = tm.TinySpec()


mod = pack_module


@pytest.fixture(scope="module")
def setup(pack_nodes):
    model, branch = pack_nodes["DPIRModelLoader"]().load("transformer/diffusion_pytorch_model.safetensors", "default")
    return pack_nodes, model, branch


def z_model_space(raw):
    """The LQ latent in the sampler's latent space: SD3's process_in, written out (not ComfyUI's)."""
    return (raw - SPEC.vae_shift_factor) * SPEC.vae_scaling_factor


def prompt(seed=1):
    g = torch.Generator().manual_seed(seed)
    return [[torch.randn(1, 333, SPEC.joint_attention_dim, generator=g),
             {"pooled_output": torch.randn(1, SPEC.pooled_projection_dim, generator=g)}]]


def lq_latent(seed=2, h=16, w=24):
    return torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(seed))


def apply(nodes, model, branch, z, **knobs):
    return nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0, **knobs)[0]


def euler_reference(z_lq, tau, s_tmin):
    """SUPIR's restoration-guided Euler step as a plain loop (a core KSAMPLER around the unguided model):
    x0 <- x0 - (x0 - z_lq) * (sigma / sigma_max)^tau when the next sigma is above s_tmin; sigma_max = the
    schedule's largest; then the rectified-flow Euler step x <- x + (x - x0) / sigma * (next - sigma)."""
    import comfy.samplers

    def sample(model, x, sigmas, extra_args=None, callback=None, disable=None):
        s_in = x.new_ones([x.shape[0]])
        sigma_max = float(sigmas.max())
        for i in range(len(sigmas) - 1):
            sigma, nxt = float(sigmas[i]), float(sigmas[i + 1])
            x0 = model(x, sigmas[i] * s_in, **(extra_args or {}))
            if tau > 0 and nxt > s_tmin:
                x0 = x0 - (x0 - z_lq.to(x0)) * (sigma / sigma_max) ** tau
            x = x + (x - x0) / sigma * (nxt - sigma)
        return x

    return comfy.samplers.KSAMPLER(sample)


def run_guider(nodes, model, positive, z_raw, sampler=None, steps=4, cfg=1.0, tiles=None, seed=3):
    """SamplerCustomAdvanced's path: DPIR Sampler Patch's GUIDER/SAMPLER/SIGMAS, guider.sample."""
    import comfy.sample

    _, guider, euler, sigmas = nodes["DPIRSamplerPatch"]().patch(model, positive, steps, cfg, 3.0, tiles=tiles,
                                                                 tile_batch=2)
    latent = torch.zeros_like(z_raw)
    return guider.sample(comfy.sample.prepare_noise(latent, seed), latent, sampler or euler, sigmas, seed=seed).cpu()


def run_ksampler(nodes, model, positive, z_raw, steps=4, cfg=1.0, seed=3):
    """The core KSampler's path (comfy.sample.sample, euler / normal) on the Sampler Patch's MODEL."""
    import comfy.sample

    m = nodes["DPIRSamplerPatch"]().patch(model, positive, steps, cfg, 3.0)[0]
    negative = [[torch.zeros_like(positive[0][0]), {"pooled_output": torch.zeros_like(positive[0][1]["pooled_output"])}]]
    latent = torch.zeros_like(z_raw)
    return comfy.sample.sample(m, comfy.sample.prepare_noise(latent, seed), steps, cfg, "euler", "normal", positive,
                               negative, latent, seed=seed).cpu()


def run_ksampler_reference(nodes, model, positive, z_raw, tau, s_tmin, steps=4, cfg=1.0, seed=3):
    import comfy.sample
    import comfy.samplers

    m = nodes["DPIRSamplerPatch"]().patch(model, positive, steps, cfg, 3.0)[0]
    sigmas = comfy.samplers.calculate_sigmas(m.get_model_object("model_sampling"), "normal", steps)
    negative = [[torch.zeros_like(positive[0][0]), {"pooled_output": torch.zeros_like(positive[0][1]["pooled_output"])}]]
    latent = torch.zeros_like(z_raw)
    return comfy.sample.sample_custom(m, comfy.sample.prepare_noise(latent, seed), cfg,
                                      euler_reference(z_model_space(z_raw), tau, s_tmin), sigmas, positive, negative,
                                      latent, seed=seed).cpu()


TOL = dict(rtol=1e-5, atol=1e-5) if host_device() == "cpu" else dict(rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- strength schedule

def test_strength_moves_linearly_over_sigma(setup, monkeypatch):
    nodes, model, branch = setup
    lq = mod("lq_injection")
    seen = []
    real = lq.inject

    def spy(h, c, strength=1.0):  # records, then the real injection
        seen.append(strength)
        return real(h, c, strength)

    monkeypatch.setattr(lq, "inject", spy)
    z, positive = lq_latent(), prompt()
    m = apply(nodes, model, branch, z, strength_start=1.5, strength_end=0.25)
    _, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(m, positive, 6, 1.0, 3.0)
    latent = torch.zeros_like(z)
    import comfy.sample

    guider.sample(comfy.sample.prepare_noise(latent, 0), latent, sampler, sigmas, seed=0)
    sigma_max = 1.0  # SD3's rectified flow
    want = [0.25 + float(s) / sigma_max * (1.5 - 0.25) for s in sigmas[:-1]]
    assert seen == pytest.approx(want, rel=1e-6, abs=1e-7)
    assert seen[0] == pytest.approx(1.5) and seen[-1] < 0.3  # shift 3, 6 steps: the last call is at sigma 0.009


def test_strength_schedule_default_and_constant(setup):
    nodes, model, branch = setup
    z, positive = lq_latent(), prompt()
    plain = run_guider(nodes, apply(nodes, model, branch, z), positive, z)
    assert torch.equal(run_guider(nodes, apply(nodes, model, branch, z, strength_start=1.0, strength_end=1.0),
                                  positive, z), plain)
    # start = end = k is a constant strength k exactly
    const = nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 0.6, 0.0, 1.0)[0]
    ramp = nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0,
                                                 strength_start=0.6, strength_end=0.6)[0]
    assert torch.equal(run_guider(nodes, ramp, positive, z), run_guider(nodes, const, positive, z))
    ramped = run_guider(nodes, apply(nodes, model, branch, z, strength_start=1.0, strength_end=0.0), positive, z)
    assert (ramped - plain).abs().max() > 1e-3


# ---------------------------------------------------------------- restoration guidance

@pytest.mark.parametrize("tau,s_tmin", [(4.0, 0.05), (0.5, 0.05), (2.0, 0.5)])
def test_restore_cfg_equals_the_euler_reference_guider(setup, tau, s_tmin):
    nodes, model, branch = setup
    z, positive = lq_latent(), prompt()
    ours = run_guider(nodes, apply(nodes, model, branch, z, restore_cfg=tau, restore_cfg_s_tmin=s_tmin), positive, z)
    theirs = run_guider(nodes, apply(nodes, model, branch, z), positive, z,
                        sampler=euler_reference(z_model_space(z), tau, s_tmin))
    torch.testing.assert_close(ours, theirs, **TOL)
    assert (ours - run_guider(nodes, apply(nodes, model, branch, z), positive, z)).abs().max() > 1e-2


@pytest.mark.parametrize("cfg", [1.0, 2.0])
def test_restore_cfg_equals_the_euler_reference_ksampler(setup, cfg):
    nodes, model, branch = setup
    z, positive = lq_latent(4), prompt(5)
    ours = run_ksampler(nodes, apply(nodes, model, branch, z, restore_cfg=3.0), positive, z, cfg=cfg)
    theirs = run_ksampler_reference(nodes, apply(nodes, model, branch, z), positive, z, 3.0, 0.05, cfg=cfg)
    torch.testing.assert_close(ours, theirs, **TOL)


def test_restore_cfg_tiled_pulls_each_tile_toward_its_own_crop(setup, pack_nodes):
    """Four tiles (seam shift on): equals the reference loop over the same tiled model, whose denoised
    estimate is the tiles' blend; the pull toward z_LQ is per latent pixel, so each tile meets its own crop."""
    nodes, model, branch = setup
    load = nodes["DPIRCLIPVisionLoader"]().load
    clip1, clip2 = load("clip_b32/model.safetensors")[0], load("clip_bigg/model.safetensors")[0]
    image = torch.rand(1, 256, 256, 3, generator=torch.Generator().manual_seed(6))
    text = [[torch.randn(1, 256, SPEC.joint_attention_dim, generator=torch.Generator().manual_seed(1)),
             {"pooled_output": torch.zeros(1, SPEC.pooled_projection_dim)}]]
    tiles, _ = nodes["DPIRTiledPrompt"]().plan(clip1, clip2, image, text, 160, 32,
                                               mod("tiled_sampling").PROMPT_MODES[0], True, 1)
    assert tiles.count == 4
    positive = nodes["DPIRDualPrompt"]().combine(nodes["DPIRVisualPrompt"]().encode(clip1, clip2, image)[0], text)[0]
    z = lq_latent(7, 32, 32)
    ours = run_guider(nodes, apply(nodes, model, branch, z, restore_cfg=1.5), positive, z, tiles=tiles)
    theirs = run_guider(nodes, apply(nodes, model, branch, z), positive, z, tiles=tiles,
                        sampler=euler_reference(z_model_space(z), 1.5, 0.05))
    torch.testing.assert_close(ours, theirs, **TOL)
    untiled = run_guider(nodes, apply(nodes, model, branch, z, restore_cfg=1.5), positive, z)
    assert (ours - untiled).abs().max() > 1e-3  # the tiles were really sampled on their own


def test_result_moves_closer_to_z_lq_as_tau_goes_down(setup):
    nodes, model, branch = setup
    z, positive = lq_latent(8), prompt(9)
    taus = [20.0, 8.0, 4.0, 2.0, 1.0, 0.5, 0.25]
    dist = [float((run_guider(nodes, apply(nodes, model, branch, z, restore_cfg=t), positive, z, steps=8) - z).norm())
            for t in taus]
    off = float((run_guider(nodes, apply(nodes, model, branch, z), positive, z, steps=8) - z).norm())
    assert all(a > b for a, b in zip(dist, dist[1:])), dict(zip(taus, dist))
    assert off > dist[0], (off, dist)


def test_restore_cfg_off_registers_nothing_and_bad_values_are_refused(setup):
    DPIRInputError = sys.modules[f"{PACK_NAME}.models.errors"].DPIRInputError
    nodes, model, branch = setup
    z = lq_latent()
    assert "sampler_post_cfg_function" not in apply(nodes, model, branch, z).model_options
    assert len(apply(nodes, model, branch, z, restore_cfg=4.0).model_options["sampler_post_cfg_function"]) == 1
    for knob in ("strength_start", "strength_end", "restore_cfg", "restore_cfg_s_tmin"):
        with pytest.raises(DPIRInputError, match=knob):
            apply(nodes, model, branch, z, **{knob: float("nan")})


# ---------------------------------------------------------------- the shipped workflow, knobs at their defaults

BEFORE_CALLS = []


def before_knobs_call(self, args, extra):
    """LQInjection.__call__ as it was before the strength schedule (commit 670fc17), verbatim."""
    BEFORE_CALLS.append(1)
    out = extra["original_block"](args)
    opts = args["transformer_options"]
    grid = opts.get(mod("lq_injection").KEY)
    if grid is None:
        raise AssertionError("the LQ condition did not reach the model")
    sigma = float(opts["sigmas"].max()) if "sigmas" in opts else self.sigma_start
    if not (self.sigma_end <= sigma <= self.sigma_start) or self.strength == 0:
        return out
    img = out["img"]
    c = grid.flatten(2).transpose(1, 2).to(device=img.device, dtype=img.dtype)
    out["img"] = mod("lq_injection").inject(img, c, self.strength)
    return out


@pytest.fixture(scope="module")
def executor_env(pack_nodes):
    """ComfyUI's core nodes and the pack's in this process, the workflow's model files, the photo."""
    import folder_paths
    import nodes

    asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
    nodes.NODE_CLASS_MAPPINGS.update(pack_nodes)
    models = Path(folder_paths.models_dir)
    for which, name in ((1, "clip_vit_b32"), (2, "clip_vision_g")):
        if not (models / "clip_vision" / f"{name}.safetensors").exists():
            tm.write_clip_vision_file(models / "clip_vision" / f"{name}.safetensors", SPEC, which=which)
            (models / "clip_vision" / f"{name}.json").write_text(tm.clip_vision_config(SPEC, which).to_json_string())
    if not (models / "dpir" / PROMPT_EMBEDDING).exists():
        tm.write_t5_embedding(models / "dpir" / PROMPT_EMBEDDING, SPEC, prompt="a sharp photo")
    write_photo(Path(folder_paths.get_input_directory()) / PHOTO)
    return object_info_of(nodes.NODE_CLASS_MAPPINGS)


def execute_restore(info, **overrides):
    """The shipped dpir_restore workflow (API form, tiny sizes as the server tests use) plus a SaveLatent of the
    sampler's output; returns (latent bytes, saved image pixels)."""
    import execution
    import folder_paths
    from PIL import Image
    from safetensors.torch import load_file

    prefix = f"knobs_{uuid.uuid4().hex[:8]}"
    api = api_of("dpir_restore", None, info, load_workflow_api(), SaveImage={"filename_prefix": prefix}, **overrides)
    sampler = next(k for k, v in api.items() if v["class_type"] == "SamplerCustomAdvanced")
    api["9001"] = {"class_type": "SaveLatent", "inputs": {"samples": [sampler, 0],
                                                         "filename_prefix": f"latents/{prefix}"}}
    ok, error, outputs, node_errors = asyncio.run(execution.validate_prompt(str(uuid.uuid4()), api, None))
    assert ok, (error, node_errors)
    ex = load_compat().prompt_executor(QuietServer())
    ex.execute(api, str(uuid.uuid4()), {}, outputs)
    assert ex.success, ex.status_messages[-1:]
    out = Path(folder_paths.get_output_directory())
    files = [i for o in ex.history_result["outputs"].values() for k in ("images", "latents") for i in o.get(k, [])]
    image = next(i for i in files if i["filename"].endswith(".png"))
    latent = next(i for i in files if i["filename"].endswith(".latent"))
    pixels = np.asarray(Image.open(out / image.get("subfolder", "") / image["filename"]))
    z = load_file(str(out / latent.get("subfolder", "") / latent["filename"]))["latent_tensor"]
    return z.numpy().tobytes(), pixels


def test_shipped_restore_workflow_at_default_knobs_is_byte_identical_to_before(executor_env, monkeypatch):
    import json

    from host.dpir_env import WORKFLOWS

    ui = json.loads((WORKFLOWS / "dpir_restore.json").read_text())
    lq_node = next(n for n in ui["nodes"] if n["type"] == "DPIRApplyLQCondition")
    assert lq_node["widgets_values"][-4:] == [1.0, 1.0, 0.0, 0.05]  # the shipped knobs are the defaults
    now_latent, now_pixels = execute_restore(executor_env)
    with monkeypatch.context() as m:
        m.setattr(mod("lq_injection").LQInjection, "__call__", before_knobs_call)
        before_latent, before_pixels = execute_restore(executor_env)
    assert len(BEFORE_CALLS) == 3  # the old patch ran, at each of the 3 steps
    assert now_latent == before_latent
    assert now_pixels.tobytes() == before_pixels.tobytes()
    # the comparison can fail: a knob off its default changes the bytes
    moved, _ = execute_restore(executor_env, DPIRApplyLQCondition={"strength_end": 0.5})
    guided, _ = execute_restore(executor_env, DPIRApplyLQCondition={"restore_cfg": 4.0})
    assert moved != now_latent and guided != now_latent
