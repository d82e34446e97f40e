"""Fixtures of the training tests (helpers live in training_helpers.py)."""
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import tiny_models as tm  # noqa: E402
from training_helpers import SPEC, write_images  # noqa: E402


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory):
    d = tmp_path_factory.mktemp("tiny_training_models")
    return {
        "transformer": tm.write_transformer_folder(d / "transformer", SPEC),
        "stock_vae": tm.write_vae_folder(d / "vae_stock", SPEC),
        "robust_vae": tm.write_vae_folder(d / "vae_robust", SPEC, robust=True),
        "clip1": tm.write_clip_vision_folder(d / "clip1", SPEC, which=1),
        "clip2": tm.write_clip_vision_folder(d / "clip2", SPEC, which=2),
        "t5": tm.write_t5_folder(d / "t5", SPEC),
    }


@pytest.fixture(scope="session")
def tiny_images(tmp_path_factory):
    return write_images(tmp_path_factory.mktemp("photos"), size=(32, 32))


@pytest.fixture(scope="session", autouse=True)
def _one_thread():
    """Tiny models run faster on one thread (and do not fight other jobs for the 2 cores). Session scope:
    it must be in force before the module-scoped training runs (a resumed run is bit-exact only with the
    same thread count)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
