"""Model repository, model.json and the ModelManager that owns loaded models."""
