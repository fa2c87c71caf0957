"""Keras-style object identifiers: `get` (name / config dict / instance / callable) and `serialize`.

Initializers, regularizers and constraints share this: each family is a registry of classes with
Keras's class names and snake_case aliases, serialized in Keras 3's format
`{"module": ..., "class_name": ..., "config": {...}, "registered_name": None}` so that configs
written by Keras load here and ours load in Keras.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any


def snake_case(name: str) -> str:
    """`GlorotUniform` -> `glorot_uniform` (Keras's `to_snake_case`)."""
    name = re.sub(r"(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub(r"([a-z])([A-Z])", r"\1_\2", name).lower()


class KerasObject:
    """Base of the NumPy re-implementations of Keras initializers, regularizers, constraints."""

    module = "keras"

    def get_config(self) -> dict:
        """The constructor arguments, JSON-safe."""
        return {}

    @classmethod
    def from_config(cls, config: dict) -> KerasObject:
        """Builds an instance from `get_config()` output."""
        return cls(**config)

    def __eq__(self, other: object) -> bool:
        return type(self) is type(other) and self.get_config() == other.get_config()

    def __hash__(self) -> int:
        return hash(type(self).__name__)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


class Registry:
    """One family of Keras objects (e.g. initializers) addressable by name or config.

    Args:
        kind: Family name used in error messages (`"initializer"`).
        module: Keras module written into serialized configs (`"keras.initializers"`).
        classes: The classes of the family.
        aliases: Extra names, e.g. `{"normal": RandomNormal}`.
    """

    def __init__(self, kind: str, module: str, classes: list[type], aliases: dict[str, type] | None = None):
        self.kind = kind
        self.module = module
        self.by_name: dict[str, type] = {}
        for cls in classes:
            cls.module = module
            self.by_name[cls.__name__] = cls
            self.by_name[snake_case(cls.__name__)] = cls
        self.by_name.update(aliases or {})

    def get(self, identifier: Any) -> Any:
        """Resolves `identifier` like Keras's `<family>.get`.

        Args:
            identifier: None, a name, a Keras config dict, an instance, or a callable.

        Returns:
            None, an instance of the family, or the callable unchanged.

        Raises:
            ValueError: If the identifier names nothing in the family.
        """
        if identifier is None or isinstance(identifier, KerasObject):
            return identifier
        if isinstance(identifier, str):
            cls = self.by_name.get(identifier)
            if cls is None:
                raise ValueError(f"Could not interpret {self.kind} identifier: {identifier}")
            return cls()
        if isinstance(identifier, dict):
            if identifier.get("class_name") == "function":
                return deserialize_function(identifier)
            cls = self.by_name.get(identifier.get("class_name"))
            config = identifier.get("config", {})
            if cls is None or not isinstance(config, dict):
                raise ValueError(f"Could not interpret {self.kind} identifier: {identifier}")
            try:
                return cls.from_config(config)
            except TypeError as err:
                raise ValueError(f"Invalid config for {self.kind} {cls.__name__}: {err}") from None
        if callable(identifier):
            return identifier
        raise ValueError(f"Could not interpret {self.kind} identifier: {identifier}")

    def serialize(self, obj: Any) -> Any:
        """The Keras-format config of `obj` (None stays None; callables by import path)."""
        if obj is None:
            return None
        if isinstance(obj, KerasObject):
            return {
                "module": self.module,
                "class_name": type(obj).__name__,
                "config": obj.get_config(),
                "registered_name": None,
            }
        return serialize_function(obj)


def serialize_function(fn: Callable) -> dict:
    """Keras's serialized form of a plain function: its module and name."""
    name = getattr(fn, "__name__", None)
    if not name or name == "<lambda>":
        raise ValueError(
            f"Cannot serialize {fn!r}: only named module-level functions can be saved in a config."
        )
    return {"module": fn.__module__, "class_name": "function", "config": name, "registered_name": "function"}


def deserialize_function(config: dict) -> Callable:
    """Inverse of `serialize_function`.

    Raises:
        ValueError: If the function cannot be imported.
    """
    try:
        fn = getattr(importlib.import_module(config["module"]), config["config"])
    except (ImportError, AttributeError, KeyError, TypeError):
        raise ValueError(f"Could not deserialize function from config: {config}") from None
    if not callable(fn):
        raise ValueError(f"Could not deserialize function from config: {config}")
    return fn
