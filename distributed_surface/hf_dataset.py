"""Data sets saved with ``datasets``' ``save_to_disk``: ``--data hf-dataset:PATH``.

``PATH`` is the folder of one ``Dataset``. A ``DatasetDict``'s folder holds one such folder a split, so
a split is named by its path (``hf-dataset:PATH/train``); the ``DatasetDict``'s own folder is refused in
one line that names its splits.

Two kinds of data set are read:

* **Already tokenised**: an ``input_ids`` column (with ``attention_mask`` and ``token_type_ids`` where
  it has them) is used as it is, and the targets are its ``labels`` column, or its ``label`` column (a
  sequence classifier's, by the ``datasets`` convention) as ``labels``; a causal LM's data set without
  either takes ``labels`` = ``input_ids`` (the ``causal_lm`` loss shifts them). Rows of unequal length
  are padded on the right to the longest, as ``transformers``' ``DataCollatorWithPadding`` pads: the
  ``attention_mask`` is 0 on the padding (made, where the data set has none), ``input_ids`` hold the
  model config's ``pad_token_id`` (else 0), ``token_type_ids`` 0 and token ``labels`` -100 (ignored), so
  a model that honours its attention mask computes the loss it would on the rows unpadded. A ragged
  column that the mask cannot cover (``labels`` of a length other than its row's ``input_ids``) is
  refused.
* **Raw text**, for a causal LM: the ``--text-field`` column (default ``text``) is tokenised, joined
  and cut into blocks exactly as a ``text:`` corpus is, and cached the same way, keyed by the data set's
  files (:func:`.text.blocks_of`).

``datasets`` (and ``pyarrow``) are imported only to read such a data set.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from . import hf, text
from .core.errors import UserError, first_line

PREFIX = text.DATASET_PREFIX
INPUT_COLUMNS = ("input_ids", "attention_mask", "token_type_ids")
LABEL_COLUMNS = ("labels", "label")  # the first the data set has is the targets, as 'labels'
IGNORED_LABEL = -100  # a token label the losses skip (torch's ignore_index)


def is_dataset_spec(spec) -> bool:
    """Whether ``--data``/``--test-data`` names a saved data set (``hf-dataset:PATH``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


def dataset_folder(spec: str, flag: str) -> tuple[Path, list[Path]]:
    """The data set's folder and its files (what its cache key and the preflight look at); a folder that
    is missing, a ``DatasetDict``'s, or not one ``save_to_disk`` wrote is refused in one line."""
    folder = Path(spec[len(PREFIX) :])
    if not folder.is_dir():
        raise UserError(f"{flag} {spec!r}: no such folder (a data set saved with datasets' save_to_disk)")
    splits_file = folder / "dataset_dict.json"
    if splits_file.is_file():
        try:
            splits = [str(s) for s in json.loads(splits_file.read_text())["splits"]]
        except (OSError, ValueError, KeyError, TypeError):
            splits = sorted(p.name for p in folder.iterdir() if (p / "state.json").is_file())
        example = f"{PREFIX}{folder / splits[0]}" if splits else f"{PREFIX}{folder}/SPLIT"
        raise UserError(
            f"{flag} {spec!r}: a DatasetDict with the splits {', '.join(splits) or '(none)'}: name one by its folder, e.g. {example}"
        )
    if not (folder / "state.json").is_file() or not (folder / "dataset_info.json").is_file():
        raise UserError(f"{flag} {spec!r}: not a folder saved by datasets' save_to_disk (no state.json and dataset_info.json)")
    return folder, sorted(p for p in folder.iterdir() if p.is_file())


def load(spec: str, flag: str, *, reading: text.Reading | None, task: str | None = None, pad_token_id: int = 0) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """The data set ``hf-dataset:PATH`` as a dict of tensors with ``labels``: its tokenised columns, or its
    text column's blocks (``reading``: how text becomes blocks; None where nothing says it). ``task``:
    the model folder's task (None for a model from an import string)."""
    folder, files = dataset_folder(spec, flag)
    dataset = _load_from_disk(folder, spec, flag)
    columns = set(dataset.column_names)
    if "input_ids" in columns:
        return _tokenised(dataset, spec, flag, causal=task == hf.CAUSAL_LM, pad_token_id=pad_token_id)
    field = reading.text_field if reading is not None else "text"
    if field not in columns:
        raise UserError(
            f"{flag} {spec!r}: no column {field!r} (--text-field) and no 'input_ids' column; it has {_named(dataset.column_names)}"
        )
    if task not in (None, hf.CAUSAL_LM):
        raise UserError(
            f"{flag} {spec!r}: a text column is cut into blocks for causal language models; tokenise it for a {task} model "
            "(input_ids, with its labels)"
        )
    if reading is None or reading.tokenizer is None or reading.seq_len is None:
        raise UserError(f"{flag} {spec!r}: its text column needs a tokenizer and a block length (--tokenizer, --seq-len)")
    column = dataset.data.column(field)
    if not _is_string(column.type):
        raise UserError(f"{flag} {spec!r}: the column {field!r} holds {column.type}, not text")
    return text.blocks_of(folder, files, lambda: (s for s in column.to_pylist() if s is not None), reading, spec, flag)


def _load_from_disk(folder: Path, spec: str, flag: str):
    try:
        import datasets
    except ImportError:
        raise UserError(f"{flag} {spec!r}: reading a saved data set needs the 'datasets' package (pip install datasets)") from None
    try:
        dataset = datasets.load_from_disk(str(folder))
    except Exception as exc:  # a damaged arrow file, a state.json of another version: datasets raises many kinds
        raise UserError(f"{flag} {spec!r}: datasets cannot load it: {first_line(exc)}") from None
    if not isinstance(dataset, datasets.Dataset):
        raise UserError(f"{flag} {spec!r}: holds a {type(dataset).__name__}, not a Dataset")
    if len(dataset) == 0:
        raise UserError(f"{flag} {spec!r} holds no samples")
    return dataset


def _tokenised(dataset, spec: str, flag: str, *, causal: bool, pad_token_id: int) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """The columns the model takes, and its targets as ``labels``, padded as the module says."""
    import torch

    table = dataset.data
    # (a select()ed or shuffled Dataset keeps an indices mapping over its table: apply it)
    if getattr(dataset, "_indices", None) is not None:
        dataset = dataset.flatten_indices()
        table = dataset.data
    names = [c for c in INPUT_COLUMNS if c in dataset.column_names]
    label = next((c for c in LABEL_COLUMNS if c in dataset.column_names), None)
    if label is None and not causal:
        raise UserError(
            f"{flag} {spec!r}: no 'labels' or 'label' column to take the targets from; it has {_named(dataset.column_names)}"
        )
    ids, lengths = _rows(table.column("input_ids"), spec, flag, "input_ids")
    width = int(lengths.max())
    ragged = bool((lengths != width).any())
    if ragged and "attention_mask" not in names:
        names.insert(1, "attention_mask")
    out = {}
    for name in names:
        if name == "attention_mask" and name not in dataset.column_names:
            values = np.arange(width)[None, :] < lengths[:, None]
        else:
            values = _padded(table.column(name), lengths, width, pad=pad_token_id if name == "input_ids" else 0,
                             spec=spec, flag=flag, name=name)  # fmt: skip
        out[name] = torch.from_numpy(np.ascontiguousarray(values.astype(np.int64)))
    if label is None:  # a causal LM's own tokens, the padding ignored
        targets = np.where(np.arange(width)[None, :] < lengths[:, None], out["input_ids"].numpy(), IGNORED_LABEL)
        out["labels"] = torch.from_numpy(targets)
    else:
        out["labels"] = _labels(table.column(label), lengths, width, spec, flag, label)
    return out


def _rows(column, spec: str, flag: str, name: str):
    """A list column's values (flat) and each row's length; a column that is not a list of numbers, or
    has a missing row, is refused."""
    import pyarrow as pa
    import pyarrow.compute as pc

    column = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if not _is_list(column.type) or not _is_number(column.type.value_type):
        raise UserError(f"{flag} {spec!r}: the column {name!r} holds {column.type}, not a list of numbers a row")
    if column.null_count:
        raise UserError(f"{flag} {spec!r}: the column {name!r} has {column.null_count} missing row(s)")
    return column.flatten().to_numpy(zero_copy_only=False), pc.list_value_length(column).to_numpy(zero_copy_only=False).astype(np.int64)


def _padded(column, lengths: np.ndarray, width: int, *, pad, spec: str, flag: str, name: str) -> np.ndarray:
    """A list column as an ``(N, width)`` array, its rows padded on the right with ``pad``; its rows must
    be as long as ``input_ids``'."""
    values, own = _rows(column, spec, flag, name)
    if not np.array_equal(own, lengths):
        row = int(np.nonzero(own != lengths)[0][0])
        raise UserError(f"{flag} {spec!r}: row {row}'s {name!r} has {own[row]} values, its 'input_ids' {lengths[row]}")
    out = np.full((len(lengths), width), pad, dtype=values.dtype)
    out[np.arange(width)[None, :] < lengths[:, None]] = values
    return out


def _labels(column, lengths: np.ndarray, width: int, spec: str, flag: str, name: str) -> "torch.Tensor":  # noqa: F821
    """One target a row (a class, or a number for a regression), or one a token (padded with -100)."""
    import pyarrow as pa
    import torch

    kind = column.type
    if _is_list(kind):
        if not pa.types.is_integer(kind.value_type):
            raise UserError(f"{flag} {spec!r}: the column {name!r} holds {kind}; token labels are integers")
        return torch.from_numpy(_padded(column, lengths, width, pad=IGNORED_LABEL, spec=spec, flag=flag, name=name).astype(np.int64))
    if not _is_number(kind):
        raise UserError(f"{flag} {spec!r}: the column {name!r} holds {kind}, not class labels or numbers")
    if column.null_count:
        raise UserError(f"{flag} {spec!r}: the column {name!r} has {column.null_count} missing row(s)")
    values = column.to_numpy()
    return torch.from_numpy(values.astype(np.int64 if np.issubdtype(values.dtype, np.integer) else np.float32))


def _is_number(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_integer(kind) or pa.types.is_floating(kind) or pa.types.is_boolean(kind)


def _is_list(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_list(kind) or pa.types.is_large_list(kind) or pa.types.is_fixed_size_list(kind)


def _is_string(kind) -> bool:
    import pyarrow as pa

    return pa.types.is_string(kind) or pa.types.is_large_string(kind)


def _named(columns) -> str:
    return ", ".join(repr(c) for c in columns) or "no columns"
