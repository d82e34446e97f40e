"""The fidelity knobs of SUPIR's sampler (Yu et al., CVPR 2024) and ComfyUI's SUPIR node, for DPIR.

* Strength schedule: the LQ condition's strength moves linearly **over sigma** from ``start`` (at the model's
  largest sigma, pure noise) to ``end`` (at sigma 0), as SUPIR's ``control_scale`` with
  ``use_linear_control_scale`` and core ``SUPIRPatch._get_control_scale`` do:
  ``end + min(sigma / sigma_max, 1) * (start - end)``. For SD3's rectified flow sigma runs from 1 to 0; with
  shift 3 and 28 steps (scheduler normal) it is above 0.9 for the first 7 steps and above 0.75 for the first 14,
  so the strength is not linear in the step index: it stays near ``start`` longer.
* Restoration-guided sampling: at a step at sigma whose next sigma in the schedule is above ``s_tmin``, the
  denoised estimate is pulled toward the LQ latent: ``x0 - (x0 - z_lq) * (sigma / sigma_max) ** tau``
  (SUPIR ``RestoreEDMSampler.sampler_step``); sigma_max is the schedule's largest sigma, so the pull is full at
  the first step and fades as the noise goes; a large ``tau`` lets it fade early, a small one keeps it through
  more of the sampling; ``tau = 0`` is off.
"""
from __future__ import annotations

import torch


def scheduled_strength(sigma: float, sigma_max: float, start: float, end: float) -> float:
    """The LQ condition's strength factor at ``sigma``: ``start`` at ``sigma_max`` and above, ``end`` at 0."""
    if start == end:  # no float arithmetic: the default (1 -> 1) is today's strength bit for bit
        return end
    t = min(max(sigma / sigma_max, 0.0), 1.0) if sigma_max > 0 else 1.0
    return end + t * (start - end)


def next_sigma(schedule: torch.Tensor, sigma: float) -> float:
    """The schedule's next sigma after ``sigma``: the largest one below it (0 when none is). For a sampler that
    evaluates the model only at the schedule's sigmas (Euler, DPM++ 2M...) this is ``sigmas[i + 1]``; one that
    also evaluates in between (Heun, DPM++ 2S) gets the next scheduled sigma after that point."""
    below = schedule[schedule < sigma * (1 - 1e-6)]
    return float(below.max()) if below.numel() else 0.0


def pull_weight(sigma: float, next_sigma_: float, sigma_max: float, tau: float, s_tmin: float) -> float:
    """``(sigma / sigma_max) ** tau`` where the step is guided (``tau > 0`` and next sigma above ``s_tmin``), else 0."""
    if tau <= 0 or next_sigma_ <= s_tmin or sigma_max <= 0:
        return 0.0
    return min(sigma / sigma_max, 1.0) ** tau


def restore_pull(denoised: torch.Tensor, z_lq: torch.Tensor, weight: float) -> torch.Tensor:
    """``denoised - (denoised - z_lq) * weight``; ``z_lq`` (1 or B images) in ``denoised``'s latent space."""
    z = z_lq.to(device=denoised.device, dtype=denoised.dtype)
    if z.shape[0] != denoised.shape[0]:
        z = z.expand(denoised.shape[0], -1, -1, -1) if z.shape[0] == 1 else \
            z.repeat(denoised.shape[0] // z.shape[0], 1, 1, 1)
    return denoised - (denoised - z) * weight
