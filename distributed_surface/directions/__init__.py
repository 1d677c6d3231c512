"""Where a surface's directions come from: one module per kind, one interface, one registry.

- :mod:`.base`: the interface every kind implements (:class:`~.base.DirectionKind`) and what it makes
  (:class:`~.base.Made`).
- :mod:`.registry`: the kinds (built-in, installed through the entry-point group
  ``distributed_surface.directions``, or registered in-process) and which one a config selects.
- :mod:`.frame`: a run's directions and points, made by the selected kind, and the attributes the file
  records of them; :mod:`.options`: ``--points`` and ``--params``, which apply to every kind.
- The kinds: :mod:`.random_normal` (the default), :mod:`.interpolate` (``--to``), :mod:`.plane`
  (``--plane``), :mod:`.bezier` (``--bend``), :mod:`.pca` (``--trajectory``), :mod:`.file`
  (``--directions FILE``), :mod:`.hessian` (``--directions hessian``); :mod:`.checkpoints` holds what
  the checkpoint kinds share.

Nothing outside this package asks which kind a surface has: the pictures and ``dsurf info`` read what
the kind recorded in the file.
"""
