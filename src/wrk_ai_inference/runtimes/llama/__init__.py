"""The llama runtime: GGUF language models, batched by a scheduler of our own."""

from .generation import Generation, Sampling, StopFilter, check_fits
from .session import LlamaRuntime, LlamaSession

__all__ = ["Generation", "LlamaRuntime", "LlamaSession", "Sampling", "StopFilter", "check_fits"]
