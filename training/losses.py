"""Losses of the robust-VAE fine-tuning: an LPIPS-style perceptual distance and a patch discriminator.

``PerceptualLoss`` is LPIPS (Zhang et al. 2018) written on torchvision
backbones: features at the LPIPS taps, unit-normalised over channels,
squared differences, optional learned per-channel weights (LPIPS's
``lin`` layers), spatial mean, sum over taps. Nothing is downloaded: the
backbone weights come from a file the user names (torchvision's
``vgg16-397923af.pth`` / ``alexnet-owt-7be5be79.pth``, or a safetensors copy);
the ``lin`` weights optionally from LPIPS's own ``vgg.pth`` / ``alex.pth``.
``random_init=True`` builds a random backbone — for tests and smoke runs
only (it still gives a useful multi-scale feature distance, but it is not LPIPS).

``PatchDiscriminator`` is the pix2pix/VQGAN N-layer PatchGAN with hinge
losses and VQGAN's adaptive weight.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

# LPIPS's ScalingLayer (inputs in [-1, 1])
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
# indices into torchvision's ``features`` after which LPIPS taps (relu outputs)
TAPS = {"vgg16": (3, 8, 15, 22, 29), "alexnet": (1, 4, 7, 9, 11)}


def _read_state_dict(path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"perceptual-loss weights '{path}' do not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    obj = torch.load(str(path), map_location="cpu", weights_only=True)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    return obj


class PerceptualLoss(nn.Module):
    def __init__(self, backbone: str = "vgg16", weights: str | None = None, lin_weights: str | None = None,
                 random_init: bool = False):
        super().__init__()
        import torchvision

        if backbone not in TAPS:
            raise ValueError(f"perceptual backbone must be one of {sorted(TAPS)}, got {backbone!r}")
        if weights is None and not random_init:
            raise ValueError(
                "the perceptual loss needs backbone weights: give `perceptual.weights` = a torchvision "
                f"{backbone} state dict file (e.g. {'vgg16-397923af.pth' if backbone == 'vgg16' else 'alexnet-owt-7be5be79.pth'}); "
                "they cannot be downloaded here. `perceptual.random_init: true` is for tests only")
        net = getattr(torchvision.models, backbone)(weights=None)
        if weights is not None:
            sd = _read_state_dict(weights)
            sd = {k: v for k, v in sd.items() if k.startswith("features.")}
            own = {k: v for k, v in net.state_dict().items() if k.startswith("features.")}
            missing = sorted(set(own) - set(sd))
            if missing:
                raise ValueError(f"'{weights}' is not a torchvision {backbone} state dict (missing {missing[:3]})")
            net.load_state_dict(sd, strict=False)
        taps = TAPS[backbone]
        self.features = net.features[: taps[-1] + 1]
        self.taps = set(taps)
        widths = [m.out_channels for m in self.features if isinstance(m, nn.Conv2d)]
        conv_at = [i for i, m in enumerate(self.features) if isinstance(m, nn.Conv2d)]
        tap_widths = [widths[max(j for j, c in enumerate(conv_at) if c < t)] for t in taps]
        self.lins = nn.ParameterList([nn.Parameter(torch.ones(w), requires_grad=False) for w in tap_widths])
        if lin_weights is not None:
            sd = _read_state_dict(lin_weights)
            for i in range(len(taps)):
                key = f"lin{i}.model.1.weight"
                if key not in sd:
                    raise ValueError(f"'{lin_weights}' is not an LPIPS weight file (no {key})")
                self.lins[i].data.copy_(sd[key].flatten())
        self.register_buffer("shift", torch.tensor(_SHIFT).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("scale", torch.tensor(_SCALE).view(1, 3, 1, 1), persistent=False)
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True):  # always frozen, always eval
        return super().train(False)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-image distance of images in [-1, 1]: (B,)."""
        h = torch.cat([x, y]).float()
        h = (h - self.shift) / self.scale
        total = 0.0
        k = 0
        for i, layer in enumerate(self.features):
            h = layer(h)
            if i in self.taps:
                a, b = h.chunk(2)
                a = a / (a.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                b = b / (b.pow(2).sum(1, keepdim=True).sqrt() + 1e-10)
                d = ((a - b) ** 2 * self.lins[k].view(1, -1, 1, 1)).sum(1)
                total = total + d.mean(dim=(1, 2))
                k += 1
        return total


class PatchDiscriminator(nn.Module):
    """N-layer PatchGAN (pix2pix / VQGAN): conv 4×4 stride 2 blocks, BatchNorm-free (GroupNorm) for small batches."""

    def __init__(self, in_channels: int = 3, width: int = 64, layers: int = 3):
        super().__init__()
        seq = [nn.Conv2d(in_channels, width, 4, 2, 1), nn.LeakyReLU(0.2, True)]
        ch = width
        for n in range(1, layers + 1):
            out = width * min(2 ** n, 8)
            stride = 1 if n == layers else 2
            seq += [nn.Conv2d(ch, out, 4, stride, 1, bias=False), nn.GroupNorm(min(32, out // 4), out),
                    nn.LeakyReLU(0.2, True)]
            ch = out
        seq += [nn.Conv2d(ch, 1, 4, 1, 1)]
        self.net = nn.Sequential(*seq)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, 0.0, 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def hinge_d_loss(real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    return 0.5 * (F.relu(1.0 - real).mean() + F.relu(1.0 + fake).mean())


def adaptive_weight(rec_loss: torch.Tensor, g_loss: torch.Tensor, layer: torch.Tensor, max_weight: float = 1e4):
    """VQGAN: balance the GAN gradient against the reconstruction gradient at ``layer``."""
    rec = torch.autograd.grad(rec_loss, layer, retain_graph=True)[0]
    gan = torch.autograd.grad(g_loss, layer, retain_graph=True)[0]
    return (rec.norm() / (gan.norm() + 1e-4)).clamp(0.0, max_weight).detach()
