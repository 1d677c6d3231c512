"""The surface file (HDF5) and the tool's other files: one concept per module.

A surface file holds, as root attributes, its ``format`` and ``format_version``, the ``config`` (JSON),
its ``status``, versions, ``num_samples``, the ``measurements`` it declares (JSON) and timestamps; as
datasets, ``xcoordinates`` (and ``ycoordinates``), one dataset per measurement (``train_loss``, ...) of
the grid's shape followed by its per-point shape (NaN until computed), ``done`` (uint8),
``directions/x|y/<parameter name>``, ``timings`` (one record per point: the chunk that computed it) and
``runs`` (a ring of run records). The full format: ``docs/format.md``.

:mod:`.layout` (names, dtypes), :mod:`.status` (statuses and exit codes), :mod:`.atomic` (whole-file
writes and the rule for replacing a file), :mod:`.checks` (before a run), :mod:`.create`,
:mod:`.open` (opening to resume), :mod:`.recorder` (a run's writes), :mod:`.read`, :mod:`.paper` (the
paper's files), :mod:`.spectrum` (``dsurf hessian``'s file), :mod:`.lock` (one writer per file).
h5py is imported in this package only; torch nowhere in it (a reader such as ``dsurf info`` starts
fast). It imports nothing of the application but :mod:`distributed_surface.core`.

Names are loaded on first use (``from distributed_surface.storage import Status`` does not import
h5py: the command line starts fast).
"""

from importlib import import_module

_EXPORTS = {
    "MARK": "atomic", "carries_mark": "atomic", "check_replaceable": "atomic", "check_target": "atomic",
    "publish": "atomic", "write_atomically": "atomic",
    "check_space": "checks", "check_writable": "checks", "surface_bytes": "checks",
    "create_surface": "create", "leftover_temporaries": "create",
    "FORMAT": "layout", "FORMAT_VERSION": "layout", "MAX_RUNS": "layout",
    "WriterLock": "lock", "holder": "lock", "take_lock": "lock",
    "check_resumable": "open", "open_checked": "open", "read_directions": "open",
    "is_legacy": "paper", "read_any_surface": "paper",
    "SurfaceData": "read", "read_frame": "read", "read_surface": "read", "stored_measurements": "read",
    "RunRecorder": "recorder", "io_mode": "recorder",
    "is_spectrum": "spectrum", "read_eigenvectors": "spectrum", "read_spectrum": "spectrum", "write_spectrum": "spectrum",
    "STATUSES": "status", "Status": "status",
}  # fmt: skip

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
