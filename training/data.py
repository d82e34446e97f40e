"""Training images: folders of HQ photos, optional captions, a global-local sampler.

Each sample is one HQ photo at one of several source resolutions (the
1k/2k/4k mixture of dpir-reference §5), a local crop of ``crop_size`` to
restore and the surrounding (resized) photo as its global context. Which
photo, which resolution and which crop are functions of ``(seed, step,
rank)`` only, so a run resumed at step N sees exactly the batches an
uninterrupted run sees, and every process of a distributed run sees other
photos.
"""
from __future__ import annotations

import hashlib
import logging
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

log = logging.getLogger("dpir.training")

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class DataConfig:
    folders: list = field(default_factory=list)       # one or more folders, searched recursively
    crop_size: int = 1024                              # the local crop to restore (pixels, square)
    # source resolutions: the photo is resized so its LONG side is one of these (never upscaled beyond
    # its own size unless allow_upscale); "native" keeps it as is
    resolutions: tuple = (1024, 2048, 4096)
    resolution_probs: tuple | None = None              # default: uniform
    allow_upscale: bool = False
    caption_extension: str = ".txt"
    default_caption: str = ""
    global_context: bool = True                        # False: the global view is the crop itself
    num_workers: int = 0
    random_flip: bool = True


def _seed(*parts) -> int:
    h = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(h[:8], "little") & 0x7FFF_FFFF_FFFF_FFFF


def step_seed(seed: int, step: int, rank: int, what: str) -> int:
    """The seed of one random draw of one step on one process (resumable, rank-distinct)."""
    return _seed(seed, step, rank, what)


def find_images(folders) -> list[Path]:
    paths = []
    for folder in folders:
        folder = Path(folder)
        if not folder.is_dir():
            raise FileNotFoundError(f"training image folder '{folder}' does not exist")
        paths += sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    return paths


def _load_rgb(path: Path) -> torch.Tensor:
    from PIL import Image
    import numpy as np

    with Image.open(path) as im:
        im.load()
        arr = np.asarray(im.convert("RGB"), dtype=np.uint8).copy()
    return torch.from_numpy(arr).permute(2, 0, 1).float() / 255


@dataclass
class Sample:
    local: torch.Tensor       # (3, crop, crop) in [0, 1]
    global_view: torch.Tensor  # (3, H, W): the whole photo at the drawn source resolution
    caption: str
    path: str
    box: tuple                # (top, left, size) of the crop inside global_view


class ImageFolders(torch.utils.data.Dataset):
    """All readable images of the folders. Unreadable files are skipped with a warning and counted.

    Files are probed once (header only) when the dataset is built;
    ``skipped`` lists what was left out and why.
    """

    def __init__(self, cfg: DataConfig, seed: int = 0, probe: bool = True):
        from PIL import Image

        self.cfg, self.seed = cfg, seed
        self.paths: list[Path] = []
        self.sizes: list[tuple[int, int]] = []
        self.skipped: list[tuple[str, str]] = []
        for path in find_images(cfg.folders):
            try:
                with Image.open(path) as im:
                    if probe:
                        im.verify()
                    w, h = im.size
            except Exception as e:  # PIL raises many kinds for broken files
                self.skipped.append((str(path), f"{type(e).__name__}: {e}"))
                continue
            if min(w, h) < cfg.crop_size and not cfg.allow_upscale:
                # still usable: upscaled to the crop size (said once per file in the summary)
                pass
            self.paths.append(path)
            self.sizes.append((h, w))
        if self.skipped:
            msg = (f"skipped {len(self.skipped)} unreadable image file(s), e.g. {self.skipped[0][0]} "
                   f"({self.skipped[0][1]})")
            warnings.warn(msg)
            log.warning(msg)
        if not self.paths:
            raise FileNotFoundError(f"no readable images in {list(map(str, cfg.folders))} "
                                    f"(looked for {', '.join(IMAGE_SUFFIXES)})")

    def __len__(self) -> int:
        return len(self.paths)

    def caption(self, index: int) -> str:
        txt = self.paths[index].with_suffix(self.cfg.caption_extension)
        if txt.is_file():
            return txt.read_text(encoding="utf-8", errors="replace").strip()
        return self.cfg.default_caption

    def __getitem__(self, key) -> Sample:
        """``key`` = (image index, sample seed)."""
        index, seed = key
        cfg = self.cfg
        g = torch.Generator().manual_seed(seed)
        try:
            img = _load_rgb(self.paths[index])
        except Exception as e:  # became unreadable after probing: use a deterministic substitute
            warnings.warn(f"could not read {self.paths[index]} ({e}); using another image for this sample")
            return self[((index + 1) % len(self), seed)]
        h, w = img.shape[-2:]
        # source resolution
        res = list(cfg.resolutions)
        probs = torch.tensor(cfg.resolution_probs or [1.0] * len(res), dtype=torch.float64)
        target = res[int(torch.multinomial(probs / probs.sum(), 1, generator=g))]
        if target != "native":
            scale = int(target) / max(h, w)
            if scale < 1 or cfg.allow_upscale:
                img = _resize(img, round(h * scale), round(w * scale))
        # the crop must fit: upscale the short side to the crop size if needed
        h, w = img.shape[-2:]
        c = cfg.crop_size
        if min(h, w) < c:
            s = c / min(h, w)
            img = _resize(img, max(c, round(h * s)), max(c, round(w * s)))
            h, w = img.shape[-2:]
        if cfg.random_flip and torch.rand((), generator=g) < 0.5:
            img = img.flip(-1)
        top = int(torch.randint(0, h - c + 1, (), generator=g))
        left = int(torch.randint(0, w - c + 1, (), generator=g))
        local = img[:, top:top + c, left:left + c].contiguous()
        global_view = img if cfg.global_context else local
        return Sample(local, global_view, self.caption(index), str(self.paths[index]), (top, left, c))


def _resize(img: torch.Tensor, h: int, w: int) -> torch.Tensor:
    return F.interpolate(img[None], size=(max(1, h), max(1, w)), mode="bicubic", antialias=True,
                         align_corners=False)[0].clamp(0, 1)


class StepBatches(torch.utils.data.Sampler):
    """Yields, for steps ``start .. total-1``, this process's batch keys ``[(index, sample seed), ...]``.

    Step s covers positions ``[s*B*world + rank*B, ...)`` of an endless stream
    of epoch permutations (one permutation per epoch, drawn from the seed), so
    processes never share a photo within a step and a resumed run continues
    the same stream.
    """

    def __init__(self, n: int, batch: int, seed: int, start: int, total: int, rank: int = 0, world: int = 1):
        self.n, self.batch, self.seed = n, batch, seed
        self.start, self.total, self.rank, self.world = start, total, rank, world
        self._perms: dict[int, list[int]] = {}

    def _perm(self, epoch: int) -> list[int]:
        if epoch not in self._perms:
            g = torch.Generator().manual_seed(_seed(self.seed, "epoch", epoch))
            self._perms = {epoch: torch.randperm(self.n, generator=g).tolist()}
        return self._perms[epoch]

    def keys(self, step: int) -> list[tuple[int, int]]:
        first = (step * self.world + self.rank) * self.batch
        out = []
        for pos in range(first, first + self.batch):
            out.append((self._perm(pos // self.n)[pos % self.n], _seed(self.seed, "sample", pos)))
        return out

    def __iter__(self):
        for step in range(self.start, self.total):
            yield self.keys(step)

    def __len__(self) -> int:
        return max(0, self.total - self.start)


def collate(samples: list[Sample]) -> dict:
    return {
        "hq": torch.stack([s.local for s in samples]),
        "global": [s.global_view for s in samples],
        "caption": [s.caption for s in samples],
        "path": [s.path for s in samples],
        "box": [s.box for s in samples],
    }


def make_loader(dataset: ImageFolders, batch: int, seed: int, start: int, total: int, rank: int = 0,
                world: int = 1, num_workers: int = 0):
    sampler = StepBatches(len(dataset), batch, seed, start, total, rank, world)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, collate_fn=collate,
                                       num_workers=num_workers, persistent_workers=False)
