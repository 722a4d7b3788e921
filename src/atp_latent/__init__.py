"""ATP-Latent: active latent planning for language models."""

__version__ = "0.1.0"
