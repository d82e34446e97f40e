"""Real-ESRGAN second-order degradation, batched in torch on the training device.

The stages and their default ranges are those of Real-ESRGAN (Wang et al.
2021, the ``RealESRGANModel`` feed-data pipeline) that DPIR's paper trained
with (dpir-reference §5):

    first pass   blur (iso/aniso Gaussian, generalized Gaussian, plateau, sinc)
                 → random resize (up / down / keep; area, bilinear, bicubic)
                 → Gaussian or Poisson noise (colour or grey) → JPEG
    second pass  blur (with a probability) → random resize → noise
    final        [resize to the LQ size + sinc] then JPEG, or JPEG then
                 [resize + sinc], each order with probability 1/2

Every range lives in ``DegradationConfig``, every stage has an ``enabled``
flag, and ``Degrader.__call__`` returns the parameters it drew for each
image, so callers can write SPIRE-style restoration prompts (``restoration_prompt``,
shared with the node: ``models/restoration_prompt.py``). Randomness comes only from the ``seed`` passed in:
parameter draws use a CPU generator (the same numbers on every device), noise
a generator on the images' device.

Primitives: kernels are built here in torch (a few lines each, no abandoned
toolbox); JPEG is kornia's differentiable codec (per-image quality) or PIL's
real encoder (``jpeg_backend="pil"``, per image on the CPU).
"""
from __future__ import annotations

import io
import math
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from ..models.restoration_prompt import restoration_prompt  # noqa: F401  (one formatter for trainer and node)

KERNEL_TYPES = ("iso", "aniso", "generalized_iso", "generalized_aniso", "plateau_iso", "plateau_aniso")
RESIZE_MODES = ("area", "bilinear", "bicubic")
MAX_KERNEL = 21


# --------------------------------------------------------------------------- configuration


@dataclass
class BlurConfig:
    enabled: bool = True
    prob: float = 1.0                       # probability that an image is blurred at all
    kernel_sizes: tuple = (7, 21)           # odd sizes in this closed range
    kernel_types: tuple = KERNEL_TYPES
    kernel_probs: tuple = (0.45, 0.25, 0.12, 0.03, 0.12, 0.03)
    sigma: tuple = (0.2, 3.0)
    betag: tuple = (0.5, 4.0)               # generalized Gaussian shape
    betap: tuple = (1.0, 2.0)               # plateau shape
    sinc_prob: float = 0.1                  # a sinc (ringing) kernel instead of the above


@dataclass
class ResizeConfig:
    enabled: bool = True
    probs: tuple = (0.2, 0.7, 0.1)          # up, down, keep
    scale: tuple = (0.15, 1.5)
    modes: tuple = RESIZE_MODES


@dataclass
class NoiseConfig:
    enabled: bool = True
    gaussian_prob: float = 0.5              # otherwise Poisson
    sigma: tuple = (1.0, 30.0)              # Gaussian std in 8-bit units (/255)
    poisson_scale: tuple = (0.05, 3.0)
    gray_prob: float = 0.4


@dataclass
class JPEGConfig:
    enabled: bool = True
    quality: tuple = (30.0, 95.0)


@dataclass
class FinalSincConfig:
    enabled: bool = True
    prob: float = 0.8
    kernel_sizes: tuple = (7, 21)


@dataclass
class DegradationConfig:
    """All ranges of the pipeline; ``scale`` is the HQ/LQ size ratio (×4 in DPIR)."""
    scale: int = 4
    blur1: BlurConfig = field(default_factory=BlurConfig)
    resize1: ResizeConfig = field(default_factory=ResizeConfig)
    noise1: NoiseConfig = field(default_factory=NoiseConfig)
    jpeg1: JPEGConfig = field(default_factory=JPEGConfig)
    blur2: BlurConfig = field(default_factory=lambda: BlurConfig(prob=0.8, sigma=(0.2, 1.5)))
    resize2: ResizeConfig = field(default_factory=lambda: ResizeConfig(probs=(0.3, 0.4, 0.3), scale=(0.3, 1.2)))
    noise2: NoiseConfig = field(default_factory=lambda: NoiseConfig(sigma=(1.0, 25.0), poisson_scale=(0.05, 2.5)))
    final_sinc: FinalSincConfig = field(default_factory=FinalSincConfig)
    jpeg2: JPEGConfig = field(default_factory=JPEGConfig)
    final_resize_modes: tuple = RESIZE_MODES
    jpeg_backend: str = "kornia"             # "kornia" (differentiable, on device) or "pil" (real codec, CPU)
    quantize: bool = True                    # round the LQ to 8 bit as a saved image would be
    upsample_mode: str = "bicubic"           # LQ → HQ size for the condition (DPIR restores at the HQ size)

    STAGES = ("blur1", "resize1", "noise1", "jpeg1", "blur2", "resize2", "noise2", "final_sinc", "jpeg2")

    def only(self, *stages: str) -> "DegradationConfig":
        """A copy with every stage but ``stages`` switched off."""
        import copy

        cfg = copy.deepcopy(self)
        for s in self.STAGES:
            getattr(cfg, s).enabled = s in stages
        return cfg

    def validate(self) -> None:
        if self.scale < 1:
            raise ValueError(f"degradation scale must be >= 1, got {self.scale}")
        if self.jpeg_backend not in ("kornia", "pil"):
            raise ValueError(f"jpeg_backend must be 'kornia' or 'pil', got {self.jpeg_backend!r}")
        for name in ("blur1", "blur2"):
            b = getattr(self, name)
            lo, hi = b.kernel_sizes
            if lo < 3 or hi > MAX_KERNEL or lo > hi:
                raise ValueError(f"{name}.kernel_sizes must lie in [3, {MAX_KERNEL}], got {b.kernel_sizes}")
            if len(b.kernel_types) != len(b.kernel_probs) or set(b.kernel_types) - set(KERNEL_TYPES):
                raise ValueError(f"{name}: kernel_types must be among {KERNEL_TYPES}, one prob each")
        for name in ("resize1", "resize2"):
            r = getattr(self, name)
            if set(r.modes) - set(RESIZE_MODES) or len(r.probs) != 3:
                raise ValueError(f"{name}: modes among {RESIZE_MODES} and probs (up, down, keep)")


def config_from_dict(d: dict | None) -> DegradationConfig:
    """``DegradationConfig`` from nested plain values (YAML/JSON); unknown keys are errors."""
    cfg = DegradationConfig()
    for key, value in (d or {}).items():
        if not hasattr(cfg, key) or key == "STAGES":
            raise ValueError(f"unknown degradation option {key!r}")
        current = getattr(cfg, key)
        if hasattr(current, "__dataclass_fields__"):
            names = {f.name for f in fields(current)}
            for k, v in (value or {}).items():
                if k not in names:
                    raise ValueError(f"unknown degradation option {key}.{k}")
                setattr(current, k, tuple(v) if isinstance(v, list) else v)
        else:
            setattr(cfg, key, tuple(value) if isinstance(value, list) else value)
    cfg.validate()
    return cfg


# --------------------------------------------------------------------------- kernels


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    ax = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    yy, xx = torch.meshgrid(ax, ax, indexing="ij")
    return xx, yy


def _quadratic_form(size: int, sx: float, sy: float, theta: float) -> torch.Tensor:
    """x^T Σ^-1 x on a size×size grid, Σ = R diag(sx², sy²) Rᵀ."""
    c, s = math.cos(theta), math.sin(theta)
    rot = torch.tensor([[c, -s], [s, c]], dtype=torch.float64)
    sigma = rot @ torch.diag(torch.tensor([sx * sx, sy * sy], dtype=torch.float64)) @ rot.T
    inv = torch.linalg.inv(sigma)
    xx, yy = _grid(size)
    return inv[0, 0] * xx * xx + (inv[0, 1] + inv[1, 0]) * xx * yy + inv[1, 1] * yy * yy


def gaussian_kernel(size: int, sx: float, sy: float, theta: float, kind: str = "gaussian",
                    beta: float = 1.0) -> torch.Tensor:
    """Anisotropic Gaussian / generalized Gaussian / plateau kernel, normalised to sum 1."""
    q = _quadratic_form(size, sx, sy, theta)
    if kind == "gaussian":
        k = torch.exp(-0.5 * q)
    elif kind == "generalized":
        k = torch.exp(-0.5 * q.pow(beta))
    elif kind == "plateau":
        k = 1.0 / (q.pow(beta) + 1.0)
    else:
        raise ValueError(f"unknown kernel kind {kind!r}")
    return k / k.sum()


def sinc_kernel(size: int, omega_c: float) -> torch.Tensor:
    """2-D circular low-pass (sinc / Airy) kernel with cutoff ``omega_c`` (radians), sum 1."""
    xx, yy = _grid(size)
    r = torch.sqrt(xx * xx + yy * yy)
    safe = torch.where(r == 0, torch.ones_like(r), r)
    k = omega_c * torch.special.bessel_j1(omega_c * safe) / (2 * math.pi * safe)
    k = torch.where(r == 0, torch.full_like(r, omega_c ** 2 / (4 * math.pi)), k)
    return k / k.sum()


def pad_kernel(k: torch.Tensor, size: int = MAX_KERNEL) -> torch.Tensor:
    p = (size - k.shape[-1]) // 2
    return F.pad(k, (p, p, p, p))


def identity_kernel(size: int = MAX_KERNEL) -> torch.Tensor:
    k = torch.zeros(size, size, dtype=torch.float64)
    k[size // 2, size // 2] = 1
    return k


def filter2d(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Per-image kernels (B, k, k) on (B, C, H, W), reflect padding, one grouped conv."""
    b, c, h, w = images.shape
    k = kernels.shape[-1]
    x = F.pad(images, (k // 2,) * 4, mode="reflect") if min(h, w) > k // 2 else \
        F.pad(images, (k // 2,) * 4, mode="replicate")
    weight = kernels.to(images).unsqueeze(1).repeat_interleave(c, dim=0)  # (B*C, 1, k, k)
    out = F.conv2d(x.reshape(1, b * c, *x.shape[-2:]), weight, groups=b * c)
    return out.view(b, c, h, w)


# --------------------------------------------------------------------------- drawing


class _Draw:
    """Parameter draws from a CPU generator (identical on every device)."""

    def __init__(self, seed: int):
        self.g = torch.Generator().manual_seed(int(seed) & 0x7FFF_FFFF_FFFF_FFFF)

    def uniform(self, lo: float, hi: float) -> float:
        return float(lo + (hi - lo) * torch.rand((), generator=self.g, dtype=torch.float64))

    def chance(self, p: float) -> bool:
        return float(torch.rand((), generator=self.g, dtype=torch.float64)) < p

    def choice(self, items, probs=None):
        items = list(items)
        if probs is None:
            probs = [1.0] * len(items)
        w = torch.tensor(probs, dtype=torch.float64)
        return items[int(torch.multinomial(w / w.sum(), 1, generator=self.g))]

    def odd_size(self, lo: int, hi: int) -> int:
        sizes = [s for s in range(lo, hi + 1) if s % 2]
        return self.choice(sizes)

    def seed(self) -> int:
        return int(torch.randint(0, 2 ** 62, (), generator=self.g))


def _draw_blur(d: _Draw, cfg: BlurConfig) -> dict:
    size = d.odd_size(*cfg.kernel_sizes)
    if d.chance(cfg.sinc_prob):
        lo = math.pi / 3 if size < 13 else math.pi / 5
        return {"kind": "sinc", "size": size, "omega_c": d.uniform(lo, math.pi)}
    kind = d.choice(cfg.kernel_types, cfg.kernel_probs)
    iso = kind.endswith("iso") and not kind.endswith("aniso")
    sx = d.uniform(*cfg.sigma)
    sy = sx if iso else d.uniform(*cfg.sigma)
    theta = 0.0 if iso else d.uniform(-math.pi, math.pi)
    p = {"kind": kind, "size": size, "sigma_x": sx, "sigma_y": sy, "theta": theta}
    if kind.startswith("generalized"):
        lo, hi = cfg.betag
        p["beta"] = d.uniform(lo, 1.0) if d.chance(0.5) and lo < 1 else d.uniform(max(lo, 1.0), hi)
    elif kind.startswith("plateau"):
        lo, hi = cfg.betap
        p["beta"] = d.uniform(lo, 1.0) if d.chance(0.5) and lo < 1 else d.uniform(max(lo, 1.0), hi)
    return p


def blur_kernel(p: dict) -> torch.Tensor:
    """The (unpadded) kernel described by drawn blur parameters."""
    if p["kind"] == "sinc":
        return sinc_kernel(p["size"], p["omega_c"])
    family = "gaussian" if p["kind"] in ("iso", "aniso") else p["kind"].split("_")[0]
    return gaussian_kernel(p["size"], p["sigma_x"], p["sigma_y"], p["theta"], family, p.get("beta", 1.0))


def _draw_resize(d: _Draw, cfg: ResizeConfig) -> dict:
    kind = d.choice(("up", "down", "keep"), cfg.probs)
    lo, hi = cfg.scale
    if kind == "up":
        s = d.uniform(1.0, hi) if hi > 1 else 1.0
    elif kind == "down":
        s = d.uniform(lo, 1.0) if lo < 1 else 1.0
    else:
        s = 1.0
    return {"direction": kind, "scale": s, "mode": d.choice(cfg.modes)}


def _draw_noise(d: _Draw, cfg: NoiseConfig) -> dict:
    gray = d.chance(cfg.gray_prob)
    if d.chance(cfg.gaussian_prob):
        return {"kind": "gaussian", "sigma": d.uniform(*cfg.sigma), "gray": gray}
    return {"kind": "poisson", "scale": d.uniform(*cfg.poisson_scale), "gray": gray}


# --------------------------------------------------------------------------- primitives


def _resize(x: torch.Tensor, size: tuple[int, int], mode: str) -> torch.Tensor:
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    kw = {} if mode == "area" else {"align_corners": False}
    return F.interpolate(x, size=size, mode=mode, **kw)


def _add_noise(x: torch.Tensor, params: list[dict], gen: torch.Generator) -> torch.Tensor:
    out = []
    for img, p in zip(x, params):
        if p is None:
            out.append(img)
            continue
        if p["kind"] == "gaussian":
            shape = (1, *img.shape[1:]) if p["gray"] else img.shape
            noise = torch.randn(shape, generator=gen, device=img.device, dtype=img.dtype) * (p["sigma"] / 255.0)
        else:  # Poisson, as Real-ESRGAN: photon count from the number of distinct 8-bit values
            src = (0.299 * img[0] + 0.587 * img[1] + 0.114 * img[2])[None] if p["gray"] else img
            q = (src.clamp(0, 1) * 255).round() / 255
            vals = 2 ** math.ceil(math.log2(max(len(torch.unique(q)), 2)))
            noisy = torch.poisson(q * vals, generator=gen) / vals
            noise = (noisy - q) * p["scale"]
        out.append(img + noise.expand_as(img))
    return torch.stack(out)


def _jpeg(x: torch.Tensor, quality: list[float | None], backend: str) -> torch.Tensor:
    x = x.clamp(0, 1)
    idx = [i for i, q in enumerate(quality) if q is not None]
    if not idx:
        return x
    if backend == "kornia":
        from kornia.enhance import jpeg_codec_differentiable

        q = torch.tensor([quality[i] for i in idx], device=x.device, dtype=torch.float32)
        coded = jpeg_codec_differentiable(x[idx].float(), q).to(x.dtype)
    else:
        from PIL import Image
        import numpy as np

        coded = []
        for i in idx:
            arr = (x[i].detach().float().cpu().permute(1, 2, 0).numpy() * 255).round().astype("uint8")
            buf = io.BytesIO()
            Image.fromarray(arr).save(buf, format="JPEG", quality=int(round(quality[i])))
            back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), dtype="float32") / 255
            coded.append(torch.from_numpy(back).permute(2, 0, 1))
        coded = torch.stack(coded).to(x)
    out = x.clone()
    out[idx] = coded
    return out


# --------------------------------------------------------------------------- the pipeline


@dataclass
class Degraded:
    lq: torch.Tensor            # (B, 3, H/scale, W/scale) in [0, 1]
    lq_up: torch.Tensor         # (B, 3, H, W): the LQ resized back to the HQ size (the DPIR condition image)
    params: list[dict]          # per image: what was drawn for every stage (None where a stage did nothing)


class Degrader:
    """``Degrader(cfg)(hq, seed)`` → ``Degraded``; ``hq`` is (B, 3, H, W) in [0, 1] on any device.

    H and W must be multiples of ``scale``. ``params`` replays a previous
    draw (e.g. to degrade a sample's global context like its local crop).
    """

    def __init__(self, cfg: DegradationConfig | None = None):
        self.cfg = cfg or DegradationConfig()
        self.cfg.validate()

    # one image's parameters; resize draws are per batch (every image must keep one size)
    def draw(self, batch: int, seed: int) -> list[dict]:
        cfg, d = self.cfg, _Draw(seed)
        shared = {
            "resize1": _draw_resize(d, cfg.resize1) if cfg.resize1.enabled else None,
            "resize2": _draw_resize(d, cfg.resize2) if cfg.resize2.enabled else None,
            "final_resize_mode": d.choice(cfg.final_resize_modes),
            "final_order": "resize_sinc_then_jpeg" if d.chance(0.5) else "jpeg_then_resize_sinc",
        }
        params = []
        for _ in range(batch):
            p = dict(shared)
            p["blur1"] = _draw_blur(d, cfg.blur1) if cfg.blur1.enabled and d.chance(cfg.blur1.prob) else None
            p["noise1"] = _draw_noise(d, cfg.noise1) if cfg.noise1.enabled else None
            p["jpeg1"] = d.uniform(*cfg.jpeg1.quality) if cfg.jpeg1.enabled else None
            p["blur2"] = _draw_blur(d, cfg.blur2) if cfg.blur2.enabled and d.chance(cfg.blur2.prob) else None
            p["noise2"] = _draw_noise(d, cfg.noise2) if cfg.noise2.enabled else None
            fs = cfg.final_sinc
            if fs.enabled and d.chance(fs.prob):
                p["final_sinc"] = {"kind": "sinc", "size": d.odd_size(*fs.kernel_sizes),
                                   "omega_c": d.uniform(math.pi / 3, math.pi)}
            else:
                p["final_sinc"] = None
            p["jpeg2"] = d.uniform(*cfg.jpeg2.quality) if cfg.jpeg2.enabled else None
            p["noise_seed"] = d.seed()
            params.append(p)
        return params

    def __call__(self, hq: torch.Tensor, seed: int = 0, params: list[dict] | None = None) -> Degraded:
        cfg = self.cfg
        if hq.ndim != 4 or hq.shape[1] != 3:
            raise ValueError(f"degradation takes (B, 3, H, W) images, got {tuple(hq.shape)}")
        b, _, h, w = hq.shape
        if h % cfg.scale or w % cfg.scale:
            raise ValueError(f"image size {h}×{w} is not a multiple of the degradation scale {cfg.scale}")
        params = params if params is not None else self.draw(b, seed)
        if len(params) != b:
            raise ValueError(f"{len(params)} parameter sets for {b} images")
        gen = torch.Generator(hq.device).manual_seed(params[0]["noise_seed"])
        x = hq.float()
        lq_h, lq_w = h // cfg.scale, w // cfg.scale

        def blur(x, key):
            if all(p[key] is None for p in params):
                return x
            ks = torch.stack([pad_kernel(blur_kernel(p[key])) if p[key] else identity_kernel() for p in params])
            return filter2d(x, ks.to(x.device))

        # first pass
        x = blur(x, "blur1")
        r = params[0]["resize1"]
        if r is not None and r["scale"] != 1.0:
            x = _resize(x, (max(1, round(h * r["scale"])), max(1, round(w * r["scale"]))), r["mode"])
        x = _add_noise(x, [p["noise1"] for p in params], gen).clamp(0, 1)
        x = _jpeg(x, [p["jpeg1"] for p in params], cfg.jpeg_backend)
        # second pass
        x = blur(x, "blur2")
        r = params[0]["resize2"]
        if r is not None:
            x = _resize(x, (max(1, round(lq_h * r["scale"])), max(1, round(lq_w * r["scale"]))), r["mode"])
        x = _add_noise(x, [p["noise2"] for p in params], gen).clamp(0, 1)
        # final: resize to the LQ size + sinc, and JPEG, in the drawn order
        mode = params[0]["final_resize_mode"]
        if params[0]["final_order"] == "resize_sinc_then_jpeg":
            x = blur(_resize(x, (lq_h, lq_w), mode), "final_sinc")
            x = _jpeg(x, [p["jpeg2"] for p in params], cfg.jpeg_backend)
        else:
            x = _jpeg(x, [p["jpeg2"] for p in params], cfg.jpeg_backend)
            x = blur(_resize(x, (lq_h, lq_w), mode), "final_sinc")
        lq = x.clamp(0, 1)
        if cfg.quantize:
            lq = (lq * 255).round() / 255
        lq_up = _resize(lq, (h, w), cfg.upsample_mode).clamp(0, 1) if cfg.scale != 1 else lq
        return Degraded(lq.to(hq.dtype), lq_up.to(hq.dtype), params)
