"""The worker's HTTP protocols, one route table each: the seed API, the Open Inference
Protocol (v2), the OpenAI API (chat, completions, embeddings), OpenAI's Responses API and
audio API,
Anthropic's Messages API, Ollama's API, the tokenizer routes (vLLM's shapes) and the
web console with its live feed."""

from __future__ import annotations

from ..routing import Table
from .anthropic import TABLE as ANTHROPIC
from .audio import TABLE as AUDIO
from .console import TABLE as CONSOLE
from .ollama import TABLE as OLLAMA
from .openai import TABLE as OPENAI
from .responses import TABLE as RESPONSES
from .seed import TABLE as SEED
from .tokenizer import TABLE as TOKENIZER
from .v2 import TABLE as V2

#: every table, in the order their routes are matched
TABLES: tuple[Table, ...] = (SEED, V2, OPENAI, RESPONSES, AUDIO, ANTHROPIC, OLLAMA,
                             TOKENIZER, CONSOLE)
