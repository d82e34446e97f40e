"""Fuzzing of the token-aligned tile plans of tiled sampling (nodes/tiled_sampling.py, which imports ComfyUI).

Whatever latent size, tile, overlap and seam shift: a plan either comes out token aligned (even corners, so
the LQ features crop exactly), inside the latent, covering it, with blend weights summing to one — or the
pack's own DPIRInputError says why not.
"""
from __future__ import annotations

import sys

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from host.comfy_harness import PACK_NAME

FUZZ = settings(max_examples=80, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def coverage(plan, h, w):
    cover = np.zeros((h, w), dtype=np.int32)
    for t in plan:
        cover[t.top:t.bottom, t.left:t.right] += 1
    return cover


@FUZZ
@given(st.integers(1, 600), st.integers(1, 600), st.integers(-4, 260), st.integers(-4, 260), st.integers(-300, 300))
def test_token_aligned_plans(pack_nodes, height, width, tile, overlap, shift):
    tiled = sys.modules[f"{PACK_NAME}.nodes.tiled_sampling"]
    errors = sys.modules[f"{PACK_NAME}.models.errors"]
    try:
        plan = tiled.token_aligned_plan(height, width, tile, overlap, shift)
    except errors.DPIRError as e:
        assert str(e)
        return
    assert plan
    for t in plan:
        assert t.top % 2 == 0 and t.left % 2 == 0
        assert 0 < t.height <= max(tile, 1) and 0 < t.width <= max(tile, 1)
        assert t.bottom <= height and t.right <= width
    assert coverage(plan, height, width).min() >= 1


@FUZZ
@given(st.integers(1, 200), st.integers(1, 200), st.integers(-2, 80), st.integers(-2, 80),
       st.lists(st.integers(-40, 40), min_size=1, max_size=4), st.integers(-3, 5))
def test_tile_sets_and_their_weights(pack_nodes, height, width, tile, overlap, shifts, every):
    tiled = sys.modules[f"{PACK_NAME}.nodes.tiled_sampling"]
    errors = sys.modules[f"{PACK_NAME}.models.errors"]
    try:
        tiles = tiled.TileSet(height, width, tile, overlap, shifts, every)
    except errors.DPIRError as e:
        assert str(e)
        return
    assert tile % 2 == 0 and overlap % 2 == 0 and 0 <= overlap < tile
    for step in range(6):
        index = tiles.plan_index(step)
        plan = tiles.plans[index]
        assert coverage(plan, height, width).min() >= 1
        if len(plan) <= 40:
            acc = torch.zeros(height, width)
            for t, wt in zip(plan, tiles.weights(index, torch.device("cpu"), torch.float32)):
                acc[t.top:t.bottom, t.left:t.right] += wt
            assert torch.allclose(acc, torch.ones_like(acc), atol=1e-4)
