"""Errors of the degradation estimators (models/degradation_estimate.py) on images with known degradations.

    python bench/estimators.py [--images 24] [--size 256] [--seed 0]

Synthetic photos (shapes with anti-aliased edges over smooth shading and fine
texture) are degraded by the trainer's own ``training/degradation.py`` with one
stage at a time switched on at scale 1, so the drawn parameter is the truth:
Gaussian noise (sigma 1–30), isotropic Gaussian blur (sigma 0.2–3, HQ pixels),
JPEG quality 30–95 (PIL's codec and the trainer's default kornia codec). Prints
the mean and median absolute error and the worst case of each estimator, and
the share of JPEG images recognised as JPEG (and of clean images wrongly so).
"""
from __future__ import annotations

import argparse
import statistics
import sys
import types
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
if "dpir_pack" not in sys.modules:  # the pack's folder name is no identifier (as in tests/conftest.py)
    sys.modules["dpir_pack"] = types.ModuleType("dpir_pack")
    sys.modules["dpir_pack"].__path__ = [str(ROOT)]

from dpir_pack.models import degradation_estimate as estimate  # noqa: E402
from dpir_pack.training import degradation  # noqa: E402


def synthetic_photo(size: int, seed: int) -> torch.Tensor:
    """(3, size, size) in [0, 1]: random shapes with sharp, anti-aliased edges over shading and faint texture."""
    rng = np.random.default_rng(seed)
    big = size * 4
    yy, xx = np.mgrid[0:big, 0:big] / big
    base = np.stack([rng.uniform(0.2, 0.8) + rng.uniform(-0.2, 0.2) * (xx if c % 2 else yy) for c in range(3)], -1)
    img = Image.fromarray((base.clip(0, 1) * 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(12):
        x0, y0 = rng.integers(0, big, 2)
        w, h = rng.integers(big // 10, big // 3, 2)
        colour = tuple(int(v) for v in rng.integers(20, 236, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)([x0, y0, x0 + w, y0 + h], fill=colour)
    small = np.asarray(img.resize((size, size), Image.LANCZOS), dtype=np.float64) / 255
    small = small + rng.normal(0, 0.5 / 255, small.shape)  # faint texture, below 8-bit noise
    return torch.from_numpy(small.clip(0, 1)).permute(2, 0, 1).float()


def _one_stage(stage: str, **options) -> "degradation.Degrader":
    cfg = degradation.DegradationConfig(scale=1).only(stage)
    for key, value in options.items():
        section, name = key.split("__")
        setattr(getattr(cfg, section), name, value)
    return degradation.Degrader(cfg)


def measure(images: int = 24, size: int = 256, seed: int = 0) -> dict:
    """{estimator: list of (truth, estimate)} on ``images`` photos per degradation."""
    photos = [synthetic_photo(size, seed + i)[None] for i in range(images)]
    noise = _one_stage("noise1", noise1__gaussian_prob=1.0, noise1__gray_prob=0.0)
    blur = _one_stage("blur1", blur1__kernel_types=("iso",), blur1__kernel_probs=(1.0,), blur1__sinc_prob=0.0)
    out = {"noise": [], "blur": [], "jpeg_pil": [], "jpeg_kornia": [], "clean_as_jpeg": []}
    for i, hq in enumerate(photos):
        d = noise(hq, seed=seed + i)
        out["noise"].append((d.params[0]["noise1"]["sigma"], estimate.estimate_noise_sigma(d.lq)[0]))
        d = blur(hq, seed=seed + i)
        b = d.params[0]["blur1"]
        out["blur"].append((b["sigma_x"], estimate.estimate_blur_sigma(d.lq)[0]))
        for backend in ("pil", "kornia"):
            cfg = degradation.DegradationConfig(scale=1, jpeg_backend=backend).only("jpeg2")
            d = degradation.Degrader(cfg)(hq, seed=seed + i)
            out[f"jpeg_{backend}"].append((d.params[0]["jpeg2"], estimate.estimate_jpeg_quality(d.lq)[0]))
        clean = (hq * 255).round() / 255
        out["clean_as_jpeg"].append((None, estimate.estimate_jpeg_quality(clean)[0]))
    return out


def summary(pairs) -> dict:
    errs = [abs(e - t) for t, e in pairs if e is not None]
    found = sum(e is not None for _, e in pairs)
    if not errs:
        return {"found": found, "n": len(pairs)}
    return {"found": found, "n": len(pairs), "mean_abs": statistics.fmean(errs), "median_abs": statistics.median(errs),
            "max_abs": max(errs)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--images", type=int, default=24)
    ap.add_argument("--size", type=int, default=256)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()
    res = measure(a.images, a.size, a.seed)
    units = {"noise": "8-bit std", "blur": "px sigma", "jpeg_pil": "quality", "jpeg_kornia": "quality"}
    for name, pairs in res.items():
        s = summary(pairs)
        if name == "clean_as_jpeg":
            print(f"{name:12s} uncoded images taken for JPEG: {s['found']}/{s['n']}")
            continue
        print(f"{name:12s} ({units[name]}): found {s['found']}/{s['n']}, "
              f"mean |err| {s.get('mean_abs', float('nan')):.2f}, median {s.get('median_abs', float('nan')):.2f}, max {s.get('max_abs', float('nan')):.2f}")
        if name.startswith("jpeg"):
            missed = sorted(round(t, 1) for t, e in pairs if e is None)
            print(f"{'':12s} not recognised at qualities {missed}")
        if name == "blur":
            for lo, hi in ((0, 0.6), (0.6, 10)):
                part = summary([(t, e) for t, e in pairs if lo <= t < hi])
                print(f"{'':12s} sigma {lo}–{hi}: mean |err| {part.get('mean_abs', float('nan')):.2f}, "
                      f"max {part.get('max_abs', float('nan')):.2f} ({part['n']} images)")


if __name__ == "__main__":
    main()
