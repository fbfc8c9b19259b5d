"""foodnet: transfer-learning image classifier from txt manifests."""
