"""ComfyUI-DPIR benchmark: ratios measured side by side in one run.

    python bench/bench.py pipeline [--size small|tiny|sd3-medium] [--image 256] [--steps 4] [--reps 3]
    python bench/bench.py overhead [--size small|sd3-medium] [--images 256 512 1024] [--steps 4] [--reps 5] [--compile]
    python bench/bench.py memory   [--size small|sd3-medium] [--images 1024 2048 4096]
    python bench/bench.py tiles    [--size tiny|sd3-medium] [--reps 3]
    python bench/bench.py lq-tiles [--size small] [--image 512] [--tile 256] [--real 2048 4096] [--dit-step]
    python bench/bench.py realsize [--images 512 1024] [--large 2048] [--tile 1024] [--json out.json]
    python bench/bench.py loadmem  [--weight-dtype default] --cpu
    python bench/bench.py cards    [--cards 8 12 16 24] [--outputs 1024 2048 4096 8192]
    python bench/bench.py caches   [--size small|tiny|sd3-medium] [--image 512] [--steps 28] [--reps 3] [--threshold 0.2]
    python bench/bench.py vae      [--image 2048] [--tile 1024] [--overlap 64] [--whole]
    python bench/bench.py large    [--size small] [--images 2048 4096 8192] [--tile 1024] [--steps 1]
    python bench/bench.py prompts  [--size sd3-medium] [--image 2048] [--tile 768] --models DIR

Random weights in the official file formats (bench/real_weights.py, written tensor by tensor; `--models DIR`
writes them there once and reuses them), loaded through the pack's nodes inside the host ComfyUI (found as
the tests find it). 'small' is a CPU-sized SD3 (8 blocks, width 512); 'sd3-medium' has the real shapes
(24 blocks, width 1536, context 4096; real-size ViT-B/32 and ViT-bigG towers; the T5 prompt is a random
256×4096 embedding file); its DiT is loaded in bf16.

pipeline: DPIR sampling vs plain SD3 sampling of the same transformer; the
pack end to end vs the independent diffusers reference (tests/reference.py);
stage breakdown with time and peak memory (CUDA peak allocated on a GPU,
process RSS high-water on the CPU); on a GPU, the transformer's achieved
TFLOP/s against the card's bf16 peak.
overhead: DPIR sampling vs plain SD3 sampling at several sizes, without the VAE.
memory: the same stages at 1024², 2048² and 4096² (tiled sampling, tile prompts and tiled VAE above one
1024 px tile, as dpir_restore_large): time and peak memory per stage; on a GPU the models are offloaded
between stages (as ComfyUI does when VRAM is short), so each peak holds only that stage's models.
tiles: seconds per tile-step from 2×2 to 8×8 tiles, and peak memory of one
tiled sampling step for 2K, 4K and 8K outputs.
lq-tiles: a tile's LQ features from control_conv of its own latent crop (the default, as trained) vs the crop
of the whole image's features: how much features and sampled images differ on a multi-tile image, and the
time, memory and cache size of the per-tile features at real width (SD3-medium control_conv on 2K/4K LQ
latents) against the whole-image features, the bytes one sampling step takes from that cache (on a GPU the
cache waits in RAM: what moves to the GPU per step) and (--dit-step: writes and loads the 2B-parameter
transformer) one real-size tile-step of the DiT.
realsize: the shipped dpir_restore (and dpir_restore_large) workflows through a real ComfyUI server (CPU),
real-size weights by default: per node, seconds and the server's peak RSS (websocket events + RSS sampling).
loadmem: DPIR Model Loader (folder, single file) vs ComfyUI's UNETLoader on the same weights, each in a
fresh process: peak and resident memory, what Python still reaches.
caches: core's step caches on the DPIR model (LazyCache, EasyCache at their defaults but the threshold, and
EasyCache with the pack's DIFFUSION_MODEL hook removed, i.e. core alone) vs uncached sampling, all in one
run: steps skipped, speed ratio (uncached seconds / cached), PSNR of the decoded image against uncached.
cards: the 'Which card runs what' table from ComfyUI's own memory estimates (no model is run).
vae: one-pass tiled decode (DPIR VAE Decode) vs VAEDecodeTiled (three tilings) at the same tile size, one run;
--whole adds seam figures against an untiled decode (max/mean abs difference, PSNR).
vae-windows: one-pass decode of one latent in windows of several sizes and 'auto', one run: seconds and peak
memory per window size (why 'auto' stops at 768 px windows on the CPU).
attention: ComfyUI's CPU attention for the DiT (sub-quadratic) vs PyTorch SDPA on SD3-medium tile shapes, one
run: seconds, peak memory and the largest difference.
colour-fix: DPIR Colour Fix before (image-size copies) and now (strips into the output IMAGE), one run:
seconds and peak memory per output size, and whether the results are identical.
large: dpir_restore_large stage by stage at 2K/4K/8K outputs in one process (×4 of a quarter-size photo): seconds
and peak memory per stage, the VAE's whole-image/tile choice, and the 8K/2K peak ratio.
prompts: per-tile visual prompts as the node runs, one crop per tower call, and the floor (one forward of both
towers per distinct crop, timed alone); real-size towers by default.
"""
from __future__ import annotations

import argparse
import gc
import importlib.util
import json
import logging
import math
import re
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import tiny_models as tm  # noqa: E402
from host.comfy_harness import PACK_NAME, find_comfyui, load_compat  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
import real_weights as rw  # noqa: E402
from real_weights import spec_for  # noqa: E402

BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "RTX 4090": 165.0}


class Memory:
    """Peak memory of a stage: CUDA peak allocated, or the process RSS high-water sampled every 2 ms."""

    def __init__(self, device):
        self.cuda = device.type == "cuda"
        self.proc = psutil.Process()

    def __enter__(self):
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self.base = torch.cuda.memory_allocated()
        else:
            self.base = self.proc.memory_info().rss
            self.peak, self._stop = self.base, False
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        self.t0 = time.perf_counter()
        return self

    def _poll(self):
        while not self._stop:
            self.peak = max(self.peak, self.proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc):
        if self.cuda:
            torch.cuda.synchronize()
            self.seconds = time.perf_counter() - self.t0
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self.seconds = time.perf_counter() - self.t0
            self._stop = True
            self._thread.join()
            self.peak_bytes = max(self.peak, self.proc.memory_info().rss)
        self.delta_bytes = self.peak_bytes - self.base
        return False


def host_nodes(spec: tm.TinySpec, size: str, device: str, models_dir=None):
    """ComfyUI in-process with the pack, and a models folder of random official-format files."""
    base = Path(tempfile.mkdtemp(prefix="dpir-bench-"))
    models = base / "models"
    if models_dir is not None and (Path(models_dir) / "dpir" / "transformer").is_dir():
        models.symlink_to(Path(models_dir).resolve())  # files written by an earlier run (--models)
    else:
        print(f"writing random {spec.num_layers}-block width-{spec.hidden} DPIR files to {models_dir or models} ...",
              file=sys.stderr)
        rw.write_model_set(models_dir or models, size, log=lambda m: print(m, file=sys.stderr))
        if models_dir is not None:
            models.symlink_to(Path(models_dir).resolve())
    return start_host(base, device), models


def start_host(base: Path, device: str, extra_nodes: bool = False):
    """ComfyUI imported in this process on ``base`` (--base-directory; --cpu unless a GPU), the pack loaded as
    ComfyUI loads it; the pack's NODE_CLASS_MAPPINGS. ``extra_nodes``: also the core's comfy_extras nodes (what
    the shipped workflows use), all registered in ComfyUI's ``nodes.NODE_CLASS_MAPPINGS`` for its executor."""
    comfy = find_comfyui()
    if comfy.path is None:
        raise SystemExit(f"bench needs a ComfyUI host: {comfy.reason}")
    (base / "custom_nodes").mkdir(parents=True, exist_ok=True)
    sys.argv = ["main.py", "--base-directory", str(base), *load_compat().no_api_nodes_flags(comfy.path)] + (
        ["--cpu"] if device == "cpu" else [])
    sys.path.insert(0, str(comfy.path))
    import comfy.options

    comfy.options.enable_args_parsing()
    import comfy.cli_args  # noqa: F401
    sp = importlib.util.spec_from_file_location(PACK_NAME, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    pack = importlib.util.module_from_spec(sp)
    sys.modules[PACK_NAME] = pack
    sp.loader.exec_module(pack)
    if extra_nodes:
        import asyncio

        import nodes

        asyncio.run(nodes.init_extra_nodes(init_custom_nodes=False, init_api_nodes=False))
        nodes.NODE_CLASS_MAPPINGS.update(pack.NODE_CLASS_MAPPINGS)
    return pack.NODE_CLASS_MAPPINGS


def setup(args):
    """The device (a GPU unless --cpu), the model spec of --size, and ComfyUI with the pack on its files."""
    device = torch.device("cuda" if torch.cuda.is_available() and not args.cpu else "cpu")
    spec = spec_for(args.size)
    return (device, spec) + host_nodes(spec, args.size, device.type, args.models)


def median_spread(xs):
    return statistics.median(xs), min(xs), max(xs)


def fmt(xs, unit="s"):
    m, lo, hi = median_spread(xs)
    return f"{m:8.3f} {unit} [{lo:.3f}–{hi:.3f}]"


def mmdit_flops(spec: tm.TinySpec, tokens: int, context: int = 333) -> float:
    """Forward FLOPs of SD3's MMDiT per sample (matmuls + attention), counted analytically."""
    d, n, c = spec.hidden, tokens, context
    per_block = 2 * (n + c) * d * (3 * d)  # q, k, v for image and context streams
    per_block += 2 * 2 * (n + c) * (n + c) * d  # attention scores and weighted sum
    per_block += 2 * (n + c) * d * d  # output projections
    per_block += 2 * 2 * (n + c) * d * 4 * d  # the two MLP matmuls (4× expansion)
    patch = 2 * n * (16 * 4) * d + 2 * n * d * (16 * 4)  # patch embedding and final projection
    return spec.num_layers * per_block + patch + 2 * c * spec.joint_attention_dim * d


def load_pack_models(nodes, models, device):
    """The models of dpir_restore, loaded through the pack's loaders (bf16 transformer on a GPU)."""
    import comfy.sd
    import comfy.utils

    model, branch = nodes["DPIRModelLoader"]().load(transformer_name(models), weight_dtype(device, models))
    stock = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(models / "vae" / "sd3_vae.safetensors")))
    vae = nodes["DPIRRobustVAELoader"]().load("robust_vae/diffusion_pytorch_model.safetensors", vae=stock)[0]
    clip = nodes["DPIRCLIPVisionLoader"]().load
    return model, branch, vae, clip("clip_vit_b32.safetensors")[0], clip("clip_vision_g.safetensors")[0]


def transformer_name(models) -> str:
    """The transformer folder as DPIR Model Loader lists it (by its shard index when sharded)."""
    index = "transformer/diffusion_pytorch_model.safetensors.index.json"
    return index if (Path(models) / "dpir" / index).is_file() else "transformer/diffusion_pytorch_model.safetensors"


def weight_dtype(device, models) -> str:
    """bf16 on a GPU and for a real-size DiT on the CPU (ComfyUI's CPU default, fp32, doubles it to 8.4 GB)."""
    config = json.loads((Path(models) / "dpir" / "transformer" / "config.json").read_text())
    return "bf16" if device.type == "cuda" or config["num_layers"] >= 24 else "default"


def test_image(s: int) -> torch.Tensor:
    """A smooth random s×s photo (B, H, W, C)."""
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.interpolate(torch.rand(1, 3, max(1, s // 16), max(1, s // 16), generator=g),
                                           size=(s, s), mode="bicubic").clamp(0, 1).movedim(1, -1)


def run_pack(nodes, loaded, image, steps, device, tiles=False, tile_batch=4, offload=False, tile=1024, cfg=1.0,
             outputs=None, upscale=1.0):
    """dpir_restore (or dpir_restore_large with ``tiles`` of ``tile`` px) stage by stage: {stage: Memory}, the LQ
    latent and the sampler inputs. ``offload``: before each stage every model is unloaded, as ComfyUI does when
    VRAM is short, so a stage's peak holds only its own models. ``outputs`` (a dict) receives the sampled
    latent, the decoded image (B, H, W, C) and the colour-fixed one."""
    import comfy.model_management
    import comfy.sample

    model, branch, vae, clip1, clip2 = loaded
    stages = {}

    def stage(name):
        if offload:
            comfy.model_management.unload_all_models()
            comfy.model_management.soft_empty_cache(True)
        stages[name] = Memory(device)
        return stages[name]

    with stage("robust VAE encode"):
        enc = nodes["DPIRRobustVAEEncode"]().encode(image, vae, "upscale factor" if upscale != 1.0 else "keep size",
                                                    1024, upscale, "auto")
        latent, lq = enc["result"]
    stages["robust VAE encode"].note = enc["ui"]["text"][0]
    with stage("CLIP visual prompt"):
        visual = nodes["DPIRVisualPrompt"]().encode(clip1, clip2, lq)[0]
    with stage("T5 prompt (embedding file)"):
        text = nodes["DPIRT5TextPrompt"]().encode("", t5_embedding="prompt.safetensors")["result"][0]
        positive, _ = nodes["DPIRDualPrompt"]().combine(visual, text)
    plan = None
    if tiles:
        with stage("CLIP tile prompts (tiled)"):
            plan = nodes["DPIRTiledPrompt"]().plan(clip1, clip2, lq, text, tile, tile // 8, "per-tile local prompt",
                                                   True, 1)[0]
        stages["CLIP tile prompts (tiled)"].note = f"{len({t for p in plan.plans for t in p})} distinct tiles"
    with stage("LQ condition + sampler patch (once per image)"):
        patched = nodes["DPIRApplyLQCondition"]().apply(model, branch, latent, 1.0, 0.0, 1.0)[0]
        _, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(patched, positive, steps, cfg, 3.0, tiles=plan,
                                                                        tile_batch=tile_batch)
    noise = comfy.sample.prepare_noise(latent["samples"], 0)
    with stage("sampling" + (" (tiled)" if tiles else "")):
        out = guider.sample(noise, latent["samples"], sampler, sigmas, seed=0)
    with stage("decode" + (" (DPIR VAE Decode, auto)" if tiles else "")):
        if tiles:
            dec = nodes["DPIRVAEDecode"]().decode({"samples": out}, vae, "auto")
            decoded, stages["decode (DPIR VAE Decode, auto)"].note = dec["result"][0], dec["ui"]["text"][0]
        else:
            decoded = vae.decode(out)
    with stage("colour fix"):
        restored = nodes["DPIRColourFix"]().fix(decoded, lq, "wavelet")[0]
    if outputs is not None:
        outputs.update(latent=out, decoded=decoded, restored=restored)
    return stages, latent, positive, (guider, sampler, sigmas)


STEP_CACHES = ("LazyCache", "EasyCache")
CORE_ALONE = "EasyCache, core alone (pack hook removed)"


class SkipCounter(logging.Handler):
    """(skipped, steps) from core's '<cache> - skipped k/n steps' log line of the last sampling run."""

    def __init__(self):
        super().__init__(logging.INFO)
        self.last = None

    def emit(self, record):
        m = re.search(r" - skipped (\d+)/(\d+) steps", record.getMessage())
        if m:
            self.last = (int(m[1]), int(m[2]))


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two images in [0, 1]."""
    mse = float(((a.float().cpu() - b.float().cpu()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def step_caches(nodes, loaded, image, steps, reps, device, threshold) -> dict:
    """Uncached DPIR sampling of ``image`` vs each core step cache on the DPIR MODEL (and EasyCache without the
    pack's hook): per variant the median seconds of ``reps`` runs (after a warm-up, variants in rotating order),
    the steps skipped, the speed ratio (uncached / cached seconds) and the PSNR of the decoded image against the
    uncached one."""
    import comfy.patcher_extension as pe
    import comfy.sample
    from comfy_extras.nodes_easycache import EasyCacheNode, LazyCacheNode

    model, branch, vae, clip1, clip2 = loaded
    latent, lq = nodes["DPIRRobustVAEEncode"]().encode(image, vae, "keep size", 1024, 1.0, "auto")["result"]
    visual = nodes["DPIRVisualPrompt"]().encode(clip1, clip2, lq)[0]
    text = nodes["DPIRT5TextPrompt"]().encode("", t5_embedding="prompt.safetensors")["result"][0]
    positive, _ = nodes["DPIRDualPrompt"]().combine(visual, text)
    patched = nodes["DPIRApplyLQCondition"]().apply(model, branch, latent, 1.0, 0.0, 1.0)[0]
    variants = {"none": patched}
    for name, node in zip(STEP_CACHES, (LazyCacheNode, EasyCacheNode)):
        variants[name] = node.execute(patched, threshold, 0.15, 0.95, False).result[0]
    variants[CORE_ALONE] = variants["EasyCache"].clone()
    variants[CORE_ALONE].remove_wrappers_with_key(pe.WrappersMP.APPLY_MODEL, "dpir_dit_wrappers")
    samplers = {k: nodes["DPIRSamplerPatch"]().patch(m, positive, steps, 1.0, 3.0)[1:] for k, m in variants.items()}
    z = latent["samples"]
    noise = comfy.sample.prepare_noise(z, 0)
    counter, root = SkipCounter(), logging.getLogger()
    level = root.level
    root.addHandler(counter)
    root.setLevel(logging.INFO)
    names, times, skipped, outs = list(samplers), {k: [] for k in samplers}, {}, {}
    try:
        for rep in range(reps + 1):  # rep 0 warms up
            for k in names[rep % len(names):] + names[:rep % len(names)]:
                guider, sampler, sigmas = samplers[k]
                counter.last = None
                with Memory(device) as m:
                    outs[k] = guider.sample(noise, z, sampler, sigmas, seed=0)
                if rep:
                    times[k].append(m.seconds)
                skipped[k] = counter.last or (0, steps)  # the uncached run logs nothing
    finally:
        root.removeHandler(counter)
        root.setLevel(level)
    images = {k: vae.decode(v) for k, v in outs.items()}
    t_none = statistics.median(times["none"])
    return {k: {"skipped": skipped[k][0], "steps": skipped[k][1], "seconds": round(statistics.median(times[k]), 4),
                "speed_ratio": round(t_none / statistics.median(times[k]), 3),
                "psnr_db": round(psnr(images[k], images["none"]), 2)} for k in names}


def caches(args):
    """Step caches vs uncached sampling at --steps (28, the official count), one image, one run."""
    device, _, nodes, models = setup(args)
    loaded = load_pack_models(nodes, models, device)
    rows = step_caches(nodes, loaded, test_image(args.image), args.steps, args.reps, device, args.threshold)
    print(f"\n## Step caches on the DPIR model: {device.type}, '{args.size}' model (random weights), {args.image}², "
          f"{args.steps} steps, reuse_threshold {args.threshold} (start 0.15, end 0.95), median of {args.reps}\n\n"
          "| cache | steps skipped | seconds | speed ratio (uncached / cached) | PSNR vs uncached (dB) |\n"
          "|---|---|---|---|---|")
    for k, r in rows.items():
        print(f"| {k} | {r['skipped']}/{r['steps']} | {r['seconds']:.3f} | {r['speed_ratio']:.2f}× | {r['psnr_db']} |")


def stage_table(per_stage):
    """Markdown rows: stage, seconds, share of the total, peak memory (and the stage's own increase)."""
    total = sum(statistics.median(m.seconds for m in ms) for ms in per_stage.values())
    print("| stage | seconds | share | peak memory (MiB, stage delta) |\n|---|---|---|---|")
    for k, ms in per_stage.items():
        secs = [m.seconds for m in ms]
        peak = statistics.median(m.peak_bytes for m in ms) / 2**20
        delta = statistics.median(m.delta_bytes for m in ms) / 2**20
        print(f"| {k} | {fmt(secs)} | {100 * statistics.median(secs) / total:5.1f}% | {peak:9.0f} ({delta:+.0f}) |")


def timed_pair(first, second, z, rep, device):
    """Seconds of sampling with ``first`` and with ``second`` (each a (guider, sampler, sigmas) tuple), back
    to back in alternating order so caches and allocators favour neither."""
    import comfy.sample

    def sample(m):
        with Memory(device) as mem:
            m[0].sample(comfy.sample.prepare_noise(z, 0), z, m[1], m[2], seed=0)
        return mem.seconds

    if rep % 2 == 0:
        a, b = sample(first), sample(second)
    else:
        b, a = sample(second), sample(first)
    return a, b


def plain_sd3(model, positive, steps):
    """(guider, sampler, sigmas) of plain SD3 sampling with ``model`` (no LQ condition): Euler, 'normal'
    schedule, shift 3, CFG 1, as DPIR Sampler Patch sets them up."""
    import comfy.samplers
    from comfy_extras.nodes_model_advanced import ModelSamplingSD3

    plain = ModelSamplingSD3().patch(model, 3.0)[0]
    guider = comfy.samplers.CFGGuider(plain)
    guider.set_conds(positive, positive)
    guider.set_cfg(1.0)
    sigmas = comfy.samplers.calculate_sigmas(plain.get_model_object("model_sampling"), "normal", steps)
    return guider, comfy.samplers.sampler_object("euler"), sigmas


def dpir_over_plain(model, dpir, positive, z, steps, rep, device):
    """DPIR sampling time / plain SD3 sampling time of the same transformer (same prompt tensors, steps,
    sampler, schedule, shift 3)."""
    t_dpir, t_plain = timed_pair(dpir, plain_sd3(model, positive, steps), z, rep, device)
    return t_dpir / t_plain


def overhead(args):
    """DPIR vs plain SD3 sampling at each size, without the VAE (random LQ latent; prompts from a 256² image);
    with --compile also DPIR through ComfyUI's TorchCompileModel (inductor) vs DPIR eager."""
    device, _, nodes, models = setup(args)
    model, branch, _, clip1, clip2 = load_pack_models(nodes, models, device)
    visual = nodes["DPIRVisualPrompt"]().encode(clip1, clip2, test_image(256))[0]
    text = nodes["DPIRT5TextPrompt"]().encode("", t5_embedding="prompt.safetensors")["result"][0]
    positive, _ = nodes["DPIRDualPrompt"]().combine(visual, text)
    print(f"\n## DPIR / plain SD3 sampling: {device.type}, '{args.size}' model, {args.steps} steps, "
          f"{args.reps} reps\n\n| image | DPIR / plain |" + (" eager DPIR / compiled DPIR | compile (s) |"
                                                              if args.compile else "") +
          "\n|---|---|" + ("---|---|" if args.compile else ""))
    for s in args.images:
        z = torch.randn(1, 16, s // 8, s // 8, generator=torch.Generator().manual_seed(1))
        patched = nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
        dpir = nodes["DPIRSamplerPatch"]().patch(patched, positive, args.steps, 1.0, 3.0)[1:]
        dpir_over_plain(model, dpir, positive, z, 1, 0, device)  # warm-up
        ratio = [dpir_over_plain(model, dpir, positive, z, args.steps, rep, device) for rep in range(args.reps)]
        row = f"| {s}² | {fmt(ratio, '×')} |"
        if args.compile:
            from comfy_extras.nodes_torch_compile import TorchCompileModel

            torch._dynamo.reset()
            compiled = TorchCompileModel.execute(patched, "inductor").result[0]
            compiled = nodes["DPIRSamplerPatch"]().patch(compiled, positive, args.steps, 1.0, 3.0)[1:]
            t0 = time.perf_counter()
            timed_pair(compiled, dpir, z, 0, device)  # compiles
            compile_s = time.perf_counter() - t0
            pairs = [timed_pair(dpir, compiled, z, rep, device) for rep in range(args.reps)]
            row += f" {fmt([a / b for a, b in pairs], '×')} | {compile_s:.0f} |"
        print(row)


def pipeline(args):
    device, spec, nodes, models = setup(args)
    loaded = load_pack_models(nodes, models, device)
    model, _, vae, _, _ = loaded
    s = args.image
    image = test_image(s)

    print(f"device {device}, model '{args.size}' ({spec.num_layers} blocks, width {spec.hidden}), image {s}², "
          f"{args.steps} steps, {args.reps} repetitions (median [min–max])", file=sys.stderr)
    run_pack(nodes, loaded, image, args.steps, device)  # warm-up: loads and first-call costs out of the figures
    per_stage, ratio, pack_total, ref_total, decode_ratio = {}, [], [], [], []
    ref = reference_runner(spec, models, device, image, args.steps) if not args.no_reference else None
    for rep in range(args.reps):
        stages, latent, positive, dpir = run_pack(nodes, loaded, image, args.steps, device)
        for k, m in stages.items():
            per_stage.setdefault(k, []).append(m)
        pack_total.append(sum(m.seconds for m in stages.values()))
        ratio.append(dpir_over_plain(model, dpir, positive, latent["samples"], args.steps, rep, device))
        with Memory(device) as robust:
            nodes["DPIRRobustVAEDecode"]().decode(latent, vae)
        decode_ratio.append((stages["robust VAE encode"].seconds + robust.seconds) / stages["robust VAE encode"].seconds)
        if ref is not None:
            ref_total.append(ref())
    print(f"\n## pipeline: {device.type}, '{args.size}' model, {s}×{s}, {args.steps} steps\n")
    print("| measure | value |\n|---|---|")
    print(f"| DPIR sampling / plain SD3 sampling (same transformer, steps, size) | {fmt(ratio, '×')} |")
    if ref_total:
        print(f"| diffusers reference end to end / pack end to end | {fmt([r / p for r, p in zip(ref_total, pack_total)], '×')} |")
    print(f"| optimisation: robust encode + the LQ decode (the encode's former third output) / encode alone | "
          f"{fmt(decode_ratio, '×')} |\n")
    stage_table(per_stage)
    if device.type == "cuda":
        tokens = (s // 16) ** 2
        flops = mmdit_flops(spec, tokens) * args.steps
        tflops = flops / statistics.median(per_stage["sampling"][i].seconds for i in range(args.reps)) / 1e12
        name = torch.cuda.get_device_name()
        peak = next((v for k, v in BF16_PEAK_TFLOPS.items() if k in name), None)
        print(f"\ntransformer: {tflops:.1f} TFLOP/s achieved" + (f" = {100 * tflops / peak:.1f}% of {name}'s "
              f"{peak:.0f} TFLOP/s bf16 dense peak" if peak else f" on {name}"))


def memory(args):
    """Per-stage time and peak memory of one restoration at each size; tiled above one 1024 px tile."""
    device, _, nodes, models = setup(args)
    loaded = load_pack_models(nodes, models, device)
    offload = device.type == "cuda" and not args.keep_loaded
    print(f"device {device}, model '{args.size}', {args.steps} step(s), "
          f"{'models offloaded between stages' if offload else 'models stay loaded'}", file=sys.stderr)
    run_pack(nodes, loaded, test_image(256), 1, device)  # warm-up
    for s in args.images:
        tiles = s > 1024
        stages = run_pack(nodes, loaded, test_image(s), args.steps, device, tiles=tiles, offload=offload)[0]
        print(f"\n## memory: {device.type}, '{args.size}' model, {s}×{s}" + (" (tiled: 1024 px tiles, 128 px "
              "overlap, tiled VAE)" if tiles else "") + "\n")
        stage_table({k: [m] for k, m in stages.items()})


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = float(((a.float() - b.float()) ** 2).mean())
    return 10 * math.log10(1.0 / mse) if mse > 0 else float("inf")


def robust_vae_and_latent(args):
    """(device, the real-shape robust VAE, the pack's nodes.tiled_vae, a photo-like latent of --image px), warm."""
    device, _, nodes, models = setup(args)
    import comfy.sd
    import comfy.utils

    stock = comfy.sd.VAE(sd=comfy.utils.load_torch_file(str(models / "vae" / "sd3_vae.safetensors")))
    vae = nodes["DPIRRobustVAELoader"]().load("robust_vae/diffusion_pytorch_model.safetensors", vae=stock)[0]
    z = photo_latent(args.image // 8) * 0.5
    vae.decode(z[:, :, :16, :16])  # warm-up
    return device, vae, sys.modules[f"{PACK_NAME}.nodes.tiled_vae"], z


def vae_tiles(args):
    """One-pass tiled decode (DPIR VAE Decode) vs ComfyUI's VAEDecodeTiled (three tilings) at the same tile size and
    overlap, in one run; with --whole, both against an untiled decode of the same latent (seams)."""
    device, vae, tvae, z = robust_vae_and_latent(args)
    from nodes import VAEDecodeTiled

    print(f"device {device}, SD3 VAE (real shape, random weights), {args.image}², tiles {args.tile} px, overlap "
          f"{args.overlap} px", file=sys.stderr)
    with Memory(device) as one:
        a, choice = tvae.decode(vae, z, "on", tile_px=args.tile, overlap_px=args.overlap)
    with Memory(device) as three:
        b = VAEDecodeTiled().decode(vae, {"samples": z}, args.tile, args.overlap)[0]
    print(f"\n## vae: {device.type}, {args.image}², tile {args.tile} px, overlap {args.overlap} px\n")
    print("| decode | tiles | seconds | peak memory (MiB, delta) |\n|---|---|---|---|")
    print(f"| one pass (DPIR VAE Decode) | {choice.plan.count} | {one.seconds:.1f} | {one.peak_bytes / 2**20:.0f} "
          f"({one.delta_bytes / 2**20:+.0f}) |")
    print(f"| three tilings (VAEDecodeTiled) | 3 passes | {three.seconds:.1f} | {three.peak_bytes / 2**20:.0f} "
          f"({three.delta_bytes / 2**20:+.0f}) |")
    print(f"\nVAEDecodeTiled / one pass: {three.seconds / one.seconds:.2f}× time")
    if args.whole:
        with Memory(device) as whole:
            w = vae.decode(z)
        print(f"\nagainst the untiled decode ({whole.seconds:.1f} s, {whole.delta_bytes / 2**20:+.0f} MiB):\n")
        print("| decode | max abs diff | mean abs diff | PSNR (dB) |\n|---|---|---|---|")
        for name, x in (("one pass", a), ("three tilings", b)):
            d = (x - w).abs()
            print(f"| {name} | {float(d.max()):.4f} | {float(d.mean()):.5f} | {psnr(x, w):.1f} |")
    sys.stdout.flush()


def vae_windows(args):
    """One-pass decode of the same latent in windows of several sizes, and 'auto', in one run: seconds and peak
    memory per window size (on the CPU, why 'auto' stops at 768 px windows)."""
    device, vae, tvae, z = robust_vae_and_latent(args)
    print(f"device {device}, SD3 VAE (real shape, random weights), {args.image}², overlap {args.overlap} px",
          file=sys.stderr)
    print(f"\n## vae-windows: {device.type}, {args.image}², overlap {args.overlap} px\n")
    print("| tiles asked | windows | largest window (px) | seconds | peak memory (MiB, delta) |\n|---|---|---|---|---|")
    for tile in args.windows + ["auto"]:
        gc.collect()
        with Memory(device) as m:
            if tile == "auto":
                _, choice = tvae.decode(vae, z, "auto", overlap_px=args.overlap)
            else:
                _, choice = tvae.decode(vae, z, "on", tile_px=tile, overlap_px=args.overlap)
        p = choice.plan
        largest = 8 * max(w.length for w in p.rows + p.cols)
        print(f"| {tile if tile == 'auto' else f'{tile} px'} | {p.count} | {largest} | {m.seconds:.1f} | "
              f"{m.peak_bytes / 2**20:.0f} ({m.delta_bytes / 2**20:+.0f}) |")
        sys.stdout.flush()
    print(f"\nauto: {choice.text}")


def colour_fix_memory(args):
    """DPIR Colour Fix (wavelet) as before, on clamped (B, 3, H, W) copies of both IMAGEs, with the preview's
    PNG bytes made from a whole-image float copy, vs the node now (strips of the inputs into the output IMAGE,
    PNG bytes a strip at a time), in one run: seconds, peak memory over the two input IMAGEs, same result."""
    device, _, nodes, _ = setup(args)
    images = sys.modules[f"{PACK_NAME}.nodes.images"]
    web_ui = sys.modules[f"{PACK_NAME}.nodes.web_ui"]
    fix = sys.modules[f"{PACK_NAME}.models.colour_fix"].colour_fix
    node = nodes["DPIRColourFix"]()

    def before(image, lq):
        out = images.to_bhwc(fix(images.to_bchw(image), images.to_bchw(lq), "wavelet"))
        (out[0].clamp(0, 1).numpy() * 255.0).round().astype("uint8")
        (images.to_bhwc(images.to_bchw(lq))[0].clamp(0, 1).numpy() * 255.0).round().astype("uint8")
        return out

    def now(image, lq):
        (out,) = node.fix(image, lq, "wavelet")
        web_ui._rgb8(out[0]), web_ui._rgb8(lq[0])
        return out

    print(f"\n## colour-fix: {device.type}, wavelet, one image and its LQ at the output size\n")
    print("| image | one IMAGE (MiB) | before: s, peak delta (MiB) | now: s, peak delta (MiB) | peak ratio | same |\n"
          "|---|---|---|---|---|---|")
    for side in args.images:
        g = torch.Generator().manual_seed(side)
        image, lq = torch.rand(1, side, side, 3, generator=g), torch.rand(1, side, side, 3, generator=g)
        runs = []
        for run in (before, now):
            with Memory(device) as m:
                out = run(image, lq)
            runs.append((m, out))
        (a, x), (b, y) = runs
        print(f"| {side}² | {image.numel() * 4 / 2**20:.0f} | {a.seconds:.1f}, +{a.delta_bytes / 2**20:.0f} | "
              f"{b.seconds:.1f}, +{b.delta_bytes / 2**20:.0f} | {a.delta_bytes / max(1, b.delta_bytes):.2f}× | "
              f"{torch.equal(x, y)} |")
        sys.stdout.flush()
        del runs, x, y


def attention(args):
    """ComfyUI's CPU attention for the DiT (sub-quadratic, chunks sized by the free RAM) vs the pack's
    ``cpu_attention.sdpa_on_cpu`` (PyTorch's scaled_dot_product_attention) on one joint-attention call of
    SD3-medium tiles (24 heads × 64, the tile's tokens + 333 context tokens), in one run: seconds, peak memory,
    max difference."""
    setup(args)  # ComfyUI on the path, with its command-line defaults
    import comfy.ldm.modules.attention as attn

    cpu_attention = sys.modules[f"{PACK_NAME}.nodes.cpu_attention"]
    sub_quad = getattr(attn.attention_sub_quad, "__wrapped__", attn.attention_sub_quad)

    heads, width = 24, 1536
    print(f"\n## attention: {torch.get_num_threads()} threads, SD3-medium joint attention (24 heads × 64), fp32\n")
    print("| tile (px) | batch | tokens | sub-quadratic: s, peak MiB (delta) | SDPA: s, peak MiB (delta) | "
          "sub-quad / SDPA time | max abs diff |\n|---|---|---|---|---|---|---|")
    for tile in args.tiles:
        n = (tile // 16) ** 2 + 333
        g = torch.Generator().manual_seed(0)
        q, k = (torch.randn(args.batch, n, width, generator=g) * 0.5 for _ in range(2))
        v = torch.randn(args.batch, n, heads, width // heads, generator=g) * 0.5  # as SD3 hands it over
        results = {}
        for name, fn in (("sub", attn.attention_sub_quad),
                         ("sdpa", lambda *a: cpu_attention.sdpa_on_cpu(sub_quad, *a))):
            fn(q[:, :64], k[:, :64], v[:, :64], heads)  # warm-up
            runs = []
            for _ in range(args.reps):
                with Memory(torch.device("cpu")) as m:
                    out = fn(q, k, v, heads)
                runs.append(m)
            results[name] = (out, runs)
        (a, ra), (b, rb) = results["sub"], results["sdpa"]
        ts, tp = statistics.median(m.seconds for m in ra), statistics.median(m.seconds for m in rb)
        cell = lambda rs, t: (f"{t:.2f}, {max(m.peak_bytes for m in rs) / 2**20:.0f} "  # noqa: E731
                              f"({max(m.delta_bytes for m in rs) / 2**20:+.0f})")
        print(f"| {tile} | {args.batch} | {n} | {cell(ra, ts)} | {cell(rb, tp)} | {ts / tp:.2f}× | "
              f"{float((a - b).abs().max()):.2e} |")
        sys.stdout.flush()


def large(args):
    """dpir_restore_large stage by stage at each size in one process (2K/4K/8K by default; 'small' DiT, real-shape
    VAE and towers): seconds and peak memory per stage; the ratio of the largest run's peak to the smallest's."""
    device, _, nodes, models = setup(args)
    loaded = load_pack_models(nodes, models, device)
    print(f"device {device}, model '{args.size}', {args.steps} step(s), tile {args.tile} px", file=sys.stderr)
    run_pack(nodes, loaded, test_image(256), 1, device, tiles=True, tile=256)  # warm-up
    peaks = {}
    for s in args.images:
        t0 = time.perf_counter()
        stages = run_pack(nodes, loaded, test_image(s // 4), args.steps, device, tiles=True, tile=args.tile,
                          upscale=4.0)[0]
        wall = time.perf_counter() - t0
        peaks[s] = max(m.peak_bytes for m in stages.values())
        print(f"\n## large: {device.type}, '{args.size}' model, {s // 4}² ×4 → {s}², {args.tile} px tiles, "
              f"{args.steps} step(s): {wall:.0f} s, peak {peaks[s] / 2**30:.2f} GiB\n")
        stage_table({k: [m] for k, m in stages.items()})
        for k, m in stages.items():
            if getattr(m, "note", None):
                print(f"- {k}: {m.note}")
        sys.stdout.flush()
    lo, hi = min(args.images), max(args.images)
    print(f"\npeak at {hi}² / peak at {lo}²: {peaks[hi] / peaks[lo]:.2f}×")


def prompts(args):
    """Per-tile visual prompts of 'DPIR Tiled Global-Local Prompt' at one size: the node as it runs (global tokens
    shared with DPIR Visual Prompt, tower batches sized by memory), the same with one crop per tower call, and the
    floor: one forward of both towers per distinct tile crop, timed alone."""
    device, _, nodes, models = setup(args)
    clip = nodes["DPIRCLIPVisionLoader"]().load
    clip1, clip2 = clip("clip_vit_b32.safetensors")[0], clip("clip_vision_g.safetensors")[0]
    ts = sys.modules[f"{PACK_NAME}.nodes.tiled_sampling"]
    vp = sys.modules[f"{PACK_NAME}.nodes.visual_prompt"]
    lq = test_image(args.image)
    text = [[torch.zeros(1, 256, 64), {"pooled_output": torch.zeros(1, 64)}]]
    node = nodes["DPIRTiledPrompt"]()
    crop = torch.rand(1, 3, args.tile, args.tile)
    vp.ComfyVisionEncoder(clip1, "1", 1)(crop), vp.ComfyVisionEncoder(clip2, "2", 1)(crop)  # warm-up, load
    with Memory(device) as visual:
        nodes["DPIRVisualPrompt"]().encode(clip1, clip2, lq)
    with Memory(device) as batched:
        tiles = node.plan(clip1, clip2, lq, text, args.tile, args.tile // 8, "per-tile local prompt", True, 1)[0]
    crops = len({t for p in tiles.plans for t in p})
    image = lq.movedim(-1, 1)
    with Memory(device) as one_by_one:
        node._tile_prompts(tiles, image, clip1, clip2, batch=1, source=lq)
    singles = []
    for _ in range(3):
        with Memory(device) as m:
            vp.ComfyVisionEncoder(clip1, "1", 1)(crop), vp.ComfyVisionEncoder(clip2, "2", 1)(crop)
        singles.append(m.seconds)
    floor = statistics.median(singles) * crops
    print(f"\n## prompts: {device.type}, '{args.size}' towers, {args.image}², {args.tile} px tiles with seam shift "
          f"({len(tiles.plans)} plans, {tiles.count} tiles each, {crops} distinct crops)\n")
    print("| what | seconds |\n|---|---|")
    print(f"| DPIR Visual Prompt (whole image; computes the global tokens) | {visual.seconds:.1f} |")
    print(f"| per-tile prompts, as the node runs (global tokens reused, batches by memory) | {batched.seconds:.1f} |")
    print(f"| per-tile prompts, one crop per tower call (global tokens reused) | {one_by_one.seconds:.1f} |")
    print(f"| floor: {crops} × one forward of both towers on one crop, timed alone "
          f"({statistics.median(singles):.2f} s each) | {floor:.1f} |")
    print(f"\none by one / batched: {one_by_one.seconds / batched.seconds:.2f}×; node / floor: "
          f"{batched.seconds / floor:.2f}×")


def reference_runner(spec, models, device, image, steps, dtype=None, cfg=1.0):
    """The independent diffusers pipeline on the same files, same precision (bf16 on a GPU unless ``dtype``).
    Each call (``run(cfg)``, default ``cfg``) returns its seconds; ``run.output`` holds the last restored image
    (1, 3, H, W). The models are built on the device (their random init there is quick), then loaded."""
    import reference
    from diffusers import AutoencoderKL, SD3Transformer2DModel
    from transformers import CLIPVisionModelWithProjection

    from safetensors.torch import load_file

    dtype = dtype or (torch.bfloat16 if device.type == "cuda" else torch.float32)
    sd = {}
    for shard in sorted((models / "dpir" / "transformer").glob("*.safetensors")):
        sd.update(load_file(str(shard)))
    control = {k: v.float() for k, v in sd.items() if k.startswith("control_conv.")}
    with torch.device(device):
        transformer = SD3Transformer2DModel.from_config(tm.transformer_config(spec))
    transformer.load_state_dict({k: v for k, v in sd.items() if not k.startswith("control_conv.")})
    transformer = transformer.to(device, dtype).eval()
    vae = AutoencoderKL.from_pretrained(str(models / "dpir" / "robust_vae")).to(device, dtype).eval()
    clips = []
    for which, name in ((1, "clip_vit_b32"), (2, "clip_vision_g")):
        with torch.device(device):
            clip = CLIPVisionModelWithProjection(tm.clip_vision_config(spec, which))
        weights = load_file(str(models / "clip_vision" / f"{name}.safetensors"))
        clip.load_state_dict({k: v for k, v in weights.items() if k in clip.state_dict()})
        clips.append(clip.to(device, dtype).eval())
    conv = reference.control_conv_from_weights(control).to(device, dtype)
    t5 = load_file(str(models / "dpir" / "prompt.safetensors"))["t5_embedding"].to(device, dtype)
    img = image.movedim(-1, 1).to(device, dtype)

    def run(guidance=cfg):
        with Memory(device) as m:
            with torch.autocast(device.type, enabled=False):
                run.output = reference.restore(img, transformer, conv, vae, clips[0], clips[1], t5, steps=steps,
                                               seed=0, guidance_scale=guidance)
        return m.seconds

    run()
    return run


def tiles(args):
    device, spec, nodes, models = setup(args)
    import comfy.sample

    ts = sys.modules[f"{PACK_NAME}.nodes.tiled_sampling"]
    model, branch = nodes["DPIRModelLoader"]().load(transformer_name(models), weight_dtype(device, models))
    tile = args.tile
    overlap = tile // 8

    def one_step(h, w, tile=tile, overlap=overlap):
        """One tiled sampling step over an h×w latent (tile prompts: the released one-prompt mode)."""
        z = torch.randn(1, 16, h, w, generator=torch.Generator().manual_seed(0))
        positive = [[torch.randn(1, 333, spec.joint_attention_dim), {"pooled_output": torch.randn(1, spec.pooled_projection_dim)}]]
        tset = ts.TileSet(h, w, tile, overlap, [0], 1)
        patched = nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
        _, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(patched, positive, 1, 1.0, 3.0, tiles=tset,
                                                                        tile_batch=args.tile_batch)
        latent = torch.zeros_like(z)
        with Memory(device) as m:
            guider.sample(comfy.sample.prepare_noise(latent, 0), latent, sampler, sigmas, seed=0)
        return m, tset.count, z

    print(f"device {device}, model '{args.size}', latent tile {tile} (= {tile * 8} px), overlap {overlap}, "
          f"tile batch {args.tile_batch}, {args.reps} repetitions", file=sys.stderr)
    one_step(tile, tile)  # warm-up
    print(f"\n## tiles: {device.type}, '{args.size}' model, tile {tile * 8} px, overlap {overlap * 8} px\n")
    print("| grid | tiles | seconds per step | seconds per tile-step | vs 2×2 |\n|---|---|---|---|---|")
    base = None
    for k in (2, 4, 8):
        side = tile + (k - 1) * (tile - overlap)
        runs = [one_step(side, side) for _ in range(args.reps)]
        n = runs[0][1]
        per_tile = [m.seconds / n for m, _, _ in runs]
        base = base or statistics.median(per_tile)
        print(f"| {k}×{k} | {n} | {fmt([m.seconds for m, _, _ in runs])} | {fmt(per_tile)} | "
              f"{statistics.median(per_tile) / base:.3f}× |")
    clip = nodes["DPIRCLIPVisionLoader"]().load
    clip1, clip2 = clip("clip_vit_b32.safetensors")[0], clip("clip_vision_g.safetensors")[0]
    img = torch.rand(1, 3, 1024, 1024, generator=torch.Generator().manual_seed(1))
    tset = ts.TileSet(128, 128, tile, overlap, [0, tile // 4, tile // 2], 1)
    prompt_ratio = []
    for _ in range(args.reps):
        times = {}
        for batch in (1, 16):
            with Memory(device) as m:
                nodes["DPIRTiledPrompt"]._tile_prompts(tset, img, clip1, clip2, batch=batch)
            times[batch] = m.seconds
        prompt_ratio.append(times[1] / times[16])
    print(f"\noptimisation: per-tile visual prompts one crop per encoder call / 16 crops per call "
          f"({len({t for p in tset.plans for t in p})} crops): {fmt(prompt_ratio, '×')}")
    print(f"\nmemory of one tiled step, tile {args.memory_tile * 8} px, overlap {args.memory_tile} px:")
    print("\n| output | latent | tiles | peak memory (MiB) | step delta (MiB) | image-sized buffers (MiB) |\n"
          "|---|---|---|---|---|---|")
    for px in args.outputs:
        lat = px // 8
        m, n, z = one_step(lat, lat, args.memory_tile, args.memory_tile // 8)
        # buffers that scale with the image: latent, noise, x, the blended outputs, LQ latent and its features
        buffers = z.numel() * 4 * 6 + (lat // 2) ** 2 * spec.hidden * 4
        print(f"| {px}² | {lat}² | {n} | {m.peak_bytes / 2**20:9.0f} | {m.delta_bytes / 2**20:+9.0f} | "
              f"{buffers / 2**20:9.0f} |")


def photo_latent(side: int, seed: int = 0) -> torch.Tensor:
    """A synthetic LQ latent (1, 16, side, side) whose statistics change across the image as a photo's do: a
    smooth field everywhere, fine detail below the top third (a flat sky over detailed ground)."""
    g = torch.Generator().manual_seed(seed)
    coarse = max(1, side // 16)
    smooth = torch.nn.functional.interpolate(torch.randn(1, 16, coarse, coarse, generator=g), size=(side, side),
                                             mode="bicubic")
    detail = torch.randn(1, 16, side, side, generator=g)
    detail[:, :, :side // 3] *= 0.1
    return smooth + detail


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """||a - b|| / ||b||."""
    return float((a.float() - b.float()).norm() / b.float().norm())


def tile_plans(ts, lat: int, tile: int):
    """The plans of 'DPIR Tiled Global-Local Prompt' with seam shift (overlap tile/8) for an lat² latent."""
    quarter = tile // 4 // 2 * 2
    return ts.TileSet(lat, lat, tile, tile // 8, [k * quarter for k in range(ts.SHIFT_CYCLE)], 1)


def own_vs_crop(lq, tset, device):
    """Per-tile features vs crops of the whole image's features over every distinct tile of the plans, each
    standardised over its tokens and channels as ``inject`` does: (overall relative difference, worst tile)."""
    diff = norm = 0.0
    worst = 0.0
    for t in dict.fromkeys(t for p in tset.plans for t in p):
        own = lq.tile_features([t], device)[0].float()
        crop = lq.features[:, :, t.top // 2:(t.bottom + 1) // 2, t.left // 2:(t.right + 1) // 2].float()
        own, crop = ((x - x.mean()) / x.std() for x in (own, crop))
        d, n = float((own - crop).norm() ** 2), float(crop.norm() ** 2)
        diff, norm, worst = diff + d, norm + n, max(worst, (d / n) ** 0.5)
    return (diff / norm) ** 0.5, worst


def lq_tiles(args):
    """Own-crop LQ features per tile (default) vs the whole image's features cropped: differences and cost."""
    device, spec, nodes, models = setup(args)
    import comfy.sample

    ts = sys.modules[f"{PACK_NAME}.nodes.tiled_sampling"]
    lqi = sys.modules[f"{PACK_NAME}.nodes.lq_injection"]
    loaders = sys.modules[f"{PACK_NAME}.nodes.loaders"]
    LQCondition = sys.modules[f"{PACK_NAME}.models.lq_condition"].LQCondition

    # 1. a multi-tile image through the '--size' model: features and sampled images of both variants
    model, branch, vae, _, _ = load_pack_models(nodes, models, device)
    lat, tile = args.image // 8, args.tile // 8
    z = photo_latent(lat)
    tset = tile_plans(ts, lat, tile)
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 333, spec.joint_attention_dim, generator=g),
                 {"pooled_output": torch.randn(1, spec.pooled_projection_dim, generator=g)}]]
    patched = nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
    noise = comfy.sample.prepare_noise(z, 0)
    out, secs = {}, {}
    for variant in ts.LQ_FEATURES:
        m, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(patched, positive, args.steps, 1.0, 3.0)
        ts.attach(m, tset, args.tile_batch, variant)
        with Memory(device) as mem:
            out[variant] = guider.sample(noise, torch.zeros_like(z), sampler, sigmas, seed=0)
        secs[variant] = mem.seconds
    lq = lqi.injection_of(patched.model_options)
    feat, worst = own_vs_crop(lq, tset, device)
    lq._tiles.clear()
    images = {k: vae.decode(v) for k, v in out.items()}
    print(f"\n## lq-tiles: {device.type}, random weights, '{args.size}' model, {args.image}² image, "
          f"{args.tile} px tiles (overlap {args.tile // 8} px, seam shift: {len({t for p in tset.plans for t in p})} "
          f"distinct tiles, {tset.count} per plan), {args.steps} steps\n")
    print("| own-crop features (default) vs whole-image features cropped | relative difference |\n|---|---|")
    print(f"| features as injected (each tile standardised), all tiles | {feat:.3f} (worst tile {worst:.3f}) |")
    print(f"| sampled latent | {rel(out['tile'], out['image']):.3f} |")
    print(f"| decoded image | {rel(images['tile'], images['image']):.3f} |")
    print(f"| sampling time, own-crop / whole-image variant | {secs['tile'] / secs['image']:.3f}× |")

    # 2. real width: SD3-medium control_conv on 2K/4K LQ latents, 1024 px tiles as dpir_restore_large
    real = spec_for("sd3-medium")
    rb = loaders.LQBranch(LQCondition(16, (real.control_c1, real.control_c2), real.hidden).eval().to(device), "random")
    print(f"\n## lq-tiles at real width: {device.type}, SD3-medium control_conv (random weights, fp32), 1024 px "
          "tiles, 128 px overlap, seam shift (4 plans), tile batch 4\n")
    print("| LQ image | tiles per plan / distinct | whole image: s, peak MiB (delta) | per-tile features: s, peak MiB "
          "(delta) | per-tile / whole | cache MiB fp32 (bf16) | per step MiB fp32 (bf16) | features rel. diff (worst "
          "tile) |\n|---|---|---|---|---|---|---|---|")
    per_tile_s = {}
    for px in args.real:
        lat = px // 8
        z = photo_latent(lat, seed=2)
        with Memory(device) as whole:
            grid = lqi.branch_features(rb, z, device, torch.float32)
        lq = lqi.LQInjection(grid, 1.0, 1.0, 0.0, rb, z, torch.float32)
        tset = tile_plans(ts, lat, 128)
        distinct = list(dict.fromkeys(t for p in tset.plans for t in p))
        step = []  # bytes handed to the model per step (one plan), tile batch by tile batch
        with Memory(device) as own:
            for plan in tset.plans:
                step.append(0)
                for i in range(0, len(plan), 4):  # as sampling asks for them: one tile batch at a time
                    step[-1] += sum(f.numel() * f.element_size() for f in lq.tile_features(plan[i:i + 4], device))
        cache = sum(v.numel() * v.element_size() for v in lq._tiles.values()) / 2**20
        moved = max(step) / 2**20
        feat, worst = own_vs_crop(lq, tset, device)  # from the cache: nothing recomputed
        per_tile_s[px] = (own.seconds, tset.count)
        print(f"| {px}² | {tset.count} / {len(distinct)} | {whole.seconds:.2f}, {whole.peak_bytes / 2**20:.0f} "
              f"({whole.delta_bytes / 2**20:+.0f}) | {own.seconds:.2f}, {own.peak_bytes / 2**20:.0f} "
              f"({own.delta_bytes / 2**20:+.0f}) | {own.seconds / whole.seconds:.2f}× | {cache:.0f} ({cache / 2:.0f}) | "
              f"{moved:.0f} ({moved / 2:.0f}) | {feat:.3f} ({worst:.3f}) |")
        del grid, lq
    if args.dit_step:
        dit_step(nodes, models, real, device, per_tile_s)


def dit_step(nodes, models, real, device, per_tile_s):
    """One real-size tile-step (1024² px, SD3-medium, LQ condition on) against the per-tile features."""
    import comfy.sample

    print("writing the random SD3-medium transformer (about 4 GB) ...", file=sys.stderr)
    path = tm.write_transformer_file(models / "dpir" / "sd3_medium.safetensors", real, dtype=torch.bfloat16)
    model, branch = nodes["DPIRModelLoader"]().load(path.name, "default")
    path.unlink()  # 4 GB of /tmp: the weights are in memory now
    z = photo_latent(128, seed=3)
    g = torch.Generator().manual_seed(1)
    positive = [[torch.randn(1, 333, real.joint_attention_dim, generator=g),
                 {"pooled_output": torch.randn(1, real.pooled_projection_dim, generator=g)}]]
    patched = nodes["DPIRApplyLQCondition"]().apply(model, branch, {"samples": z}, 1.0, 0.0, 1.0)[0]
    _, guider, sampler, sigmas = nodes["DPIRSamplerPatch"]().patch(patched, positive, 1, 1.0, 3.0)
    noise = comfy.sample.prepare_noise(z, 0)
    with Memory(device) as step:  # no warm-up: a CPU step takes minutes, loading the model is negligible beside it
        guider.sample(noise, torch.zeros_like(z), sampler, sigmas, seed=0)
    print(f"\none real-size tile-step (SD3-medium, 1024² px tile, batch 1, weights {model.model.get_dtype()}): "
          f"{step.seconds:.1f} s, peak {step.peak_bytes / 2**20:.0f} MiB ({step.delta_bytes / 2**20:+.0f})\n")
    print("| LQ image | tiles per plan | per-tile features (all plans) / one sampling step (tiles × tile-step) | "
          "/ a 28-step run |\n|---|---|---|---|")
    for px, (secs, count) in per_tile_s.items():
        print(f"| {px}² | {count} | {secs / (count * step.seconds):.4f} | {secs / (28 * count * step.seconds):.5f} |")
class NodeMonitor:
    """Per-node time and peak RSS of a ComfyUI server process: its websocket's 'executing' events (the node
    that runs now) and the process RSS sampled every 10 ms."""

    def __init__(self, server):
        self.server, self.proc = server, psutil.Process(server.proc.pid)
        self.events, self.samples, self._stop = [], [], threading.Event()

    def __enter__(self):
        ready = threading.Event()
        self._threads = [threading.Thread(target=self._sample, daemon=True),
                         threading.Thread(target=self._listen, args=(ready,), daemon=True)]
        for t in self._threads:
            t.start()
        if not ready.wait(30):
            raise RuntimeError("no websocket connection to the server")
        return self

    def _sample(self):
        while not self._stop.is_set():
            try:
                self.samples.append((time.monotonic(), self.proc.memory_info().rss))
            except psutil.Error:
                return
            time.sleep(0.01)

    def _listen(self, ready):
        import asyncio

        import aiohttp  # a ComfyUI requirement

        async def run():
            url = f"ws://{self.server.host}:{self.server.port}/ws?clientId={self.server.client_id}"
            async with aiohttp.ClientSession() as session, session.ws_connect(url, max_msg_size=0) as ws:
                ready.set()
                while not self._stop.is_set():
                    try:
                        msg = await ws.receive(timeout=0.2)
                    except asyncio.TimeoutError:
                        continue
                    if msg.type == aiohttp.WSMsgType.TEXT:
                        data = json.loads(msg.data)
                        if data.get("type") == "executing":
                            self.events.append((time.monotonic(), data["data"].get("node")))
                    elif msg.type in (aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                        return

        asyncio.run(run())

    def __exit__(self, *exc):
        time.sleep(0.3)  # the last events and samples
        self._stop.set()
        for t in self._threads:
            t.join(5)
        return False

    def stages(self, t0: float) -> list[tuple[str, float, int, int]]:
        """(node id, seconds, peak RSS, RSS at its end) for each node executed after ``t0``, in order."""
        events = [(t, n) for t, n in self.events if t >= t0]
        out = []
        for (t, node), (t_next, _) in zip(events, events[1:] + [(float("inf"), None)]):
            if node is None:
                continue
            before = [r for ts, r in self.samples if ts < t][-1:]  # a node shorter than one sample: the RSS then
            inside = [r for ts, r in self.samples if t <= ts <= t_next] or before or [0]
            end = t_next if t_next != float("inf") else self.samples[-1][0]
            out.append((node, end - t, max(inside), inside[-1]))
        return out


def realsize(args):
    """The shipped workflows through a real ComfyUI server on real-size random weights: per node, seconds and
    the server's peak RSS."""
    from host.comfy_harness import ExecutionFailed, load_workflow_api, start_server
    from host.dpir_env import api_of, write_photo

    comfy = find_comfyui()
    if comfy.path is None:
        raise SystemExit(f"bench needs a ComfyUI host: {comfy.reason}")
    models = args.models or Path(tempfile.mkdtemp(prefix="dpir-real-")) / "models"
    if not (models / "dpir" / "transformer").is_dir():
        rw.write_model_set(models, args.size, log=lambda m: print(m, file=sys.stderr))
    runs = [("dpir_restore", s) for s in args.images] + [("dpir_restore_large", s) for s in args.large]
    inputs = {}
    for name, s in runs:
        side = s // 4 if name == "dpir_restore_large" else min(s, 256)
        inputs[f"photo{side}.png"] = write_photo(models.parent / f"photo{side}.png", side, side)
    server = start_server(comfy.path, extra_model_paths=rw.extra_model_paths(models), inputs=inputs,
                          extra_args=args.server_args)
    results = []
    try:
        info, wf = server.object_info(), load_workflow_api()
        for name, s in runs:
            large = name == "dpir_restore_large"
            side = s // 4 if large else min(s, 256)
            over = {"LoadImage": {"image": f"photo{side}.png"},
                    "DPIRModelLoader": {"transformer": transformer_name(models), "weight_dtype": args.weight_dtype},
                    "DPIRSamplerPatch": {"steps": args.steps, "tile_batch": args.tile_batch},
                    "DPIRRobustVAEEncode": ({"resize": "upscale factor", "upscale_factor": 4.0} if large else
                                            {"resize": "long side", "long_side": s}),
                    "DPIRTiledPrompt": {"tile_size": args.tile, "tile_overlap": args.tile // 8}}
            api = api_of(name, server, info, wf, **over)
            ui = json.loads((ROOT / "workflows" / f"{name}.json").read_text())["nodes"]
            ui = {str(n["id"]): n.get("title") for n in ui}
            titles = {k: v["class_type"] + (f" ({ui[k]})" if ui.get(k) else "") for k, v in api.items()}
            print(f"running {name} at {s}² ...", file=sys.stderr)
            t0 = time.monotonic()
            with NodeMonitor(server) as mon:
                try:
                    entry = server.run(api, timeout=args.timeout)
                    error = None
                    images = [(im["filename"]) for im in server.output_images(entry) if im["type"] == "output"]
                except ExecutionFailed as e:
                    error, images = str(e).splitlines()[0][:300], []
                except TimeoutError as e:
                    server.interrupt()
                    error, images = str(e)[:200], []
            wall = time.monotonic() - t0
            stages = [{"node": titles.get(n, n), "id": n, "seconds": sec, "peak_rss": peak, "end_rss": end}
                      for n, sec, peak, end in mon.stages(t0)]
            size = None
            if images:
                from host.comfy_harness import png_size

                size = png_size(server.view(images[-1]))
            results.append({"workflow": name, "size": s, "wall": wall, "error": error, "output": size,
                            "stages": stages, "peak_rss": max((st["peak_rss"] for st in stages), default=0)})
            print_realsize(results[-1], args)
    finally:
        server.stop()
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))


def print_realsize(r, args):
    what = f"{r['workflow']} → {r['size']}²" + (f" (tiles {args.tile} px)" if r["workflow"].endswith("large") else "")
    print(f"\n## realsize: {what}, {args.steps} step(s), DiT weights {args.weight_dtype}, CPU: {r['wall']:.0f} s, "
          f"peak RSS {r['peak_rss'] / 2**30:.2f} GiB, output {r['output']}" + (f", FAILED: {r['error']}" if r["error"]
                                                                                else "") + "\n")
    print("| node | seconds | peak RSS (GiB) | RSS after (GiB) |\n|---|---|---|---|")
    for st in r["stages"]:
        print(f"| {st['node']} | {st['seconds']:.1f} | {st['peak_rss'] / 2**30:.2f} | {st['end_rss'] / 2**30:.2f} |")
    sys.stdout.flush()


# ComfyUI 0.3.64's own memory estimates (bytes), for a CUDA card with PyTorch flash attention:
#   sampling: comfy/model_base.py BaseModel.memory_required = latent px x batch x dtype bytes x 0.01 x 1.2 (SD3) MiB
#   SD3 VAE: comfy/sd.py VAE memory_used_encode = 1767 x image px x dtype bytes,
#            memory_used_decode = 2178 x latent px x 64 x dtype bytes
#   kept free: comfy/model_management.py minimum_inference_memory = 0.8 GiB + 0.4 GiB extra reserved (Linux)
def sd3_sampling_bytes(latent_px: int, batch: int = 1, dtype_bytes: int = 2) -> float:
    return latent_px * batch * dtype_bytes * 0.01 * 1.2 * 2**20


def vae_encode_bytes(px: int, dtype_bytes: int = 2) -> float:
    return 1767 * px * dtype_bytes


def vae_decode_bytes(latent_px: int, dtype_bytes: int = 2) -> float:
    return 2178 * latent_px * 64 * dtype_bytes


COMFY_RESERVE = 1.2 * 2**30
CUDA_CONTEXT = 0.5 * 2**30  # driver, CUDA context and cuDNN/cuBLAS workspaces: not available to ComfyUI


def card_settings(card_gib: int, out: int, spec: tm.TinySpec, tile: int = 1024) -> dict:
    """Settings for one card and a square output, from ComfyUI's estimates: every stage (models are offloaded
    between stages when VRAM is short) must fit its weights + its estimate + ComfyUI's reserve."""
    usable = card_gib * 2**30 - CUDA_CONTEXT - COMFY_RESERVE
    dit = rw.param_count(rw.transformer_shapes(spec))
    bigg = rw.param_count(rw.clip_vision_shapes(spec, 2))
    t5 = rw.param_count(rw.t5_shapes(spec))
    vae = rw.param_count(rw.vae_shapes(spec)) * 2
    tiled = out > tile
    tile_px = (tile // 8) ** 2 if tiled else (out // 8) ** 2
    lq_features = (out // 16) ** 2 * spec.hidden * 2  # the once-per-image LQ condition, compute dtype
    res = {}
    for name, wbytes in (("bf16", 2), ("fp8_e4m3fn", 1)):
        batches = [b for b in ((8, 4, 2, 1) if tiled else (1,))
                   if dit * wbytes + lq_features + sd3_sampling_bytes(tile_px, b) <= usable]
        if batches:
            res["weight_dtype"], res["tile_batch"] = name, batches[0]
            res["sampling_gib"] = (dit * wbytes + lq_features + sd3_sampling_bytes(tile_px, batches[0])) / 2**30
            break
    else:
        res["weight_dtype"], res["tile_batch"], res["sampling_gib"] = "does not fit", 0, float("nan")
    res["t5"] = next((n for n, b in (("T5-XXL fp16", 2), ("T5-XXL fp8", 1)) if t5 * b <= usable), "T5 embedding file")
    res["clip_fits"] = bigg * 2 <= usable
    encode = vae_encode_bytes(out * out)
    res["encode"] = "whole" if vae + encode <= usable else "tiled (1024 px)"
    decode = [t for t in (None, 1024, 512, 256) if vae + vae_decode_bytes(((t or out) // 8) ** 2) <= usable]
    res["decode"] = "whole" if decode and decode[0] is None else (f"tiled {decode[0]} px" if decode else "no")
    res["decode_gib"] = vae_decode_bytes(((decode[0] or out) // 8) ** 2) / 2**30 if decode else float("nan")
    res["tile"] = tile if tiled else None
    return res


def cards(args):
    """The 'Which card runs what' table: ComfyUI's estimates for 8-24 GB cards and 1K-8K outputs."""
    spec = spec_for("sd3-medium")
    print("| card | output | DiT weight_dtype | text prompt | tiles (tile batch) | VAE encode | VAE decode | "
          "sampling stage (GiB) |\n|---|---|---|---|---|---|---|---|")
    for card in args.cards:
        for out in args.outputs:
            r = card_settings(card, out, spec)
            tiles = "none" if r["tile"] is None else f"{r['tile']} px ({r['tile_batch']})"
            print(f"| {card} GB | {out // 1024}K ({out}²) | {r['weight_dtype']} | {r['t5']} | {tiles} | {r['encode']} | "
                  f"{r['decode']} | {r['sampling_gib']:.1f} |")


LOADERS = ("DPIR Model Loader (folder)", "DPIR Model Loader (single file)", "UNETLoader (single file)")


def python_tensor_bytes() -> int:
    """Bytes of the distinct tensor storages Python can still reach (the model's weights included)."""
    seen, total = set(), 0
    for obj in gc.get_objects():
        if isinstance(obj, torch.Tensor) and not obj.is_meta:
            st = obj.untyped_storage()
            if st.data_ptr() not in seen:
                seen.add(st.data_ptr())
                total += st.nbytes()
    return total


def load_one(args):
    """One loader in this (fresh) process: RSS before, peak, after gc, after returning freed heap to the OS."""
    import ctypes

    device, _, nodes, models = setup(args)
    name = LOADERS[args.one]
    single = models / "dpir" / "dpir_transformer.safetensors"
    proc = psutil.Process()
    gc.collect()
    with Memory(device) as m:
        if name.startswith("UNETLoader"):
            from nodes import UNETLoader

            out = UNETLoader().load_unet(single.name, "default")
        else:
            out = nodes["DPIRModelLoader"]().load(transformer_name(models) if "folder" in name else single.name,
                                                  args.weight_dtype)
    gc.collect()
    after = proc.memory_info().rss
    held = python_tensor_bytes()
    trimmed = after
    if hasattr(ctypes.CDLL(None), "malloc_trim"):  # glibc: hand freed heap pages back to the OS
        ctypes.CDLL(None).malloc_trim(0)
        trimmed = proc.memory_info().rss
    print(json.dumps({"loader": name, "seconds": m.seconds, "peak": m.peak_bytes - m.base, "after_gc": after - m.base,
                      "after_trim": trimmed - m.base, "tensors": held, "model": out[0].model_size()}))


def loadmem(args):
    """Each transformer loader in a fresh process on the same weights: time, peak and resident memory."""
    import subprocess

    device, spec, _, models = setup(args)
    single = models / "dpir" / "dpir_transformer.safetensors"
    if not single.is_file():  # the same tensors as the folder, as one diffusers-named file
        rw.write_safetensors(single, rw.transformer_shapes(spec), torch.bfloat16, spec, "transformer")
    unet = models / "diffusion_models"
    if not unet.exists():
        unet.mkdir()
        (unet / single.name).symlink_to(single)
    print(f"\n## transformer loaders: {device.type}, '{args.size}' model, weight dtype '{args.weight_dtype}' "
          "(GiB over the process before loading)\n\n| loader | seconds | peak | resident after gc | after malloc_trim |"
          " tensors reachable | model |\n|---|---|---|---|---|---|---|")
    for i in range(len(LOADERS)):
        cmd = [sys.executable, __file__, "loadmem", "--one", str(i), "--size", args.size, "--models", str(models),
               "--weight-dtype", args.weight_dtype] + (["--cpu"] if args.cpu else [])
        out = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if out.returncode:
            print(f"| {LOADERS[i]} | failed: {out.stderr.strip().splitlines()[-1:]} |")
            continue
        r = json.loads(out.stdout.strip().splitlines()[-1])
        g = {k: r[k] / 2**30 for k in ("peak", "after_gc", "after_trim", "tensors", "model")}
        print(f"| {r['loader']} | {r['seconds']:.1f} | +{g['peak']:.2f} | +{g['after_gc']:.2f} | +{g['after_trim']:.2f} "
              f"| {g['tensors']:.2f} | {g['model']:.2f} |")


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("pipeline")
    p.add_argument("--size", default="small", choices=["tiny", "small", "sd3-medium"])
    p.add_argument("--image", type=int, default=256)
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--reps", type=int, default=3)
    p.add_argument("--no-reference", action="store_true")
    p.add_argument("--cpu", action="store_true")
    o = sub.add_parser("overhead")
    o.add_argument("--size", default="small", choices=["tiny", "small", "sd3-medium"])
    o.add_argument("--images", type=int, nargs="+", default=[256, 512, 1024])
    o.add_argument("--steps", type=int, default=4)
    o.add_argument("--reps", type=int, default=5)
    o.add_argument("--compile", action="store_true", help="also time DPIR through TorchCompileModel (inductor)")
    o.add_argument("--cpu", action="store_true")
    m = sub.add_parser("memory")
    m.add_argument("--size", default="small", choices=["tiny", "small", "sd3-medium"])
    m.add_argument("--images", type=int, nargs="+", default=[1024, 2048, 4096], help="square image sizes in px")
    m.add_argument("--steps", type=int, default=1)
    m.add_argument("--keep-loaded", action="store_true", help="on a GPU: do not offload models between stages")
    m.add_argument("--cpu", action="store_true")
    t = sub.add_parser("tiles")
    t.add_argument("--size", default="tiny", choices=["tiny", "small", "sd3-medium"])
    t.add_argument("--tile", type=int, default=32, help="latent tile size (128 = 1024 px)")
    t.add_argument("--tile-batch", type=int, default=4)
    t.add_argument("--memory-tile", type=int, default=128, help="latent tile size for the 2K-8K memory table")
    t.add_argument("--outputs", type=int, nargs="+", default=[2048, 4096, 8192], help="output sizes in px")
    t.add_argument("--reps", type=int, default=3)
    t.add_argument("--cpu", action="store_true")
    q = sub.add_parser("lq-tiles")
    q.add_argument("--size", default="small", choices=["tiny", "small"])
    q.add_argument("--image", type=int, default=512, help="square image size in px for the two variants' images")
    q.add_argument("--tile", type=int, default=256, help="tile size in px for that image")
    q.add_argument("--steps", type=int, default=8)
    q.add_argument("--tile-batch", type=int, default=4)
    q.add_argument("--real", type=int, nargs="*", default=[2048, 4096], help="LQ image sizes in px at real width")
    q.add_argument("--dit-step", action="store_true", help="also one real-size tile-step (4 GB file, 9+ GB RAM)")
    q.add_argument("--cpu", action="store_true")
    k = sub.add_parser("caches")
    k.add_argument("--size", default="small", choices=["tiny", "small", "sd3-medium"])
    k.add_argument("--image", type=int, default=512, help="square image size in px")
    k.add_argument("--steps", type=int, default=28)
    k.add_argument("--reps", type=int, default=3)
    k.add_argument("--threshold", type=float, default=0.2, help="reuse_threshold of both caches (core default 0.2)")
    k.add_argument("--cpu", action="store_true")
    for p in (p, o, m, t, q, k):  # noqa: B020
        p.add_argument("--models", type=Path, help="folder of model files: written there once, reused after")
    r = sub.add_parser("realsize")
    r.add_argument("--size", default="sd3-medium", choices=["tiny", "small", "sd3-medium"])
    r.add_argument("--images", type=int, nargs="*", default=[512, 1024], help="dpir_restore output sizes")
    r.add_argument("--large", type=int, nargs="*", default=[2048], help="dpir_restore_large output sizes")
    r.add_argument("--tile", type=int, default=1024, help="tile size (px) of the large workflow")
    r.add_argument("--tile-batch", type=int, default=4)
    r.add_argument("--steps", type=int, default=1)
    r.add_argument("--weight-dtype", default="bf16")
    r.add_argument("--timeout", type=float, default=3600)
    r.add_argument("--server-args", nargs="*", default=[])
    r.add_argument("--json", type=Path)
    r.add_argument("--models", type=Path)
    v = sub.add_parser("vae")
    v.add_argument("--size", default="tiny", choices=["tiny", "small", "sd3-medium"])
    v.add_argument("--image", type=int, default=2048, help="square output size in px")
    v.add_argument("--tile", type=int, default=1024, help="tile size in px (both decoders)")
    v.add_argument("--overlap", type=int, default=64, help="overlap in px (both decoders)")
    v.add_argument("--whole", action="store_true", help="also the untiled decode, for the seam figures")
    v.add_argument("--cpu", action="store_true")
    vw = sub.add_parser("vae-windows")
    vw.add_argument("--size", default="tiny", choices=["tiny", "small", "sd3-medium"])
    vw.add_argument("--image", type=int, default=2048, help="square output size in px")
    vw.add_argument("--windows", type=int, nargs="+", default=[1024, 1408, 2048], help="tile sizes in px ('on')")
    vw.add_argument("--overlap", type=int, default=64)
    vw.add_argument("--cpu", action="store_true")
    at = sub.add_parser("attention")
    at.add_argument("--size", default="tiny", choices=["tiny"], help=argparse.SUPPRESS)
    at.add_argument("--tiles", type=int, nargs="+", default=[512, 1024], help="tile sizes in px")
    at.add_argument("--batch", type=int, default=4, help="tiles per call (the tiled sampler's tile batch)")
    at.add_argument("--reps", type=int, default=3)
    at.add_argument("--cpu", action="store_true")
    cf = sub.add_parser("colour-fix")
    cf.add_argument("--size", default="tiny", choices=["tiny"], help=argparse.SUPPRESS)
    cf.add_argument("--images", type=int, nargs="+", default=[2048, 4096, 8192], help="square output sizes in px")
    cf.add_argument("--cpu", action="store_true")
    lg = sub.add_parser("large")
    lg.add_argument("--size", default="small", choices=["tiny", "small", "sd3-medium"])
    lg.add_argument("--images", type=int, nargs="+", default=[2048, 4096, 8192], help="output sizes in px (×4)")
    lg.add_argument("--tile", type=int, default=1024, help="sampling tile size in px")
    lg.add_argument("--steps", type=int, default=1)
    lg.add_argument("--cpu", action="store_true")
    pr = sub.add_parser("prompts")
    pr.add_argument("--size", default="sd3-medium", choices=["tiny", "small", "sd3-medium"])
    pr.add_argument("--image", type=int, default=2048)
    pr.add_argument("--tile", type=int, default=768, help="tile size in px (the real-size table's)")
    pr.add_argument("--cpu", action="store_true")
    for p_ in (v, vw, at, cf, lg, pr):
        p_.add_argument("--models", type=Path, help="folder of model files: written there once, reused after")
    c = sub.add_parser("cards")
    c.add_argument("--cards", type=int, nargs="+", default=[8, 12, 16, 24], help="VRAM in GB")
    c.add_argument("--outputs", type=int, nargs="+", default=[1024, 2048, 4096, 8192])
    lm = sub.add_parser("loadmem")
    lm.add_argument("--size", default="sd3-medium", choices=["tiny", "small", "sd3-medium"])
    lm.add_argument("--weight-dtype", default="default")
    lm.add_argument("--one", type=int, help=argparse.SUPPRESS)
    lm.add_argument("--cpu", action="store_true")
    lm.add_argument("--models", type=Path)
    args = ap.parse_args()
    if args.cmd == "loadmem" and args.one is not None:
        return load_one(args)
    if args.cmd == "realsize":  # drives a server; nothing runs in this process
        return realsize(args)
    if args.cmd == "cards":  # arithmetic only
        return cards(args)
    torch.manual_seed(0)
    with torch.inference_mode():  # as ComfyUI runs a prompt; without it autograd keeps every activation
        {"pipeline": pipeline, "overhead": overhead, "memory": memory, "tiles": tiles, "lq-tiles": lq_tiles,
         "loadmem": loadmem, "caches": caches, "vae": vae_tiles, "vae-windows": vae_windows, "attention": attention,
         "colour-fix": colour_fix_memory,
         "large": large, "prompts": prompts}[args.cmd](args)


if __name__ == "__main__":
    main()
