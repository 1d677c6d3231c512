"""The built-in example: a small CNN with BatchNorm trained on scikit-learn's bundled digits data
(1,797 8×8 images, no download), split at random into 1,437 training and 360 held-out test images.
Trained once on the training split, in a few seconds on a CPU, and cached."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import torch
from torch import nn

CACHE_VERSION = 2  # 2: trained on the training split only
SEED = 0
EPOCHS = 12
BATCH_SIZE = 64
LEARNING_RATE = 3e-3
TEST_SAMPLES = 360  # a fifth of the digits, held out


def _split_indices() -> tuple[torch.Tensor, torch.Tensor]:
    """The training and test samples' indices into the digits, each in ascending order (seeded)."""
    order = torch.randperm(1797, generator=torch.Generator().manual_seed(SEED))
    return order[TEST_SAMPLES:].sort().values, order[:TEST_SAMPLES].sort().values


def digits_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The digits as (inputs (N, 1, 8, 8) float32 in [0, 1], targets (N,) int64)."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:  # pragma: no cover - the set-up installs it
        raise ImportError("the built-in example needs scikit-learn: pip install scikit-learn") from exc
    digits = load_digits()
    inputs = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16.0
    targets = torch.tensor(digits.target, dtype=torch.int64)
    return inputs, targets


def digits_train_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The 1,437 training digits: what the example network is trained on, and the default data."""
    inputs, targets = digits_data()
    train, _ = _split_indices()
    return inputs[train], targets[train]


def digits_test_data() -> tuple[torch.Tensor, torch.Tensor]:
    """The 360 held-out test digits (``dsurf run --test-data distributed_surface.example:digits_test_data``)."""
    inputs, targets = digits_data()
    _, test = _split_indices()
    return inputs[test], targets[test]


def digits_cnn() -> nn.Module:
    """The untrained example network."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(32 * 4 * 4, 10),
    )


def cache_path() -> Path:
    root = os.environ.get("DSURF_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "distributed_surface"
    )
    return Path(root) / f"digits_cnn-v{CACHE_VERSION}-torch{torch.__version__.split('+')[0]}.pt"


def trained_digits_cnn() -> nn.Module:
    """The example network with trained weights, from the cache or trained now and cached."""
    model = digits_cnn()
    path = cache_path()
    if path.is_file():
        try:
            model.load_state_dict(torch.load(path, map_location="cpu", weights_only=True))
            return model
        except Exception:  # a damaged cache is retrained, not fatal
            pass
    train(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    # Several MPI ranks may train at once: each writes its own temporary file and renames it into place.
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as handle:
        torch.save(model.state_dict(), handle)
    os.replace(handle.name, path)
    return model


def train(
    model: nn.Module, epochs: int = EPOCHS, seed: int = SEED, after_epoch=None, batch_size: int = BATCH_SIZE,
    lr: float = LEARNING_RATE,
) -> None:
    """Train deterministically on the training split with Adam: fixed seed, one thread (so every
    machine and rank gets the same θ0). ``after_epoch(epoch, model)`` is called after each epoch (from
    1). ``batch_size`` and ``lr``: the paper's small-against-large-batch comparison trains with others."""
    inputs, targets = digits_train_data()
    generator = torch.Generator().manual_seed(seed)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters"):
                module.reset_parameters()
        optimizer = torch.optim.Adam(model.parameters(), lr=lr)
        model.train()
        for epoch in range(1, epochs + 1):
            order = torch.randperm(len(inputs), generator=generator)
            for batch in order.split(batch_size):
                optimizer.zero_grad()
                loss = nn.functional.cross_entropy(model(inputs[batch]), targets[batch])
                loss.backward()
                optimizer.step()
            if after_epoch is not None:
                model.eval()
                after_epoch(epoch, model)
                model.train()
        model.eval()
    finally:
        torch.set_num_threads(threads)


def main(argv=None) -> int:
    """``python -m distributed_surface.example --seed 1 --out b.pt [--epochs-to DIR]``: train the example
    network with another seed (another minimum, for --to and --plane) and save it; with
    ``--epochs-to DIR``, save every epoch's weights there too (a trajectory, for --trajectory); with
    ``--batch-size`` (and ``--lr``), another batch size (small against large batches, as the paper)."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m distributed_surface.example", description=main.__doc__)
    parser.add_argument("--seed", type=int, default=SEED, help=f"training seed (default {SEED}: the built-in model)")
    parser.add_argument("--epochs", type=int, default=EPOCHS, help=f"epochs (default {EPOCHS})")
    parser.add_argument("--out", required=True, help="where to save the trained state_dict")
    parser.add_argument("--batch-size", dest="batch_size", type=int, default=BATCH_SIZE,
                        help=f"training batch size (default {BATCH_SIZE})")  # fmt: skip
    parser.add_argument("--lr", type=float, default=LEARNING_RATE, help=f"Adam's learning rate (default {LEARNING_RATE:g})")
    parser.add_argument("--epochs-to", dest="epochs_to", metavar="DIR", help="also save epoch_<N>.pt after each epoch here")
    args = parser.parse_args(argv)
    if args.batch_size < 1 or not args.lr > 0:
        parser.error("--batch-size must be at least 1 and --lr positive")
    folder = Path(args.epochs_to) if args.epochs_to else None
    if folder is not None:
        folder.mkdir(parents=True, exist_ok=True)

    def save_epoch(epoch, model):
        torch.save(model.state_dict(), folder / f"epoch_{epoch}.pt")

    model = digits_cnn()
    train(model, args.epochs, args.seed, save_epoch if folder is not None else None, batch_size=args.batch_size, lr=args.lr)
    torch.save(model.state_dict(), args.out)
    print(f"saved {args.out}" + (f" and {args.epochs} epochs in {folder}/" if folder is not None else ""))
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
