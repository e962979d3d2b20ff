"""Interoperability with other libraries' checkpoints."""

from lmforge.interop.hf import from_hf, packaged_model_dir, to_hf

__all__ = ["from_hf", "to_hf", "packaged_model_dir"]
