"""imgrec: image-recognition training with Hydra configs and a plain PyTorch loop."""

__version__ = "0.1.0"
