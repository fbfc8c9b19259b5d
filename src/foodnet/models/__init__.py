"""Backbones, the transfer model, weights and checkpoints."""
