"""Metrics under one vocabulary, reports and figures (for training, evaluate, dashboards)."""
