"""Helpers of the training tests: tiny models, tiny photo folders, configs."""
from pathlib import Path

import torch

import tiny_models as tm

# The tiny model set with small CLIP inputs (32 px instead of 224): the training tests run dozens of steps
# on 2 CPU cores. Everything else is tiny_models' default spec.
SPEC = tm.TinySpec(clip1=tm.ClipSpec(image_size=32, patch_size=8),
                   clip2=tm.ClipSpec(image_size=32, patch_size=8, hidden_act="gelu"))


def write_images(folder: Path, n: int = 4, size=(64, 64), seed: int = 0, captions: bool = True) -> Path:
    """Smooth random photos (low-frequency colour fields + a little texture), PNG, with captions."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(seed)
    for i in range(n):
        h, w = size if isinstance(size, tuple) else size[i]
        base = torch.rand(3, 4, 4, generator=g)
        img = torch.nn.functional.interpolate(base[None], size=(h, w), mode="bicubic", align_corners=False)[0]
        img = (img + 0.05 * torch.rand(3, h, w, generator=g)).clamp(0, 1)
        arr = (img.permute(1, 2, 0).numpy() * 255).round().astype("uint8")
        Image.fromarray(arr).save(folder / f"photo{i}.png")
        if captions:
            (folder / f"photo{i}.txt").write_text(f"a photo number {i}")
    return folder


# Degradation small enough for 64-px images and 2 slow CPU cores: small kernels, mild resizes.
FAST_DEGRADATION = {
    "scale": 2,
    "jpeg_backend": "pil",
    "blur1": {"kernel_sizes": [3, 7]},
    "blur2": {"kernel_sizes": [3, 7]},
    "final_sinc": {"kernel_sizes": [3, 7]},
    "resize1": {"scale": [0.5, 1.5]},
    "resize2": {"scale": [0.5, 1.2]},
    "jpeg1": {"quality": [60, 95]},
    "jpeg2": {"quality": [60, 95]},
}


def dpir_config(files, images, out, **over):
    cfg = {
        "models": {"transformer": str(files["transformer"]), "stock_vae": str(files["stock_vae"]),
                   "robust_vae": str(files["robust_vae"]), "clip_local": str(files["clip1"]),
                   "clip_global": str(files["clip2"]), "t5": str(files["t5"])},
        "data": {"folders": [str(images)], "crop_size": 32, "resolutions": [64, 48]},
        "degradation": FAST_DEGRADATION,
        "run": {"output_dir": str(out), "seed": 0, "max_steps": 60, "batch_size": 4, "checkpoint_every": 0,
                "log_every": 1000, "export_dtype": "fp32", "export_at_end": False},
        "optim": {"lr": 1e-3, "warmup_steps": 5, "weight_decay": 0.0},
        "global_tile": 32, "global_overlap": 8,
    }
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(cfg.get(k), dict):
            cfg[k] = {**cfg[k], **v}
        else:
            cfg[k] = v
    return cfg


def decoder_photos(folder: Path, n: int = 4, size: int = 32, seed: int = 0) -> Path:
    """Photos the tiny VAE's frozen decoder can draw (decoded random latents): overfitting the robust
    encoder on them can reach a low loss, so a falling loss proves the gradient path."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    vae = tm.build_vae(SPEC)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        img = vae.decode(0.6 * torch.randn(n, 16, size // 8, size // 8, generator=g)).sample
    img = ((img + 1) / 2).clamp(0, 1)
    for i, im in enumerate(img):
        Image.fromarray((im.permute(1, 2, 0).numpy() * 255).round().astype("uint8")).save(folder / f"d{i}.png")
    return folder
