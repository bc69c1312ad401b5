"""YAML configs that select classes by ``class_path`` without executing code.

A config file is parsed with ``yaml.safe_load`` (no Python tags, no code), and a
``class_path`` is imported only when :mod:`ldiff.imports` allows it (``ldiff``, the
``lightning`` and ``torch`` classes, and packages the user lists in
``LDIFF_ALLOW_IMPORTS``): a config file is data, so it can never make ``ldiff`` import or
run a module the user did not allow.

A component is written as in LightningCLI::

    class_path: ldiff.observe.Subsample
    init_args: {stride: 4}
"""

from __future__ import annotations

import collections.abc
import copy
import inspect
import os
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ldiff.imports import resolve_class


def load_yaml(path: str | os.PathLike) -> dict[str, Any]:
    """Parse a YAML mapping safely; errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such config file")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise ValueError(f"{path}: not valid YAML ({str(error).splitlines()[0]})") from None
    if not isinstance(data, dict):
        raise ValueError(f"{path}: expected a mapping at the top level")
    return data


def load_config(path: str | os.PathLike, overrides: list[str] | None = None) -> dict[str, Any]:
    """The YAML mapping at ``path`` with the ``--set`` assignments ``overrides`` applied
    (:func:`apply_overrides`)."""
    return apply_overrides(load_yaml(path), overrides)


def apply_overrides(cfg: dict[str, Any], assignments: list[str] | None) -> dict[str, Any]:
    """``cfg`` with each ``KEY=VALUE`` of ``assignments`` (``--set``) applied, in order.

    ``KEY`` is a dotted path into the mapping (``model.samples``,
    ``strategies.mmps.init_args.maxiter``); a missing mapping on the way is created, so
    a key the file leaves to its default can be set. ``VALUE`` is parsed like a YAML
    value, safely: ``8`` is an int, ``0.1`` a float, ``[2, 4]`` a list, ``null`` None,
    anything else a string. The keys are then checked like the file's own (an unknown
    key is refused by name). ``cfg`` itself is not modified.
    """
    cfg = copy.deepcopy(cfg)
    for assignment in assignments or ():
        key, sep, text = assignment.partition("=")
        parts = key.strip().split(".")
        if not sep or not all(parts):
            raise ValueError(f"--set {assignment!r}: need KEY=VALUE with a dotted KEY such as model.samples=8")
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError as error:
            raise ValueError(f"--set {key}: not a valid value {text!r} ({str(error).splitlines()[0]})") from None
        section = cfg
        for depth, part in enumerate(parts[:-1]):
            child = section.get(part)
            if child is None:
                child = section[part] = {}
            elif not isinstance(child, dict):
                raise ValueError(f"--set {key}: {'.'.join(parts[: depth + 1])} is {child!r}, not a mapping")
            section = child
        section[parts[-1]] = value
    return cfg


def check_keys(section: dict[str, Any], allowed: set[str], where: str) -> None:
    """Refuse keys outside ``allowed``, naming the first one and ``where`` it stands."""
    unknown = sorted(set(section) - allowed)
    if unknown:
        raise ValueError(f"{where}: unknown key '{unknown[0]}' (expected one of {', '.join(sorted(allowed))})")


def check_types(section: dict[str, Any], cls: type, where: str) -> None:
    """Refuse a value of ``section`` whose type does not fit the annotation of ``cls``'s
    argument of that name, naming ``where.key``: plain types (``bool``, ``int``,
    ``float``, which accepts an int, ``str``, ``None``), their unions, ``Literal``,
    tuples, lists and sequences of them; other annotations are not checked here."""
    hints = typing.get_type_hints(cls.__init__)
    for key, value in section.items():
        if key in hints and not _fits(value, hints[key]):
            raise ValueError(f"{where}.{key}: expected {_type_name(hints[key])}, got {value!r}")


def _fits(value: Any, hint: Any) -> bool:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, arg) for arg in args)
    if origin is typing.Literal:
        return value in args
    if origin in (tuple, list, collections.abc.Sequence):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_fits(v, a) for v, a in zip(value, args))
        return not args or all(_fits(v, args[0]) for v in value)
    return True


def _type_name(hint: Any) -> str:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return " or ".join(_type_name(arg) for arg in typing.get_args(hint))
    if hint is type(None):
        return "null"
    return getattr(hint, "__name__", None) or str(hint).replace("typing.", "")


def instantiate(spec: dict[str, Any], where: str, base: type | None = None, **extra: Any) -> Any:
    """Build ``class_path(**init_args, **extra)``, a subclass of ``base`` if given; a bad
    or refused config or argument names ``where``."""
    if not isinstance(spec, dict):
        raise ValueError(f"{where}: expected a class_path config (a mapping with class_path and init_args), got {spec!r}")
    check_keys(spec, {"class_path", "init_args"}, where)
    cls = resolve_class(spec.get("class_path"), where, base)
    if not isinstance(spec.get("init_args") or {}, dict):
        raise ValueError(f"{where}: init_args must be a mapping, got {spec['init_args']!r}")
    init_args = dict(spec.get("init_args") or {})
    accepted = inspect.signature(cls).parameters
    if not any(p.kind == p.VAR_KEYWORD for p in accepted.values()):
        check_keys(init_args, set(accepted) - set(extra), f"{where}.init_args")
    try:
        return cls(**init_args, **extra)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: {error}") from None


def select(strategies: dict[str, Any], only: list[str] | None, where: str) -> dict[str, Any]:
    """The strategies named in ``only`` (all if None), refusing unknown names."""
    if not only:
        return strategies
    unknown = [name for name in only if name not in strategies]
    if unknown:
        raise ValueError(f"{where}: --only names no strategy {unknown[0]!r} (the config has {', '.join(strategies)})")
    return {name: strategies[name] for name in only}
