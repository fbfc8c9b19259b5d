"""Where the Hydra configs are: conf/ inside the installed package (a wheel ships it there), else
the repository's top-level conf/ (a source checkout or an editable install)."""

from __future__ import annotations

from pathlib import Path

_PACKAGED = Path(__file__).resolve().parent / "conf"
_CHECKOUT = Path(__file__).resolve().parents[2] / "conf"
CONFIG_DIR = str(_PACKAGED if _PACKAGED.is_dir() else _CHECKOUT)
