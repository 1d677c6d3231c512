"""What is measured at a grid point, and under which names: the one place that defines the splits.

A measurement is named ``<split>_<quantity>`` (``train_loss``, ``test_acc``, ``train_hess_max``): the
paper code's names. An evaluator declares its measurements (name, dtype, per-point shape) before any
data moves; storage creates one dataset per measurement of the grid's shape followed by the per-point
shape, and every other part of the package reads the names from the file. Pure Python: importing this
module imports neither torch nor h5py.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

# The data splits a surface can be measured on, in the order they are evaluated and shown.
SPLITS = ("train", "test")
TRAIN, TEST = SPLITS
# Quantities in the order they are shown; others follow in alphabetical order.
QUANTITY_ORDER = ("loss", "acc")


@dataclass(frozen=True)
class Measurement:
    """One value (or array, of ``shape``) per grid point, stored as the dataset ``name``."""

    name: str
    dtype: str = "f8"
    shape: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "dtype": self.dtype, "shape": list(self.shape)}


def measurement_name(split: str, quantity: str) -> str:
    """``("train", "loss")`` -> ``"train_loss"``."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    return f"{split}_{quantity}"


def split_of(name: str) -> str:
    """The split of a measurement name (``"test_acc"`` -> ``"test"``); "" where it names none."""
    head, sep, _ = name.partition("_")
    return head if sep and head in SPLITS else ""


def quantity_of(name: str) -> str:
    """The quantity of a measurement name (``"train_hess_max"`` -> ``"hess_max"``)."""
    return name.partition("_")[2] if split_of(name) else name


def is_measurement_name(name: str) -> bool:
    return bool(split_of(name)) and bool(quantity_of(name))


def ordered(names) -> list[str]:
    """Measurement names in display order: by split, then loss, accuracy and the rest by name."""

    def key(name: str):
        quantity = quantity_of(name)
        rank = QUANTITY_ORDER.index(quantity) if quantity in QUANTITY_ORDER else len(QUANTITY_ORDER)
        split = split_of(name)
        return (SPLITS.index(split) if split in SPLITS else len(SPLITS), rank, quantity, name)

    return sorted(names, key=key)


def to_json(measurements) -> str:
    return json.dumps([m.as_dict() for m in measurements])


def from_json(text: str) -> list[Measurement]:
    return [Measurement(d["name"], d.get("dtype", "f8"), tuple(d.get("shape", ()))) for d in json.loads(text)]
