"""Lightning callbacks: the epoch summary, TensorBoard dashboards, safety (NaN guard, signals)."""
