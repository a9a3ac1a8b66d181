"""Typed, validated provider configs.

Each embedding provider declares its options as a frozen dataclass deriving from
:class:`ProviderConfig`. :func:`parse_provider_config` turns a plain mapping (from YAML, JSON or
the CLI) into that dataclass and rejects what does not fit with a one-line :class:`ConfigError`:

- an unknown key names the key and lists the known keys;
- a value of the wrong type names the key, the expected type and what was given;
- a missing required key names the key and what it should hold.

Field metadata understood here:

``doc``      one-line description, used in error messages for missing keys;
``choices``  allowed values of a string field;
``minimum``  smallest allowed value of a number field;
``in_key``   ``False`` for options that do not change the vectors (device, batch size); they
             are left out of the cache key so e.g. a CPU run can reuse a GPU run's cache.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from zeroseg.platform.config import Location, Wording, coerce
from zeroseg.platform.errors import ConfigError

_MISSING = dataclasses.MISSING


@dataclasses.dataclass(frozen=True)
class ProviderConfig:
    """Base class of every provider's options (a frozen dataclass)."""

    def check(self) -> None:
        """Cross-field checks; raise :class:`ConfigError`. Single fields are checked by type."""

    def to_dict(self) -> dict[str, Any]:
        """All options as JSON-compatible values (tuples become lists)."""
        return {f.name: _plain(getattr(self, f.name)) for f in dataclasses.fields(self)}

    def key_dict(self) -> dict[str, Any]:
        """The options that can change the produced vectors (part of the cache key)."""
        return {
            f.name: _plain(getattr(self, f.name))
            for f in dataclasses.fields(self)
            if f.metadata.get("in_key", True)
        }


class FrozenDict(Mapping[Any, Any]):
    """A read-only, hashable mapping (dict options of frozen configs), keys kept sorted."""

    def __init__(self, items: Any = ()):
        self._data = dict(items)

    def __getitem__(self, key: Any) -> Any:
        return self._data[key]

    def __iter__(self) -> Any:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __hash__(self) -> int:
        return hash(tuple(self._data.items()))

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Mapping) and dict(self._data) == dict(other)

    def __repr__(self) -> str:
        return f"FrozenDict({self._data!r})"


def option(default: Any = _MISSING, *, doc: str = "", choices: tuple[str, ...] | None = None,
           minimum: float | None = None, in_key: bool = True) -> Any:
    """A dataclass field with the metadata :func:`parse_provider_config` understands."""
    metadata = {"doc": doc, "choices": choices, "minimum": minimum, "in_key": in_key}
    if isinstance(default, (list, dict, set)):
        raise TypeError("use a tuple or None as the default of a container option")
    return dataclasses.field(default=default, metadata=metadata)


def parse_provider_config(cls: type[ProviderConfig], data: Mapping[str, Any],
                          where: str) -> ProviderConfig:
    """Build ``cls`` from ``data``; ``where`` prefixes messages (e.g. ``embeddings.word2vec``)."""
    if not isinstance(data, Mapping):
        raise ConfigError(f"{where}: expected a mapping of options, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    known = ", ".join(sorted(fields))
    for key in data:
        if key not in fields:
            raise ConfigError(f"{where}: unknown key {key!r} (known keys: {known})")
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name in data:
            values[name] = coerce(hints[name], data[name], (f"{where}.{name}", ""),
                                  OPTION_WORDING, f.metadata)
        elif f.default is _MISSING and f.default_factory is _MISSING:
            doc = f.metadata.get("doc") or "a value"
            raise ConfigError(f"{where}.{name}: required key is missing (expected {doc})")
    config = cls(**values)
    config.check()
    return config


# -- type checking ----------------------------------------------------------------------------

_SINGULAR = {int: "an integer", float: "a number", bool: "true/false", str: "a string"}
_PLURAL = {int: "integers", float: "numbers", bool: "true/false values", str: "strings"}


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if origin is tuple:
        return f"a list of {_PLURAL.get(typing.get_args(tp)[0], 'values')}"
    if origin is dict:
        k, v = typing.get_args(tp)
        return f"a mapping of {_PLURAL.get(k, 'keys')} to {_PLURAL.get(v, 'values')}"
    return _SINGULAR.get(tp, getattr(tp, "__name__", str(tp)))


def _describe(value: Any) -> str:
    text = repr(value)
    if len(text) > 40:
        text = text[:37] + "..."
    return f"{type(value).__name__} {text}"


class OptionWording(Wording):
    """How provider options word a value that does not fit (``WHERE: expected an integer, got
    str '64'``, the key already in ``WHERE``) and the checks their metadata asks for:
    ``minimum`` of numbers, ``choices`` of strings; numbers must be finite, a path is a string,
    mappings are :class:`FrozenDict` (configs are hashable)."""

    def item(self, at: Location, index: int) -> Location:
        return f"{at[0]}[{index}]", ""

    def entry(self, at: Location, key: Any) -> Location:
        return f"{at[0]}[{key!r}]", ""

    def entry_key(self, at: Location, key: Any) -> Location:
        return f"{at[0]} key", ""

    def expected(self, tp: Any) -> str:
        return _type_name(tp)

    def wrong(self, at: Location, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{at[0]}: expected {expected}, got {_describe(value)}")

    def no_union_member(self, tp: Any, value: Any, at: Location,
                        errors: list[ConfigError]) -> ConfigError:
        return errors[0] if len(errors) == 1 else self.wrong(at, _type_name(tp), value)

    def number(self, value: float, at: Location, metadata: Mapping[str, Any]) -> float:
        if isinstance(value, float) and not math.isfinite(value):
            raise ConfigError(f"{at[0]}: expected a finite number, got {value}")
        minimum = metadata.get("minimum")
        if minimum is not None and value < minimum:
            raise ConfigError(f"{at[0]}: expected a value >= {minimum}, got {value}")
        return value

    def string(self, value: Any, at: Location, metadata: Mapping[str, Any]) -> str:
        if isinstance(value, PurePath):
            value = str(value)
        if not isinstance(value, str):
            raise self.wrong(at, self.expected(str), value)
        choices = metadata.get("choices")
        if choices and value not in choices:
            raise ConfigError(f"{at[0]}: {value!r} is not one of {', '.join(choices)}")
        return value

    def mapping(self, items: dict[Any, Any]) -> Mapping[Any, Any]:
        return FrozenDict(sorted(items.items()))


OPTION_WORDING = OptionWording()


def _plain(value: Any) -> Any:
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    return value
