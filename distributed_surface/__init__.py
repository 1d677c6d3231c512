"""distributed_surface: loss landscapes of neural networks, evaluated across many GPUs into one
parallel HDF5 file. ``import distributed_surface`` needs neither mpi4py nor matplotlib."""

__version__ = "0.1.0"
