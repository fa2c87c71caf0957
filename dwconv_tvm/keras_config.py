"""Keras's global defaults (`image_data_format`, `floatx`) without requiring Keras.

If Keras is already imported, its live settings win (so `keras.config.set_image_data_format`
is honoured). Otherwise `keras.json` is read from `$KERAS_HOME` when set, else from `~/.keras`
(or `/tmp/.keras` when the home folder is not writable), exactly where Keras looks. A missing,
unreadable or malformed file, or an invalid value in it, gives Keras's defaults.
"""

from __future__ import annotations

import json
import os
import sys
import warnings

DEFAULTS = {"image_data_format": "channels_last", "floatx": "float32"}
_VALID = {
    "image_data_format": {"channels_last", "channels_first"},
    "floatx": {"float16", "float32", "float64"},
}


def keras_json_path() -> str:
    """Where Keras reads its config file."""
    if "KERAS_HOME" in os.environ:
        base = os.environ["KERAS_HOME"]
    else:
        home = os.path.expanduser("~")
        base = os.path.join(home if os.access(home, os.W_OK) else "/tmp", ".keras")
    return os.path.expanduser(os.path.join(base, "keras.json"))


def _setting(name: str) -> str:
    keras = sys.modules.get("keras")
    live = getattr(getattr(keras, "config", None), name, None)
    if callable(live):
        return live()
    path = keras_json_path()
    try:
        with open(path) as f:
            config = json.load(f)
    except FileNotFoundError:
        return DEFAULTS[name]
    except (OSError, ValueError):
        warnings.warn(f"Ignoring malformed Keras config {path}; using {name}={DEFAULTS[name]!r}.", stacklevel=3)
        return DEFAULTS[name]
    value = config.get(name, DEFAULTS[name]) if isinstance(config, dict) else DEFAULTS[name]
    if value not in _VALID[name]:
        warnings.warn(f"Ignoring invalid {name}={value!r} in {path}; using {DEFAULTS[name]!r}.", stacklevel=3)
        return DEFAULTS[name]
    return value


def image_data_format() -> str:
    """`"channels_last"` or `"channels_first"`, as Keras would resolve it now."""
    return _setting("image_data_format")


def floatx() -> str:
    """Keras's default float type, as Keras would resolve it now."""
    return _setting("floatx")
