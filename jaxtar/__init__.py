"""jaxtar: tamper-resistant open-weight models (TAR, MLAC) with fast meta-gradients in JAX."""

__version__ = "0.1.0"
