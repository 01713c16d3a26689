"""Pure computation on arrays: flat-field, binning, phase retrieval, FBP, simulation.

Nothing here opens sockets or files, starts processes or configures logging. Every
stage is a function or a small plan object set up once per geometry and then applied
to one projection or a batch, on numpy (CPU) or cupy (GPU) arrays alike.
"""
