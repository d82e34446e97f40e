"""Tiled global-local sampling inside ComfyUI (CPU, or the GPU as tests/host/conftest.py says; tiny models)."""
from __future__ import annotations


import pytest
import torch

import tiny_models as tm
from host.comfy_harness import host_device, pack_module

SPEC = tm.TinySpec()


mod = pack_module


@pytest.fixture(scope="module")
def setup(pack_nodes):
    model, branch = pack_nodes["DPIRModelLoader"]().load("transformer/diffusion_pytorch_model.safetensors", "default")
    load = pack_nodes["DPIRCLIPVisionLoader"]().load
    return pack_nodes, model, branch, load("clip_b32/model.safetensors")[0], load("clip_bigg/model.safetensors")[0]


def smooth_image(h, w, seed=0):
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(1, 3, 3, 4, generator=g)
    img = torch.nn.functional.interpolate(base, size=(h, w), mode="bicubic", align_corners=True).clamp(0, 1)
    return img.movedim(1, -1)


def text_prompt():
    return [[torch.randn(1, 256, SPEC.joint_attention_dim, generator=torch.Generator().manual_seed(1)),
             {"pooled_output": torch.zeros(1, SPEC.pooled_projection_dim)}]]


def sample(nodes, model, branch, z, positive, steps=2, cfg=1.0, tiles=None, tile_batch=4, seed=4):
    import comfy.sample

    patched = nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
    _, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(patched, positive, steps, cfg, 3.0,
                                                                   tiles=tiles, tile_batch=tile_batch)
    latent = torch.zeros_like(z)
    return guider.sample(comfy.sample.prepare_noise(latent, seed), latent, sampler, sigmas, seed=seed).cpu()


def plan(nodes, clip1, clip2, image, tile_px, overlap_px, mode=0, shift=False):
    prompt_mode = mod("tiled_sampling").PROMPT_MODES[mode]
    return nodes["DPIRTiledPrompt"]().plan(clip1, clip2, image, text_prompt(), tile_px, overlap_px, prompt_mode,
                                           shift, 1)


def test_image_in_one_tile_gives_exactly_the_untiled_result(setup):
    nodes, model, branch, clip1, clip2 = setup
    image = smooth_image(96, 128)
    tiles, preview = plan(nodes, clip1, clip2, image, 1024, 128)
    assert tiles.count == 1 and preview.shape == image.shape
    z = torch.randn(1, 16, 12, 16, generator=torch.Generator().manual_seed(2))
    visual = nodes["DPIRVisualPrompt"]().encode(clip1, clip2, image)[0]
    positive = nodes["DPIRDualPrompt"]().combine(visual, text_prompt())[0]
    for cfg in (1.0, 2.0):
        untiled = sample(nodes, model, branch, z, positive, cfg=cfg)
        tiled = sample(nodes, model, branch, z, positive, cfg=cfg, tiles=tiles)
        assert torch.equal(tiled, untiled)


def test_local_prompts_differ_and_global_tokens_are_shared(setup):
    nodes, _, _, clip1, clip2 = setup
    image = smooth_image(256, 384)
    image[:, :, 192:] = 1 - image[:, :, 192:]  # right part of other content
    tiles, _ = plan(nodes, clip1, clip2, image, 256, 64)
    assert tiles.count == 2  # latent 32×48, tile 32, overlap 8: one row of two tiles
    tokens = [tiles.visual[(0, i)][0] for i in range(tiles.count)]
    n_global = len(mod("tiled_sampling").dp.global_tiles(256, 384))
    local = tm.TinySpec().clip1.num_tokens
    for t in tokens[1:]:
        assert torch.equal(t[:, local:local + n_global], tokens[0][:, local:local + n_global])  # same global tokens
    assert (tokens[0][:, :local] - tokens[-1][:, :local]).abs().max() > 1e-3  # different local content


def test_tiled_sampling_runs_with_batches_cfg_and_shift(setup):
    nodes, model, branch, clip1, clip2 = setup
    image = smooth_image(256, 384)
    z = torch.randn(1, 16, 32, 48, generator=torch.Generator().manual_seed(5))
    for mode, shift, cfg, batch in ((0, True, 1.0, 3), (1, False, 2.0, 1), (0, False, 1.0, 8)):
        tiles, _ = plan(nodes, clip1, clip2, image, 256, 64, mode=mode, shift=shift)
        positive = nodes["DPIRDualPrompt"]().combine(nodes["DPIRVisualPrompt"]().encode(clip1, clip2, image)[0],
                                                     text_prompt())[0]
        out = sample(nodes, model, branch, z, positive, steps=3, cfg=cfg, tiles=tiles, tile_batch=batch)
        assert out.shape == z.shape and torch.isfinite(out).all()
    # the batch size does not change the numbers (beyond a GPU's per-batch-size kernels)
    tiles, _ = plan(nodes, clip1, clip2, image, 256, 64)
    a = sample(nodes, model, branch, z, positive, tiles=tiles, tile_batch=1)
    b = sample(nodes, model, branch, z, positive, tiles=tiles, tile_batch=4)
    tol = 1e-5 if host_device() == "cpu" else 1e-4
    torch.testing.assert_close(a, b, rtol=tol, atol=tol)


def test_each_tile_is_conditioned_on_control_conv_of_its_own_crop_once_per_run(setup):
    """As in training (1024 px crops) and the authors' sliding-window pipeline: a tile's LQ features are
    control_conv of the tile's own crop of the LQ latent, so its GroupNorms see that crop only. Over a run that
    cycles twice through the four seam-shifted plans each distinct tile is computed once."""
    import reference

    nodes, model, branch, clip1, clip2 = setup
    ts = mod("tiled_sampling")
    tiles, _ = plan(nodes, clip1, clip2, smooth_image(512, 512), 256, 64, mode=1, shift=True)
    assert len(tiles.plans) == 4 and tiles.count > 1
    g = torch.Generator().manual_seed(3)
    z = torch.randn(1, 16, 64, 64, generator=g)
    z[:, :, :, 40:] = z[:, :, :, 40:] * 4 + 2  # content whose statistics change across the image (sky vs detail)
    seen = []

    def wrapper(apply, a):
        seen.append(a["c"][ts.KEY])
        return apply(a["input"], a["timestep"], **a["c"])

    m = model.clone()
    m.set_model_unet_function_wrapper(wrapper)
    patched = nodes["DPIRApplyLQCondition"]().apply(m, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
    positive = [[torch.randn(1, 333, SPEC.joint_attention_dim, generator=g),
                 {"pooled_output": torch.randn(1, SPEC.pooled_projection_dim, generator=g)}]]
    steps = 2 * len(tiles.plans)
    _, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(patched, positive, steps, 1.0, 3.0, tiles=tiles,
                                                                    tile_batch=1)
    crops = []  # the number of latent crops control_conv runs on, call by call
    hook = branch.module.control_conv.register_forward_hook(lambda module, args, out: crops.append(args[0].shape[0]))
    try:
        for run in range(2):
            crops.clear()
            guider.sample(torch.randn(z.shape, generator=g), torch.zeros_like(z), sampler, sigmas, seed=run)
            # each distinct tile of the four plans once per run (shifted plans share their edge tiles); the
            # features are released at the end of a run, so the second run computes them again
            assert sum(crops) == len({t for p in tiles.plans for t in p})
        # tiles with their own features never build the whole image's (issue 22: nothing whole-image is kept on
        # the load device in tile mode)
        injection = mod("lq_injection").injection_of(patched.model_options)
        assert injection._features is None
        # the whole-image-then-crop variant (before issue 16, kept for bench.py lq-tiles) builds them once, at its
        # first use, from the whole LQ latent
        crops.clear()
        whole, guider_whole, _, one_step = nodes["DPIRSamplerPatch"]().patch(patched, positive, 1, 1.0, 3.0)
        ts.attach(whole, tiles, 1, lq_features="image")  # the guider samples this MODEL's options
        guider_whole.sample(torch.randn(z.shape, generator=g), torch.zeros_like(z), sampler, one_step, seed=0)
        assert crops == [1] and injection._features is not None
    finally:
        hook.remove()

    control_conv = reference.control_conv_from_weights(branch.module.state_dict()).requires_grad_(False)
    z_lq = (z - SPEC.vae_shift_factor) * SPEC.vae_scaling_factor
    full = control_conv(z_lq)
    calls = iter(seen)
    own_vs_whole = []
    for run in range(2):
        for step in range(steps):
            for t in tiles.plans[tiles.plan_index(step)]:
                got = next(calls)
                want = control_conv(z_lq[:, :, t.top:t.bottom, t.left:t.right])
                assert got.dtype == torch.float32
                torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
                crop = full[:, :, t.top // 2:t.bottom // 2, t.left // 2:t.right // 2]
                own_vs_whole.append(float((want - crop).norm() / crop.norm()))
    for t in tiles.plans[0]:  # the whole-image variant's one step
        torch.testing.assert_close(next(calls), full[:, :, t.top // 2:t.bottom // 2, t.left // 2:t.right // 2])
    assert next(calls, None) is None
    assert max(own_vs_whole) > 0.05  # the two variants really differ on this image


def test_tile_feature_cache_waits_where_it_is_told_and_gives_the_same_result(setup):
    """On a GPU the tiles' features wait in RAM (ComfyUI's intermediate device) between their tile batches: its
    memory planning does not count them (369 tiles, 4.4 GB bf16 at 8K). Here, on the CPU, the default keeps them
    where they are computed; storing them in an explicit store (the offload branch: a copy each, moved to the
    sampling device for its tile batch) holds exactly the distinct tiles' bytes there and samples bit-identically."""
    import comfy.model_management

    nodes, model, branch, clip1, clip2 = setup
    lqi = mod("lq_injection")
    cpu = torch.device("cpu")
    # ComfyUI's policy: RAM for a CUDA sampling device, nothing to offload when sampling on its intermediate device
    assert lqi.cache_device(torch.device("cuda", 0)) == comfy.model_management.intermediate_device() == cpu
    assert lqi.cache_device(cpu) is None

    tiles, _ = plan(nodes, clip1, clip2, smooth_image(512, 512), 256, 64, mode=1, shift=True)
    distinct = {t for p in tiles.plans for t in p}
    g = torch.Generator().manual_seed(6)
    z = torch.randn(1, 16, 64, 64, generator=g)
    positive = [[torch.randn(1, 333, SPEC.joint_attention_dim, generator=g),
                 {"pooled_output": torch.randn(1, SPEC.pooled_projection_dim, generator=g)}]]
    noise = torch.randn(z.shape, generator=g)
    out, fed, held = {}, {}, {}
    for store in (None, cpu):
        snapshot = []

        def wrapper(apply, a):
            snapshot.append(dict(lq._tiles))  # the cache as this model call sees it
            fed[store].append(a["c"][mod("tiled_sampling").KEY])
            return apply(a["input"], a["timestep"], **a["c"])

        m = model.clone()
        m.set_model_unet_function_wrapper(wrapper)
        patched = nodes["DPIRApplyLQCondition"]().apply(m, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
        lq = lqi.injection_of(patched.model_options)
        lq.store = store
        fed[store] = []
        _, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(patched, positive, len(tiles.plans), 2.0, 3.0,
                                                                        tiles=tiles, tile_batch=3)
        out[store] = guider.sample(noise, torch.zeros_like(z), sampler, sigmas, seed=0)
        held[store] = snapshot[-1]
        assert lq._tiles == {}  # released at the end of the run
    assert set(held[None]) == set(held[cpu]) == distinct  # every distinct tile once, nothing else
    per_tile = {t: f.numel() * f.element_size() for t, f in held[cpu].items()}
    for t, f in held[cpu].items():  # offloaded: each tile its own copy in the store, not a view of its batch
        assert f.device == cpu and f._base is None and f.untyped_storage().nbytes() == per_tile[t]
    assert any(f._base is not None for f in held[None].values())  # kept: views of the batch they were computed in
    assert len(fed[None]) == len(fed[cpu]) > 0
    for a, b in zip(fed[None], fed[cpu]):
        assert torch.equal(a, b)
    assert torch.equal(out[None], out[cpu])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: pinned RAM and the non-blocking copy to the GPU")
def test_tile_features_wait_in_pinned_ram_when_sampling_on_cuda(setup):
    nodes, model, branch, clip1, clip2 = setup
    lqi = mod("lq_injection")
    tiles, _ = plan(nodes, clip1, clip2, smooth_image(512, 512), 256, 64, mode=1, shift=True)
    z = torch.randn(1, 16, 64, 64, generator=torch.Generator().manual_seed(8))
    lq = lqi.injection_of(nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
                          .model_options)
    cuda = torch.device("cuda", torch.cuda.current_device())
    try:
        on_gpu = [f for p in tiles.plans for f in lq.tile_features(p, cuda)]
        assert all(f.device == cuda for f in on_gpu)
        assert all(f.device.type == "cpu" and f.is_pinned() for f in lq._tiles.values())
        lq._tiles.clear()
        lq.store = cuda  # kept on the GPU instead: the same numbers
        kept = [f for p in tiles.plans for f in lq.tile_features(p, cuda)]
        assert all(torch.equal(a, b) for a, b in zip(on_gpu, kept))
    finally:
        lq._tiles.clear()


def test_blending_has_no_seams(setup):
    """An identity-like model whose output disagrees from tile to tile (it adds the tile's own mean):
    hard stitching would jump at every border; the Gaussian blend must change smoothly."""
    nodes, model, branch, clip1, clip2 = setup
    image = smooth_image(256, 512)
    tiles, _ = plan(nodes, clip1, clip2, image, 256, 96, mode=1)
    # the sampler patch wants a DPIR MODEL; the wrapper below replaces the whole model call
    m = nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": torch.zeros(1, 16, 32, 64)}, 1.0, 0.0, 1.0)[0]
    m.set_model_unet_function_wrapper(lambda apply, a: a["input"] + a["input"].mean(dim=(1, 2, 3), keepdim=True))
    _, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(m, text_prompt(), 1, 1.0, 3.0, tiles=tiles)
    x = torch.nn.functional.interpolate(torch.randn(1, 16, 3, 5, generator=torch.Generator().manual_seed(7)),
                                        size=(32, 64), mode="bicubic", align_corners=True)
    out = guider.sample(x, torch.zeros_like(x), sampler, sigmas, seed=0).cpu()  # one Euler step from sigma 1: the denoised
    offset = ((out - SPEC.vae_shift_factor) * SPEC.vae_scaling_factor - x)[0, 0]
    means = [x[:, :, t.top:t.bottom, t.left:t.right].mean() for t in tiles.plans[0]]
    hard_jump = max(abs(a - b) for a, b in zip(means, means[1:]))
    blended_jump = max(offset.diff(dim=0).abs().max(), offset.diff(dim=1).abs().max())
    assert len(means) >= 3 and hard_jump > 0.05
    assert blended_jump < 0.25 * hard_jump  # spread over the overlap instead of one step
    # normalised weights: at the image corner, inside the first tile only, the offset is that tile's mean
    torch.testing.assert_close(offset[0, 0], means[0], rtol=1e-4, atol=1e-4)


def test_interrupt_stops_within_one_tile_batch(setup):
    import comfy.model_management

    nodes, model, branch, clip1, clip2 = setup
    image = smooth_image(256, 384)
    tiles, _ = plan(nodes, clip1, clip2, image, 256, 64, mode=1)
    calls = []

    def wrapper(apply, a):
        calls.append(a["input"].shape[0])
        if len(calls) == 2:
            comfy.model_management.interrupt_current_processing(True)
        return apply(a["input"], a["timestep"], **a["c"])

    m = model.clone()
    m.set_model_unet_function_wrapper(wrapper)
    z = torch.randn(1, 16, 32, 48, generator=torch.Generator().manual_seed(5))
    positive = [[torch.randn(1, 333, SPEC.joint_attention_dim), {"pooled_output": torch.randn(1, 64)}]]
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        sample(nodes, m, branch, z, positive, steps=4, tiles=tiles, tile_batch=1)
    assert len(calls) == 2  # stopped before the next tile batch, not at the end of the step
    comfy.model_management.interrupt_current_processing(False)
    out = sample(nodes, model, branch, z, positive, steps=1, tiles=tiles)  # and the next run works
    assert torch.isfinite(out).all()


def test_global_tokens_once_per_image_and_each_crop_once(setup):
    """Issue 22: no CLIP work repeated across tiles, plans or nodes. DPIR Visual Prompt and the Tiled Prompt read the
    same IMAGE: the global crops go through the towers once; every distinct tile crop of the four plans once."""
    nodes, _, _, clip1, clip2 = setup
    image = smooth_image(512, 512)
    seen = []
    original = clip2.encode_image

    def counting(pixels, crop=True):
        seen.append(pixels.shape[0])
        return original(pixels, crop=crop)

    clip2.encode_image = counting
    try:
        nodes["DPIRVisualPrompt"]().encode(clip1, clip2, image)
        n_global = len(mod("tiled_sampling").dp.global_tiles(512, 512))
        assert sum(seen) == 1 + n_global  # the local image, then the global tiles
        seen.clear()
        tiles, _ = plan(nodes, clip1, clip2, image, 256, 64, shift=True)
        assert sum(seen) == len({(t.top, t.left, t.height, t.width) for p in tiles.plans for t in p})
    finally:
        clip2.encode_image = original


def test_each_tile_prompt_is_the_visual_prompt_of_its_crop_in_a_batch(setup, monkeypatch):
    """Per-tile prompts of a batch of two images, the crops cut a few at a time (as at 8K): each equals DPIR's visual
    prompt of that image's tile crop in its whole image, computed on its own."""
    nodes, _, _, clip1, clip2 = setup
    ts = mod("tiled_sampling")
    image = torch.cat([smooth_image(384, 512, seed=1), smooth_image(384, 512, seed=2)])
    monkeypatch.setattr(ts.dp, "CROP_BYTES", 2 * 3 * 256 * 256 * 4 * 2)  # two crops per chunk
    tiles, _ = plan(nodes, clip1, clip2, image, 256, 64, shift=True)
    enc1, enc2 = ts.ComfyVisionEncoder(clip1, "local"), ts.ComfyVisionEncoder(clip2, "summary")
    bchw = image.movedim(-1, 1)
    checked = 0
    for p, plan_tiles in enumerate(tiles.plans):
        for i, t in enumerate(plan_tiles[:3]):
            y0, x0 = t.top * 8, t.left * 8
            crop = bchw[:, :, y0:min(384, t.bottom * 8), x0:min(512, t.right * 8)]
            want_tokens, want_pooled = ts.dp.visual_prompt(crop, bchw, enc1, enc2)
            got_tokens, got_pooled = tiles.visual[(p, i)]
            torch.testing.assert_close(got_tokens, want_tokens, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(got_pooled, want_pooled, rtol=1e-5, atol=1e-5)
            checked += 1
    assert checked >= 6


def test_tile_preview_of_a_large_photo_is_shrunk_with_the_plan_drawn_to_scale(setup):
    """The tile preview is a picture of the plan: for a 4104×3080 photo at most 2048 px on the long side (an 8K
    preview PNG is slow to write and to show), with the tile borders where the tiles are, scaled."""
    nodes, _, _, clip1, clip2 = setup
    image = torch.zeros(1, 3080, 4104, 3)
    tiles, preview = plan(nodes, clip1, clip2, image, 1024, 128, mode=1)
    assert preview.shape == (1, 1537, 2048, 3)  # 3080 × 2048 / 4104
    k = 2048 / 4104
    edges = (preview[0].sum(-1) > 0.5).float()  # the black photo is dark; borders are bright
    for t in tiles.plans[0]:
        y, x = round(t.top * 8 * k), round(t.left * 8 * k)
        assert edges[y, x:x + 20].mean() == 1 and edges[y:y + 20, x].mean() == 1  # its top-left corner is drawn
    assert edges.mean() < 0.2
