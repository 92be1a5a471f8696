"""The request lifecycle: validate, preprocess, execute, postprocess, record."""
