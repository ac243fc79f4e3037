"""Typed, validated configuration mirroring the sections of ``params.yaml``.

Every config is a frozen dataclass. :func:`from_mapping` builds one from a plain mapping (for
example a parsed YAML section) and rejects unknown keys and ill-typed values with a
:class:`ConfigError` that names the dotted key, the offending value and how to fix it.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar, cast

import numpy as np

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value is invalid.

    Attributes:
        key: dotted path of the offending key, e.g. ``task.cartpole.pole_mass``.
        value: the offending value.

    """

    def __init__(self, key: str, value: object, message: str) -> None:
        self.key = key
        self.value = value
        self.message = message
        super().__init__(f"{key}={value!r}: {message}")

    def with_prefix(self, prefix: str) -> ConfigError:
        """Return the same error with ``prefix.`` prepended to its key."""
        key = f"{prefix}.{self.key}" if prefix else self.key
        return ConfigError(key, self.value, self.message)


def check(condition: bool, key: str, value: object, message: str) -> None:
    """Raise :class:`ConfigError` for ``key``/``value`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(key, value, message)


def check_range(key: str, value: object, *, positive: bool = False) -> None:
    """Validate a ``[min, max]`` pair (``min <= max``; both > 0 when ``positive``)."""
    check(isinstance(value, tuple) and len(value) == 2, key, value, "expected [min, max]")
    lo, hi = typing.cast(tuple[float, float], value)
    check(lo <= hi, key, value, f"min {lo} is greater than max {hi}; swap them")
    if positive:
        check(lo > 0, key, value, "must be > 0 (a physical quantity); use a positive range")


_SCALARS: dict[type, tuple[Any, str]] = {
    bool: (lambda v: isinstance(v, bool), "expected true or false"),
    int: (lambda v: isinstance(v, int) and not isinstance(v, bool), "expected an integer"),
    float: (lambda v: isinstance(v, int | float) and not isinstance(v, bool), "expected a number"),
    str: (lambda v: isinstance(v, str), "expected a string"),
}


def _convert_union(args: tuple[Any, ...], value: Any, key: str) -> Any:
    errors = []
    for arg in args:
        if arg is type(None):
            if value is None:
                return None
            continue
        try:
            return _convert(arg, value, key)
        except ConfigError as err:
            errors.append(err)
    raise errors[0] if errors else ConfigError(key, value, "unexpected null")


def _convert_tuple(args: tuple[Any, ...], value: Any, key: str) -> tuple[Any, ...]:
    check(isinstance(value, list | tuple), key, value, "expected a list")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(_convert(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    check(len(value) == len(args), key, value, f"expected a list of {len(args)} values")
    return tuple(_convert(a, v, f"{key}[{i}]")
                 for i, (a, v) in enumerate(zip(args, value, strict=True)))


def _convert(annotation: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if dataclasses.is_dataclass(annotation) and isinstance(annotation, type):
        if hasattr(annotation, "from_params"):  # a section that builds itself (``algo``)
            return annotation.from_params(value, key)
        check(isinstance(value, Mapping), key, value, "expected a mapping of keys")
        return from_mapping(annotation, value, prefix=key)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(args, value, key)
    if origin is typing.Literal:
        check(value in args, key, value, f"must be one of {list(args)}")
        return value
    if origin is tuple:
        return _convert_tuple(args, value, key)
    if origin is dict:
        check(isinstance(value, Mapping), key, value, "expected a mapping")
        return {str(k): _convert(args[1], v, f"{key}.{k}") for k, v in value.items()}
    if annotation in _SCALARS:
        is_valid, message = _SCALARS[annotation]
        check(is_valid(value), key, value, message)
        if annotation is float:
            check(math.isfinite(value), key, value, "expected a finite number, not inf or nan")
        return float(value) if annotation is float else value
    return value


def from_mapping(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build the dataclass ``cls`` from ``data``, validating every key and value.

    Missing keys take the dataclass defaults; unknown keys are errors.

    Raises:
        ConfigError: naming the dotted key and the offending value.

    """
    data = {} if data is None else data
    if not isinstance(data, Mapping):
        raise ConfigError(prefix or "<root>", data, "expected a mapping of keys")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    kwargs: dict[str, Any] = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else str(name)
        if name not in fields:
            raise ConfigError(key, value, f"unknown key; valid keys here: {sorted(fields)}")
        kwargs[name] = _convert(hints[name], value, key)
    try:
        return cls(**kwargs)
    except ConfigError as err:
        raise err.with_prefix(prefix) from None


def to_dict(config: object) -> dict[str, Any]:
    """Plain-JSON form of a config dataclass (tuples become lists).

    A section with a ``to_params`` method (``algo``) gives that method's form.
    """
    def plain(v: Any) -> Any:
        if dataclasses.is_dataclass(v) and not isinstance(v, type):
            if hasattr(v, "to_params"):
                return plain(v.to_params())
            return {f.name: plain(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, tuple | list):
            return [plain(x) for x in v]
        if isinstance(v, dict):
            return {k: plain(x) for k, x in v.items()}
        return v

    return plain(config)  # type: ignore[no-any-return]


# Field checks of task dicts (each family's ``check_task``), one line per bad field.

class _Missing:
    """The value of a task field that is absent (its ``repr`` is ``<missing>``)."""

    def __repr__(self) -> str:
        return "<missing>"


MISSING: Any = _Missing()
"""Stands for an absent field's value in a :class:`ConfigError`."""


def check_fields(task: Mapping[str, object], fields: Sequence[str]) -> None:
    """Require ``task`` to have exactly the fields ``fields``.

    Raises:
        ConfigError: keyed by the first missing field (value :data:`MISSING`) or the first
            unknown one, listing the expected fields.

    """
    for name in fields:
        if name not in task:
            raise ConfigError(name, MISSING, f"field missing; a task has the fields "
                              f"{list(fields)}")
    for name, value in task.items():
        if name not in fields:
            raise ConfigError(str(name), value, f"unknown field; valid fields: {list(fields)}")


def _is_number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def check_number(key: str, value: object, *, positive: bool = False, what: str = "") -> float:
    """Require a finite number (``> 0`` when ``positive``); return it as a float.

    Args:
        key: the field's name, for the error.
        value: the value to check.
        positive: also require ``value > 0``.
        what: what the quantity is, for the error, e.g. ``a mass, kg``.

    Raises:
        ConfigError: the value is not a number, not finite, or not positive.

    """
    about = f" ({what})" if what else ""
    check(_is_number(value), key, value, f"expected a number{about}")
    number = float(value)  # type: ignore[arg-type]
    check(math.isfinite(number), key, value, f"must be a finite number{about}")
    if positive:
        check(number > 0, key, value, f"must be > 0{about}")
    return number


def check_int(key: str, value: object, *, low: int | None = None,
              high: int | None = None) -> int:
    """Require an integer in ``[low, high]`` (either bound optional); return it.

    Raises:
        ConfigError: the value is not an integer (``true`` and ``1.0`` are not) or is out of
            bounds.

    """
    check(isinstance(value, int) and not isinstance(value, bool), key, value,
          "expected an integer")
    number = int(value)  # type: ignore[call-overload]
    if low is not None:
        check(number >= low, key, value, f"must be >= {low}")
    if high is not None:
        check(number <= high, key, value, f"must be <= {high}")
    return number


def check_array(key: str, value: object, shape: Sequence[int]) -> np.ndarray:
    """Require a nested list of finite numbers of exactly ``shape``; return it as an array.

    ``shape`` may hold ``-1`` for "any non-zero length". Errors name the offending entry,
    e.g. ``transitions[2][1][4]``.

    Raises:
        ConfigError: a level is not a list or has the wrong length, or an entry is not a
            finite number.

    """
    full = "×".join("N" if n < 0 else str(n) for n in shape)

    def walk(k: str, v: object, depth: int) -> None:
        if depth == len(shape):
            check_number(k, v)
            return
        n = shape[depth]
        check(isinstance(v, list), k, v, f"expected a list (the field is {full})")
        items = cast(list[object], v)
        if n < 0:
            check(bool(items), k, v, f"expected a non-empty list (the field is {full})")
        else:
            check(len(items) == n, k, v,
                  f"expected {n} entries, got {len(items)} (the field is {full})")
        for i, item in enumerate(items):
            walk(f"{k}[{i}]", item, depth + 1)

    walk(key, value, 0)
    return np.asarray(value, dtype=np.float64)
