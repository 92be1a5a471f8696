"""The llama runtime: GGUF language models, batched by a scheduler of our own."""

from .generation import Generation, Grammar, Sampling, StopFilter, check_fits
from .session import LlamaRuntime, LlamaSession

__all__ = ["Generation", "Grammar", "LlamaRuntime", "LlamaSession", "Sampling", "StopFilter",
           "check_fits"]
