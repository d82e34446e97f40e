"""Shared test setup.

The pack's folder name is not a valid Python identifier (ComfyUI loads it as
``ComfyUI-DPIR``), so tests import it under the alias ``dpir_pack`` without
running its top-level ``__init__`` (which needs ComfyUI).
"""
import sys
import types
from pathlib import Path

import pytest

PACK_ROOT = Path(__file__).resolve().parents[1]

if "dpir_pack" not in sys.modules:
    _pkg = types.ModuleType("dpir_pack")
    _pkg.__path__ = [str(PACK_ROOT)]
    sys.modules["dpir_pack"] = _pkg

sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(autouse=True)
def _deterministic():
    import torch

    torch.manual_seed(0)
    yield
