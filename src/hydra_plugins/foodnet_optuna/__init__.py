"""foodnet's Optuna sweeper for Hydra (conf/hydra/sweeper/optuna.yaml, docs/search.md).

Hydra instantiates sweepers only from the `hydra_plugins` namespace, hence this package name.
"""
