"""The choices of the core's settings, torch-free so that a config can be checked before torch is
imported (a bad flag is refused at once). The modules that implement them import them from here."""

NORMS = ("filter", "layer", "weight", "none")
IGNORE_RULES = ("biasbn", "none")
DIR_TYPES = ("weights", "states")
PRECISIONS = ("fp32", "tf32", "bf16")
# The weights' dtype in the forward pass (θ0 and the directions stay fp32: core/weights.py).
DTYPES = ("fp32", "bf16", "fp16")
VMAP_MODES = ("auto", "tune", "on", "off")
BUILTIN_LOSS_NAMES = ("cross_entropy", "causal_lm", "mse")
# Where a split's data is kept: auto (chosen from its size), on the device, in host memory (each batch
# copied to the device), or read from its Dataset on every pass.
DATA_PLACEMENTS = ("auto", "device", "host", "stream")
# What is measured at every point: the loss (and accuracy) of each split, or also the Hessian's extreme
# eigenvalues (of the train split's loss).
MEASURES = ("loss", "hessian")
# Which parameters the Hessian is taken over: those with more than one dimension (the paper's), or all.
HESSIAN_PARAMS = ("weights", "all")
# Under MPI, rank 0 coordinates; "work": it also evaluates chunks, "coordinate": it only coordinates.
RANK0_ROLES = ("work", "coordinate")
# The picture formats of dsurf plot and dsurf compare.
PICTURE_FORMATS = ("png", "pdf", "svg")
