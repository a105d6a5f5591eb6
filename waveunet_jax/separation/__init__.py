"""The separation wing: `separator.Separator` (NumPy only) over an engine of one protocol:
the JAX network of a workdir (`jax_engine`) or an exported model (`model_formats`)."""
