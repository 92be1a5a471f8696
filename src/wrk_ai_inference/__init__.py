"""wrk-ai-inference: one inference core behind HTTP and Hyperswarm RPC."""
__version__ = "0.1.0"
