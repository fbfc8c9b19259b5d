"""The one handler around the Hydra entry points (train, evaluate, and their `-m` sweeps): Hydra's
own config errors (a mistyped key, an unknown group choice, a malformed override) are answered
like every other user mistake: `error: ...` naming the closest key or choice, and exit 2."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from foodnet.errors import EXIT_USAGE, ConfigError, did_you_mean


def run(main: Callable[[], object]) -> None:
    """Call a @hydra.main function the way `python -m foodnet.COMMAND` does."""
    # Hydra prints its config errors itself and exits 1, unless HYDRA_FULL_ERROR (a documented
    # switch) asks it to raise them; then they reach this handler. Other exceptions are bugs and
    # keep their full traceback.
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        main()
    except Exception as err:
        error = config_error(err)
        if error is None:
            raise
        # Written directly: foodnet's logging is set up only once a job starts.
        sys.stderr.write(f"error: {error}\n")
        raise SystemExit(EXIT_USAGE) from None


def config_error(err: Exception) -> ConfigError | None:
    """Hydra's error about the command line's config as a ConfigError that says the fix, or
    None for any other exception."""
    from hydra.errors import (
        ConfigCompositionException,
        MissingConfigException,
        OverrideParseException,
    )
    from omegaconf.errors import OmegaConfBaseException

    if isinstance(err, MissingConfigException) and err.options and err.missing_cfg_file:
        group, _, name = err.missing_cfg_file.rpartition("/")
        choices = [f"{group}={option}" for option in err.options]
        return ConfigError(f"{group}={name}: no such choice of the {group} group "
                           f"(the choices: {', '.join(err.options)})"
                           f"{did_you_mean(f'{group}={name}', choices)}")
    cause = err.__cause__
    key = getattr(cause, "full_key", None) if isinstance(cause, OmegaConfBaseException) else None
    if isinstance(err, ConfigCompositionException) and key:
        keys = _all_keys(cause.parent_node)
        if not key.startswith("hydra."):
            keys = [k for k in keys if not k.startswith("hydra.") and k != "hydra"]
        return ConfigError(f"{key}: no such setting{did_you_mean(key, keys)} (add --cfg job "
                           "to the command to print every key)")
    if isinstance(err, (ConfigCompositionException, OverrideParseException)):
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        if isinstance(cause, OmegaConfBaseException):
            lines.append(str(cause).splitlines()[0])
        return ConfigError(" ".join(lines))
    return None


def _all_keys(node) -> list[str]:
    """Every dotted key of the config `node` belongs to (groups and their keys alike)."""
    from omegaconf import DictConfig, OmegaConf

    if not isinstance(node, DictConfig):
        return []
    tree = OmegaConf.to_container(node._get_root(), resolve=False)

    def walk(value, prefix: str):
        if isinstance(value, dict):
            for name, child in value.items():
                yield prefix + str(name)
                yield from walk(child, f"{prefix}{name}.")

    return list(walk(tree, ""))
