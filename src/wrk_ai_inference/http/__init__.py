"""Standalone HTTP transport: FastAPI routes that translate to and from the core."""
