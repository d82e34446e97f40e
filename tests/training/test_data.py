"""Image folders, captions, unreadable files, the global-local sampler and its resumable step stream."""
import warnings

import pytest
import torch

from training_helpers import write_images
from dpir_pack.training.data import DataConfig, ImageFolders, StepBatches, collate


def test_folders_captions_and_unreadable_files(tmp_path):
    a = write_images(tmp_path / "a", n=3, size=[(40, 64), (64, 48), (80, 80)])
    b = write_images(tmp_path / "b", n=1, size=(33, 70), seed=1, captions=False)
    (a / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really")
    (a / "empty.jpg").write_bytes(b"")
    (a / "notes.md").write_text("not an image")
    with pytest.warns(UserWarning, match="skipped 2 unreadable"):
        ds = ImageFolders(DataConfig(folders=[a, b], crop_size=32, resolutions=(64, "native")))
    assert len(ds) == 4 and len(ds.skipped) == 2
    assert {p.rsplit("/", 1)[-1] for p, _ in ds.skipped} == {"broken.png", "empty.jpg"}
    caps = sorted(ds.caption(i) for i in range(len(ds)))
    assert caps == ["", "a photo number 0", "a photo number 1", "a photo number 2"]


def test_global_local_sample(tmp_path):
    folder = write_images(tmp_path / "p", n=2, size=[(96, 128), (40, 50)])
    ds = ImageFolders(DataConfig(folders=[folder], crop_size=32, resolutions=(64,), random_flip=False))
    for i in range(2):
        s = ds[(i, 123)]
        assert s.local.shape == (3, 32, 32)
        top, left, c = s.box
        # the crop is a window of its global context
        assert torch.equal(s.local, s.global_view[:, top:top + c, left:left + c])
        assert torch.equal(s.local, ds[(i, 123)].local)  # the sample seed fixes the crop
    # a 128-wide photo at long side 64 keeps its aspect ratio; a smaller one is never upscaled to 64 ...
    assert ds[(0, 1)].global_view.shape == (3, 48, 64)
    assert ds[(1, 1)].global_view.shape == (3, 40, 50)
    # ... except so far that the crop fits
    big = ImageFolders(DataConfig(folders=[folder], crop_size=48, resolutions=(64,), random_flip=False))
    assert big[(1, 1)].global_view.shape == (3, 48, 60)


def test_resolution_mixture(tmp_path):
    folder = write_images(tmp_path / "p", n=1, size=(128, 128))
    ds = ImageFolders(DataConfig(folders=[folder], crop_size=16, resolutions=(32, 64, 128)))
    sizes = {ds[(0, s)].global_view.shape[-1] for s in range(40)}
    assert sizes == {32, 64, 128}


def test_step_stream_is_resumable_and_rank_disjoint():
    full = list(StepBatches(10, 3, seed=5, start=0, total=8))
    resumed = list(StepBatches(10, 3, seed=5, start=4, total=8))
    assert resumed == full[4:]
    r0 = StepBatches(10, 2, seed=5, start=0, total=5, rank=0, world=2)
    r1 = StepBatches(10, 2, seed=5, start=0, total=5, rank=1, world=2)
    for k0, k1 in zip(r0, r1):
        assert not {i for i, _ in k0} & {i for i, _ in k1}
    # every image once per epoch
    epoch = [i for keys in StepBatches(10, 5, seed=1, start=0, total=2) for i, _ in keys]
    assert sorted(epoch) == list(range(10))


def test_collate(tmp_path):
    folder = write_images(tmp_path / "p", n=2, size=(64, 64))
    ds = ImageFolders(DataConfig(folders=[folder], crop_size=32, resolutions=(64,)))
    batch = collate([ds[(0, 1)], ds[(1, 2)]])
    assert batch["hq"].shape == (2, 3, 32, 32) and len(batch["global"]) == 2
    assert batch["caption"] == ["a photo number 0", "a photo number 1"]
