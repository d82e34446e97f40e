"""The LQ condition branch of DPIR (dpir-reference §2).

``control_conv`` turns the LQ latent into one feature per image token; after
the first joint block the features are cross-normalised to the statistics of
the block's image tokens and added. The conv features do not depend on the
sampling step, so callers compute them once per image (``features``) and
apply them at every step (``inject``).
"""
from __future__ import annotations

import torch
from torch import nn

from .errors import DPIRModelError

# GroupNorm group counts of the released branch; not recoverable from weights.
GROUPS = (4, 8, 8)
EPS = 1e-9


class LQCondition(nn.Module):
    """``control_conv``: conv 3x3 → GN → conv 3x3 stride 2 → GN → conv 3x3 → GN.

    ``widths`` are the two inner widths (256, 512 in the release) and
    ``hidden`` the DiT width (1536 for SD3-medium). The stride-2 conv maps a
    latent of H×W to ceil(H/2)×ceil(W/2), exactly the patch-2 token grid
    (ComfyUI pads odd latents up to the patch size).
    """

    def __init__(self, latent_channels: int = 16, widths=(256, 512), hidden: int = 1536):
        super().__init__()
        c1, c2 = widths
        for width, groups in zip((c1, c2, hidden), GROUPS):
            if width % groups:
                raise DPIRModelError(f"LQ branch width {width} is not divisible by its {groups} GroupNorm groups")
        self.control_conv = nn.Sequential(
            nn.Conv2d(latent_channels, c1, 3, padding=1),
            nn.GroupNorm(GROUPS[0], c1),
            nn.Conv2d(c1, c2, 3, stride=2, padding=1),
            nn.GroupNorm(GROUPS[1], c2),
            nn.Conv2d(c2, hidden, 3, padding=1),
            nn.GroupNorm(GROUPS[2], hidden),
        )

    @property
    def hidden(self) -> int:
        return self.control_conv[4].out_channels

    @property
    def latent_channels(self) -> int:
        return self.control_conv[0].in_channels

    @classmethod
    def from_state_dict(cls, sd: dict, source: str = "the LQ branch weights") -> "LQCondition":
        """Build with widths read from ``control_conv.{0..5}.*`` weights and load them."""
        try:
            w0, w2, w4 = (sd[f"control_conv.{i}.weight"] for i in (0, 2, 4))
        except KeyError as e:
            raise DPIRModelError(f"{source}: missing LQ branch weight {e.args[0]!r}") from None
        for i, w in zip((0, 2, 4), (w0, w2, w4)):
            if not isinstance(w, torch.Tensor) or w.ndim != 4 or 0 in w.shape:
                shape = tuple(w.shape) if isinstance(w, torch.Tensor) else type(w).__name__
                raise DPIRModelError(f"{source}: LQ branch weight control_conv.{i}.weight has the shape {shape}, "
                                     "not a convolution's; the file is corrupted or not a DPIR checkpoint")
        branch = cls(latent_channels=w0.shape[1], widths=(w0.shape[0], w2.shape[0]), hidden=w4.shape[0])
        own = branch.state_dict()
        problems = [f"{k}: expected {tuple(v.shape)}, found {tuple(sd[k].shape)}"
                    for k, v in own.items() if k in sd and sd[k].shape != v.shape]
        missing = sorted(set(own) - set(sd))
        unexpected = sorted(set(sd) - set(own))
        if problems or missing or unexpected:
            detail = "; ".join(problems + [f"missing {k}" for k in missing] + [f"unexpected {k}" for k in unexpected])
            raise DPIRModelError(f"{source}: LQ branch weights do not fit the official control_conv layout: {detail}")
        branch.load_state_dict({k: sd[k] for k in own})
        return branch

    def features(self, z_lq: torch.Tensor) -> torch.Tensor:
        """LQ latent (B, C, H, W), already ``process_in``-scaled → tokens (B, ceil(H/2)*ceil(W/2), hidden)."""
        if z_lq.ndim != 4 or z_lq.shape[1] != self.latent_channels:
            raise DPIRModelError(
                f"the LQ latent must be (batch, {self.latent_channels}, height, width), got {tuple(z_lq.shape)}; "
                "encode the LQ image with an SD3 (16-channel) VAE")
        p = next(self.parameters())
        c = self.control_conv(z_lq.to(device=p.device, dtype=p.dtype))
        return c.flatten(2).transpose(1, 2)  # b c h w -> b (h w) c, row-major like the patch grid


def token_grid(height: int, width: int) -> tuple[int, int]:
    """Token grid (rows, cols) of a latent of this size for a patch-2 DiT."""
    return (height + 1) // 2, (width + 1) // 2


def inject(h: torch.Tensor, c: torch.Tensor, strength: float = 1.0) -> torch.Tensor:
    """Cross-normalise ``c`` to the per-sample statistics of ``h`` and add it.

    ``h``: image tokens after joint block 0 (B, N, D); ``c``: branch features
    (B or 1, N, D). Statistics run over tokens and channels together, std is
    unbiased (torch default), eps 1e-9 — as in the released code.
    """
    for name, x in (("image tokens", h), ("LQ features", c)):
        if not isinstance(x, torch.Tensor) or x.ndim != 3:
            shape = tuple(x.shape) if isinstance(x, torch.Tensor) else type(x).__name__
            raise DPIRModelError(f"the {name} must be (batch, tokens, width), got {shape}")
    if c.shape[0] != h.shape[0] and (c.shape[0] == 0 or h.shape[0] % c.shape[0]):
        raise DPIRModelError(f"{c.shape[0]} LQ images cannot pair with a batch of {h.shape[0]} latents: wire the "
                             "same 'lq_latent' into 'DPIR Apply LQ Condition' and into the sampler")
    if c.shape[1:] != h.shape[1:]:
        raise DPIRModelError(
            f"LQ features {tuple(c.shape[1:])} do not match the image tokens {tuple(h.shape[1:])}: the LQ latent must "
            "have the size of the latent being sampled, and the LQ branch the width of the transformer")
    c = c.to(h.dtype)
    if c.shape[0] != h.shape[0]:
        c = c.expand(h.shape[0], -1, -1) if c.shape[0] == 1 else c.repeat(h.shape[0] // c.shape[0], 1, 1)
    mu_h, sd_h = h.mean(dim=(1, 2), keepdim=True), h.std(dim=(1, 2), keepdim=True)
    mu_c, sd_c = c.mean(dim=(1, 2), keepdim=True), c.std(dim=(1, 2), keepdim=True)
    return h + ((c - mu_c) / (sd_c + EPS) * sd_h + mu_h) * strength
