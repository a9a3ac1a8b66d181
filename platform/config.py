"""Typed experiment configs: YAML in, validated against dataclasses, hashed.

A config is a (nested) dataclass. :func:`from_dict` builds one from plain data and rejects, with
a one-line :class:`~zeroseg.platform.errors.ConfigError` naming the dotted key, any unknown key
(with the known ones listed and the closest suggested), any missing required key and any value
of the wrong type. This runs before anything expensive starts (Ray, DeepSpeed, data loading).

:func:`config_hash` is the stable identity of a config (canonical JSON, sorted keys), used to
address the artifacts a stage produces (DESIGN.md section 2).
"""

from __future__ import annotations

import dataclasses
import difflib
import hashlib
import json
import types
import typing
from pathlib import Path
from typing import Any, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from zeroseg.platform.errors import ConfigError

T = TypeVar("T")


def load_yaml(path: str | Path) -> dict[str, Any]:
    """A YAML mapping from ``path`` (safe_load), with one-line errors."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}") from None
    if data is None:  # an empty file (or only comments): not a config that means "defaults"
        raise ConfigError(f"{path}: the file is empty (expected a YAML mapping of settings)")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def load_config(cls: type[T], path: str | Path, overrides: dict[str, Any] | None = None) -> T:
    """Build ``cls`` from a YAML file plus dotted overrides (``{"train.steps": 10}``)."""
    data = load_yaml(path)
    for dotted, value in (overrides or {}).items():
        set_dotted(data, dotted, value)
    return from_dict(cls, data, where=str(path))


def set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {dotted}: {part} is not a mapping")
    node[parts[-1]] = value


def from_dict(cls: type[T], data: Any, *, where: str = "config", prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``, checking keys and types recursively."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: {prefix or 'config'} must be a mapping, "
                          f"got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = [k for k in data if k not in fields]
    if unknown:
        key = unknown[0]
        close = difflib.get_close_matches(str(key), list(fields), n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"{where}: unknown key {_join(prefix, key)!r}{hint}; known keys: "
                          f"{', '.join(fields)}")
    kwargs: dict[str, Any] = {}
    for name, f in fields.items():
        dotted = _join(prefix, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{where}: missing required key {dotted!r}")
            continue
        kwargs[name] = coerce(hints[name], data[name], (where, dotted))
    obj = cls(**kwargs)
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except ConfigError as e:
            raise ConfigError(f"{where}: {e}") from None
    return obj


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _type_name(tp: Any) -> str:
    if isinstance(tp, type):
        return tp.__name__
    return str(tp).replace("typing.", "")


#: Where a value sits: (the file or section, the dotted key within it).
Location = tuple[str, str]


class Wording:
    """How a family of configs words a value that does not fit its type hint, and the checks
    its field metadata asks for. This one is the experiment configs' (:func:`from_dict`):
    ``WHERE: KEY must be an integer, got '3'``; the embedding providers' options word it their
    own way (:class:`zeroseg.platform.embeddings.config.OptionWording`). :func:`coerce` is the
    one walker both use."""

    EXPECTED = {bool: "true or false", int: "an integer", float: "a number", str: "a string",
                Path: "a path string", list: "a list", tuple: "a list", dict: "a mapping"}

    def item(self, at: Location, index: int) -> Location:
        return at[0], f"{at[1]}[{index}]"

    def entry(self, at: Location, key: Any) -> Location:
        return at[0], _join(at[1], key)

    def entry_key(self, at: Location, key: Any) -> Location:
        return self.entry(at, key)

    def expected(self, tp: Any) -> str:
        return self.EXPECTED.get(get_origin(tp) or tp) or _type_name(tp)

    def wrong(self, at: Location, expected: str, value: Any) -> ConfigError:
        return ConfigError(f"{at[0]}: {at[1]} must be {expected}, got {value!r}")

    def wrong_length(self, at: Location, length: int, value: Any) -> ConfigError:
        return ConfigError(f"{at[0]}: {at[1]} must have {length} items, got {value!r}")

    def no_union_member(self, tp: Any, value: Any, at: Location,
                        errors: list[ConfigError]) -> ConfigError:
        return self.wrong(at, _type_name(tp), value)

    def number(self, value: float, at: Location, metadata: typing.Mapping[str, Any]) -> float:
        return value

    def string(self, value: Any, at: Location, metadata: typing.Mapping[str, Any]) -> str:
        if not isinstance(value, str):
            raise self.wrong(at, self.expected(str), value)
        return value

    def mapping(self, items: dict[Any, Any]) -> typing.Mapping[Any, Any]:
        return items


EXPERIMENT_WORDING = Wording()


def coerce(tp: Any, value: Any, at: Location, wording: Wording = EXPERIMENT_WORDING,
           metadata: typing.Mapping[str, Any] | None = None) -> Any:
    """``value`` (plain YAML data) checked against type hint ``tp`` and converted (ints to
    floats, lists to tuples, mappings to nested dataclasses); a one-line :class:`ConfigError`,
    worded by ``wording``, naming ``at`` when it does not fit. ``metadata``: the field's (e.g.
    ``minimum``, ``choices``), for the checks ``wording`` makes."""
    metadata = metadata or {}
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return coerce(arg, value, at, wording, metadata)
            except ConfigError as e:
                errors.append(e)
        raise wording.no_union_member(tp, value, at, errors)
    if origin is typing.Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise wording.wrong(at, f"one of {list(allowed)}", value)
        return value
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where=at[0], prefix=at[1])
    if origin in (list, tuple):
        if not isinstance(value, list | tuple):
            raise wording.wrong(at, wording.expected(tp), value)
        args = get_args(tp)
        if origin is tuple and args and args[-1] is not Ellipsis:
            if len(args) != len(value):
                raise wording.wrong_length(at, len(args), value)
            return tuple(coerce(a, v, wording.item(at, i), wording)
                         for i, (a, v) in enumerate(zip(args, value, strict=True)))
        item = args[0] if args else Any
        items = [coerce(item, v, wording.item(at, i), wording) for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, typing.Mapping):
            raise wording.wrong(at, wording.expected(tp), value)
        kt, vt = get_args(tp) or (Any, Any)
        return wording.mapping({coerce(kt, k, wording.entry_key(at, k), wording):
                                coerce(vt, v, wording.entry(at, k), wording)
                                for k, v in value.items()})
    if tp is bool:
        if not isinstance(value, bool):
            raise wording.wrong(at, wording.expected(bool), value)
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise wording.wrong(at, wording.expected(int), value)
        return wording.number(value, at, metadata)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise wording.wrong(at, wording.expected(float), value)
        return wording.number(float(value), at, metadata)
    if tp is str:
        return wording.string(value, at, metadata)
    if tp is Path:
        if not isinstance(value, str | Path):
            raise wording.wrong(at, wording.expected(Path), value)
        return Path(value)
    if isinstance(tp, type) and not isinstance(value, tp):
        raise wording.wrong(at, _type_name(tp), value)
    return value


def added_field(default: Any, *, since: str) -> Any:
    """A config field added after configs were first stored (``since``: the change that added
    it). At its default it is left out of :func:`to_dict`, so the documents, hashes and run
    identities of every existing config stay exactly what they were."""
    return dataclasses.field(default=default, metadata={"added": since})


def to_dict(config: Any) -> Any:
    """Plain data (JSON/YAML-ready) from a config dataclass (fields of :func:`added_field` at
    their defaults left out)."""
    if dataclasses.is_dataclass(config) and not isinstance(config, type):
        return {f.name: to_dict(getattr(config, f.name)) for f in dataclasses.fields(config)
                if not ("added" in f.metadata and getattr(config, f.name) == f.default)}
    if isinstance(config, list | tuple):
        return [to_dict(v) for v in config]
    if isinstance(config, dict):
        return {str(k): to_dict(v) for k, v in config.items()}
    if isinstance(config, Path):
        return str(config)
    return config


def canonical_json(data: Any) -> str:
    return json.dumps(to_dict(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def config_hash(config: Any, length: int = 16) -> str:
    """Stable short hash of a config (or any JSON-able data)."""
    return hashlib.sha256(canonical_json(config).encode("utf-8")).hexdigest()[:length]


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """``["train.steps=10"]`` -> ``{"train.steps": 10}``. Values are parsed as JSON if they can
    be; a list or mapping may also be written as in the YAML files (``evaluation.protocols=[test]``,
    ``a={b: 1}``); anything else stays a string."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE (e.g. train.steps=10)")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = _flow_collection(item, value)
    return out


def _flow_collection(item: str, value: str) -> Any:
    """A YAML flow list / mapping (``[a, b]``, ``{k: v}``) as the config files write them; any
    other value is returned as the string it is."""
    if not value.strip().startswith(("[", "{")):
        return value
    try:
        return yaml.safe_load(value)
    except yaml.YAMLError as exc:
        problem = getattr(exc, "problem", None) or "not valid YAML"
        raise ConfigError(f"--set {item!r}: the value is neither JSON nor a YAML list/mapping "
                          f"({problem})") from None
