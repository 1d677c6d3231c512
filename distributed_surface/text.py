"""Text corpora as blocks of tokens for a causal language model: ``--data text:PATH``.

A corpus is a ``.txt`` file (one document), a ``.jsonl`` file (one document a line, its text under
``--text-field``), or a folder of them (read in sorted order). The documents are tokenised (with no
special tokens of their own), joined with the tokenizer's end-of-text token, and cut into blocks of
``--seq-len`` tokens; the last, partial block is dropped. Each block is a sample: ``input_ids`` and,
as ``labels``, the same tokens (the ``causal_lm`` loss shifts them).

The blocks are cached beside the corpus (or in ``--cache-dir``) under the sha256 of the corpus's bytes,
the tokenizer's files and these settings, so a later run tokenises nothing; a folder the cache cannot
be written to leaves the blocks in memory, with a warning. ``transformers`` is imported only to
tokenise.
"""

from __future__ import annotations

import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import hf
from .core.errors import UserError, first_line
from .storage.atomic import publish, remove, temporary_path

PREFIX = "text:"
# A saved data set's prefix (:mod:`.hf_dataset`, which builds on this module, reads them; its text
# column takes the settings below too).
DATASET_PREFIX = "hf-dataset:"
SUFFIXES = (".txt", ".jsonl")
# Raised when the blocks' layout changes, so that no older cache is read as a newer one.
# (2: the tokenizer's own tokenizer_config.json enters the key; version 1 left it out.)
CACHE_VERSION = 2
# The files of a tokenizer folder that are not the tokenizer's: a model folder's weights (by suffix) and
# its configs (by exact name: tokenizer_config.json, which holds e.g. the end-of-text token, IS the
# tokenizer's).
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".h5", ".msgpack", ".index.json", ".npy")
_MODEL_CONFIGS = {"config.json", "generation_config.json"}


def is_corpus_spec(spec) -> bool:
    """Whether ``--data``/``--test-data`` names a text corpus (``text:PATH``)."""
    return isinstance(spec, str) and spec.startswith(PREFIX)


@dataclass(frozen=True)
class Reading:
    """How a corpus becomes blocks: the tokenizer's folder, the block length, the ``.jsonl`` field, where
    the cache goes (None: beside the corpus), and the model's embedding rows (no token may reach them)."""

    tokenizer: str
    seq_len: int
    text_field: str = "text"
    cache_dir: str | None = None
    vocabulary: int | None = None


def _reads_text(spec) -> bool:
    """Whether a data spec may be read through a tokenizer: a corpus, or a saved data set (whose text
    column, if it has one, is)."""
    return is_corpus_spec(spec) or (isinstance(spec, str) and spec.startswith(DATASET_PREFIX))


def check_settings(problem) -> None:
    """Refuse the text settings where no ``text:`` (or ``hf-dataset:``) data reads them, ``text:`` data
    for a model that is not a causal LM, and ``text:`` data with nothing to say its tokenizer or block
    length."""
    if not any(_reads_text(spec) for spec in (problem.data, problem.test_data)):
        for name in ("tokenizer", "seq_len", "cache_dir"):
            if getattr(problem, name) is not None:
                raise UserError(f"--{name.replace('_', '-')} needs --data text:PATH (a text corpus) or hf-dataset:PATH")
        if problem.text_field != "text":
            raise UserError("--text-field needs --data text:PATH (a .jsonl corpus) or hf-dataset:PATH")
        return
    corpora = [spec for spec in (problem.data, problem.test_data) if is_corpus_spec(spec)]
    if not corpora:
        return  # (a saved data set's columns, read when it is loaded, say whether it needs these)
    folder = hf.is_folder_spec(problem.model)
    if folder and problem.hf_task != hf.CAUSAL_LM:
        raise UserError(
            f"--data {corpora[0]!r}: text data is for causal language models; a {problem.hf_task} model's labels "
            "are not in a text file"
        )
    if not folder and problem.tokenizer is None:
        raise UserError(f"--data {corpora[0]!r}: say which tokenizer with --tokenizer DIR (or load the model with --model hf:DIR)")
    if not folder and problem.seq_len is None:
        raise UserError(f"--data {corpora[0]!r}: say the block length with --seq-len N")


def implied(given: dict) -> dict:
    """``--seq-len`` where a model folder's corpus (or a causal LM's saved data set, which may hold text)
    does not give it: the model's maximum positions, at most :data:`~.hf.MAX_DEFAULT_POSITIONS`; a given
    one is refused above that maximum."""
    specs = [given.get(k) for k in ("data", "test_data")]
    reads = any(is_corpus_spec(s) for s in specs) or (
        given.get("hf_task") == hf.CAUSAL_LM and any(_reads_text(s) for s in specs)
    )
    if not hf.is_folder_spec(given.get("model")) or not reads:
        return given
    spec = given["model"]
    most = hf.max_positions(hf.read_config(spec))
    given = dict(given)
    if "seq_len" not in given:
        if most is None:
            raise UserError(f"{spec}: its config.json gives no maximum positions: say the block length with --seq-len N")
        given["seq_len"] = min(most, hf.MAX_DEFAULT_POSITIONS)
    elif most is not None and isinstance(given["seq_len"], int) and given["seq_len"] > most:
        raise UserError(f"--seq-len {given['seq_len']}: above the model's maximum positions ({most})")
    return given


def corpus_files(spec: str, flag: str) -> tuple[Path, list[Path]]:
    """The corpus's path and its files, in the order they are read."""
    path = Path(spec[len(PREFIX) :])
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix in SUFFIXES)
        if not files:
            raise UserError(f"{flag} {spec!r}: the folder holds no {' or '.join(SUFFIXES)} files")
        return path, files
    if not path.is_file():
        raise UserError(f"{flag} {spec!r}: no such file or folder")
    if path.suffix not in SUFFIXES:
        raise UserError(f"{flag} {spec!r}: a corpus is a {' or '.join(SUFFIXES)} file, or a folder of them")
    return path, [path]


def _tokenizer_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir()
                  if p.is_file() and p.name not in _MODEL_CONFIGS and not p.name.endswith(_WEIGHT_SUFFIXES))


def cache_key(root: Path, files: list[Path], tokenizer: Path, reading: Reading) -> str:
    """The sha256 of what decides the blocks: the corpus's files (names and bytes), the tokenizer's files
    and the settings."""
    digest = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "seq_len": reading.seq_len, "text_field": reading.text_field}).encode())
    for kind, base, paths in (("corpus", root if root.is_dir() else root.parent, files), ("tokenizer", tokenizer, _tokenizer_files(tokenizer))):
        for path in paths:
            digest.update(f"{kind}:{path.relative_to(base)}:{path.stat().st_size}\0".encode())
            with path.open("rb") as handle:
                for block in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(block)
    return digest.hexdigest()


def load_blocks(spec: str, reading: Reading, flag: str = "--data") -> dict[str, "torch.Tensor"]:  # noqa: F821
    """The corpus ``text:PATH`` as ``{"input_ids": blocks, "labels": blocks}`` (int64, ``(N, seq_len)``),
    from the cache where it holds them."""
    root, files = corpus_files(spec, flag)
    return blocks_of(root, files, lambda: _documents(files, reading.text_field, flag, spec), reading, spec, flag)


def blocks_of(root: Path, files: list[Path], documents, reading: Reading, spec: str, flag: str) -> dict[str, "torch.Tensor"]:  # noqa: F821
    """The blocks of the documents that ``documents()`` yields (text read from ``files``, under
    ``root``: a corpus, or a saved data set's text column), as ``{"input_ids", "labels"}``: read from the
    cache (keyed by ``files``' bytes, the tokenizer and ``reading``), else tokenised, joined with
    end-of-text, cut into blocks, and cached."""
    import torch

    tokenizer_folder = Path(reading.tokenizer)
    if not tokenizer_folder.is_dir():
        raise UserError(f"--tokenizer {reading.tokenizer!r}: no such folder (a tokenizer saved by save_pretrained)")
    try:
        key = cache_key(root, files, tokenizer_folder, reading)
    except OSError as exc:
        raise UserError(f"{flag} {spec!r}: reading it failed: {exc.strerror or exc}") from None
    cache = Path(reading.cache_dir) if reading.cache_dir is not None else root.parent
    cached = cache / f"{root.name}.dsurf-blocks-{key[:20]}.npy"
    blocks = _read_cache(cached)
    fresh = blocks is None
    if fresh:
        blocks = _tokenise(spec, documents(), reading, flag)
    if reading.vocabulary is not None and blocks.size and int(blocks.max()) >= reading.vocabulary:
        raise UserError(f"{flag} {spec!r}: token {int(blocks.max())} is beyond the model's embedding ({reading.vocabulary} tokens)")
    if fresh:
        print(f"dsurf: tokenised {spec}: {len(blocks)} blocks of {reading.seq_len} tokens", file=sys.stderr)
        _write_cache(cached, blocks)
    else:
        print(f"dsurf: text blocks from cache {cached}", file=sys.stderr)
    tokens = torch.from_numpy(blocks.astype(np.int64))
    return {"input_ids": tokens, "labels": tokens.clone()}


def _read_cache(path: Path) -> np.ndarray | None:
    try:
        return np.load(path, allow_pickle=False) if path.is_file() else None
    except (OSError, ValueError):  # a damaged cache is tokenised again, and replaced
        return None


def _write_cache(path: Path, blocks: np.ndarray) -> None:
    """Write the blocks under ``path`` in one step (a temporary beside it, renamed); where that fails,
    warn in one line and go on with the blocks in memory."""
    temporary = temporary_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with temporary.open("wb") as handle:
            np.save(handle, blocks, allow_pickle=False)
        publish(temporary, path)
    except OSError as exc:
        remove(temporary)
        print(
            f"dsurf: warning: the text blocks cannot be cached in {str(path.parent)!r} ({exc.strerror or exc}); "
            "tokenised in memory (--cache-dir DIR keeps them)",
            file=sys.stderr,
        )


def _documents(files: list[Path], field: str, flag: str, spec: str):
    """Each document's text: a ``.txt`` file whole, a ``.jsonl`` file's lines' ``field``."""
    for path in files:
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise UserError(f"{flag} {spec!r}: {str(path)!r} cannot be read as UTF-8 text: {first_line(exc)}") from None
        if path.suffix == ".txt":
            yield text
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                raise UserError(f"{flag} {spec!r}: {str(path)!r} line {number} is not JSON") from None
            if not isinstance(record, dict) or not isinstance(record.get(field), str):
                raise UserError(f"{flag} {spec!r}: {str(path)!r} line {number} has no text field {field!r} (--text-field)")
            yield record[field]


def load_tokenizer(folder: str):
    """The tokenizer saved in ``folder``, offline."""
    with hf.offline():
        from transformers import AutoTokenizer

        try:
            return AutoTokenizer.from_pretrained(folder, local_files_only=True)
        except Exception as exc:  # a folder without a tokenizer, a damaged file: transformers raises many kinds
            raise UserError(f"the tokenizer folder {folder!r}: no tokenizer can be loaded from it: {first_line(exc)}") from None


def _tokenise(spec: str, documents, reading: Reading, flag: str) -> np.ndarray:
    tokenizer = load_tokenizer(reading.tokenizer)
    if tokenizer.eos_token_id is None:
        raise UserError(f"the tokenizer {reading.tokenizer!r} has no end-of-text (eos) token to join documents with")
    if reading.vocabulary is not None and len(tokenizer) > reading.vocabulary:
        raise UserError(
            f"the tokenizer {reading.tokenizer!r}: its vocabulary ({len(tokenizer)} tokens) is larger than the model's "
            f"embedding ({reading.vocabulary})"
        )
    tokens: list[int] = []
    for document in documents:
        if tokens:
            tokens.append(tokenizer.eos_token_id)
        tokens.extend(tokenizer(document, add_special_tokens=False)["input_ids"])
    if not tokens:
        raise UserError(f"{flag} {spec!r} holds no text")
    count = len(tokens) // reading.seq_len
    if count == 0:
        raise UserError(f"{flag} {spec!r}: {len(tokens)} tokens, shorter than one block of --seq-len {reading.seq_len}")
    dtype = np.int32 if len(tokenizer) < 2**31 else np.int64
    return np.asarray(tokens[: count * reading.seq_len], dtype=dtype).reshape(count, reading.seq_len)
