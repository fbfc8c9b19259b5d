"""Which files the wheel holds; the metadata is in pyproject.toml.

conf/ stays at the repository's top level (Hydra users expect it there) and ships inside the
package as foodnet/conf, where foodnet.config looks first. pyproject.toml alone cannot map a
folder outside src/ into the package next to an automatic package search, hence this file.
"""

from setuptools import find_namespace_packages, setup

setup(
    # Namespace search: Hydra plugins (src/hydra_plugins/...) must not have an __init__.py.
    packages=find_namespace_packages(
        "src", include=["foodnet", "foodnet.*", "hydra_plugins", "hydra_plugins.*"],
        exclude=["*.__pycache__"]) + ["foodnet.conf"],
    package_dir={"": "src", "foodnet.conf": "conf"},
    package_data={"foodnet.conf": ["*.yaml", "**/*.yaml"], "foodnet": ["inference/static/*"]},
)
