"""Parameter sets: named, fully resolved parameter dicts for one step.

A step has default parameters and an optional sweep grid. Every point of the grid is
one parameter set; its name shows the swept values (``guidance_scale=7.5__steps=20``),
or is ``default`` when nothing is swept. Values are cast to plain Python types so that
Snakemake's params rerun trigger and the directory names are stable (numpy scalars
have a different repr in numpy 2).
"""

from __future__ import annotations

import itertools
import re
from typing import Any, Mapping

from .errors import ConfigError

DEFAULT_NAME = "default"
_SEP = "__"
_SAFE_VALUE = re.compile(r"^[A-Za-z0-9._+-]+$")


def plain(value: Any) -> Any:
    """Cast numpy scalars / containers to plain Python values."""
    if hasattr(value, "item") and callable(value.item) and not isinstance(value, (list, dict, str)):
        return value.item()
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def format_value(value: Any) -> str:
    value = plain(value)
    if isinstance(value, bool):
        text = str(value).lower()
    elif isinstance(value, float):
        text = repr(value)
    elif isinstance(value, (int, str)):
        text = str(value)
    else:
        raise ConfigError(f"sweep value {value!r} must be a number, string or boolean")
    if not _SAFE_VALUE.match(text):
        raise ConfigError(
            f"sweep value {value!r} cannot be used in a directory name: "
            "use letters, digits and . _ + - only")
    return text


def paramset_name(swept: Mapping[str, Any]) -> str:
    if not swept:
        return DEFAULT_NAME
    return _SEP.join(f"{key}={format_value(swept[key])}" for key in sorted(swept))


def expand(defaults: Mapping[str, Any], sweep: Mapping[str, list] | None = None,
           where: str = "step") -> dict[str, dict[str, Any]]:
    """Return {name: resolved params} for every point of the sweep grid."""
    defaults = plain(dict(defaults or {}))
    sweep = plain(dict(sweep or {}))
    for key, values in sweep.items():
        if key not in defaults:
            raise ConfigError(f"{where}: swept parameter '{key}' is not one of its parameters "
                              f"({', '.join(sorted(defaults))})")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: sweep of '{key}' must be a non-empty list, got {values!r}")
    keys = sorted(sweep)
    sets: dict[str, dict[str, Any]] = {}
    for combo in itertools.product(*(sweep[k] for k in keys)):
        swept = dict(zip(keys, combo))
        name = paramset_name(swept)
        if name in sets:
            raise ConfigError(f"{where}: sweep lists the same value twice ({name})")
        sets[name] = {**defaults, **swept}
    return sets


def parse_name(name: str) -> dict[str, str]:
    """Inverse of paramset_name, values as strings (for tables and plots)."""
    if name == DEFAULT_NAME:
        return {}
    return dict(part.split("=", 1) for part in name.split(_SEP))
