"""Wave-U-Net music source separation on raw audio, in JAX/Flax."""

__version__ = "0.1.0"
