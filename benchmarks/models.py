"""Models and data of the benchmarks, usable from ``dsurf run`` as ``--model benchmarks/models.py:NAME``.

- ``resnet20`` / ``cifar_like_data``: a CIFAR-style ResNet-20 (He et al. 2016: 3 stages of 3 basic
  blocks, 16/32/64 channels, BatchNorm, 0.27 M parameters, 41 M multiply-adds per image) with seeded
  random weights and non-trivial BatchNorm statistics, on 10,000 synthetic 32×32×3 images in 10 classes
  (CIFAR-10's size; the values do not matter for speed, only the shapes).
- ``sleepy_model`` / ``sleepy_data``: a stand-in evaluator for the scaling benchmark. Its forward()
  sleeps ``DSURF_BENCH_SLEEP`` seconds (default 0.05) per call, twice that on the rank named by
  ``DSURF_BENCH_SLOW_RANK`` (default 1, read from ``OMPI_COMM_WORLD_RANK``), so that with
  ``--max-samples 4 --batch-size 4 --vmap off`` one grid point costs one sleep and the real engine's
  coordination, messaging and file writes are what is measured.
- ``patch_model`` / ``large_images``: data larger than one would hold in memory, for the streamed-data
  benchmark: ``DSURF_BENCH_STREAM_GIB`` GiB (default 2) of 3×224×224 float32 images, each made from its
  index on every read (deterministic, nothing on disk), and a cheap model of them (a strided 16×16
  patch convolution, pooled, and a linear head).
"""

from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F
from torch import nn

CIFAR_SAMPLES = 10_000


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class ResNet20(nn.Module):
    def __init__(self, num_classes: int = 10, blocks: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn = nn.BatchNorm2d(16)
        layers, cin = [], 16
        for cout, stride in ((16, 1), (32, 2), (64, 2)):
            for k in range(blocks):
                layers.append(BasicBlock(cin, cout, stride if k == 0 else 1))
                cin = cout
        self.layers = nn.Sequential(*layers)
        self.fc = nn.Linear(64, num_classes)

    def forward(self, x):
        x = F.relu(self.bn(self.conv(x)))
        x = self.layers(x)
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def resnet20() -> nn.Module:
    """ResNet-20 with seeded weights (the same θ0 on every rank) and BatchNorm statistics that are not
    the identity."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(20)
        model = ResNet20()
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.weight.data.uniform_(0.8, 1.2)
                module.bias.data.normal_(0.0, 0.05)
                module.running_mean.normal_(0.0, 0.05)
                module.running_var.uniform_(0.8, 1.2)
    return model.eval()


def cifar_like_data(n: int = CIFAR_SAMPLES) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` synthetic normalised 3×32×32 images and labels in 10 classes."""
    generator = torch.Generator().manual_seed(10)
    return torch.randn(n, 3, 32, 32, generator=generator), torch.randint(0, 10, (n,), generator=generator)


class Sleepy(nn.Module):
    """A tiny linear model whose forward() sleeps: a stand-in for a GPU evaluating a point."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(8, 4)
        rank = int(os.environ.get("OMPI_COMM_WORLD_RANK", os.environ.get("PMIX_RANK", "0")))
        slow = int(os.environ.get("DSURF_BENCH_SLOW_RANK", "1"))
        self.seconds = float(os.environ.get("DSURF_BENCH_SLEEP", "0.05")) * (2.0 if rank == slow else 1.0)

    def forward(self, x):
        time.sleep(self.seconds)
        return self.fc(x)


def sleepy_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        return Sleepy()


def sleepy_data() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(64, 8, generator=generator), torch.randint(0, 4, (64,), generator=generator)


class PatchModel(nn.Module):
    def __init__(self):
        super().__init__()
        self.patches = nn.Conv2d(3, 8, 16, stride=16)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        return self.head(F.adaptive_avg_pool2d(F.relu(self.patches(x)), 1).flatten(1))


def patch_model() -> nn.Module:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return PatchModel().eval()


class LargeImages(torch.utils.data.Dataset):
    """Images made from their index: the same on every read, never all in memory."""

    shape = (3, 224, 224)

    def __init__(self, gib: float):
        self.count = int(gib * 2**30 // (4 * 3 * 224 * 224))

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        generator = torch.Generator().manual_seed(index)
        return torch.randn(self.shape, generator=generator), index % 10


def large_images() -> LargeImages:
    return LargeImages(float(os.environ.get("DSURF_BENCH_STREAM_GIB", "2")))

