"""Inference: model backends (checkpoint, exports), their sidecar format, and input collection."""
