"""The one gate that every class path passes before anything is imported.

A config names classes by dotted path (``class_path: ldiff.observe.Subsample``), and
importing a module runs its top-level code. So a config, a command-line value or a
checkpoint's hyperparameters could make ``ldiff`` run any installed module, unless the
import is checked first. :func:`check_import` is that check, and there is no other route:

- ``ldiff``'s own config loader (:mod:`ldiff.config`: ``compare``, the oracle, a
  checkpoint's ``net`` and ``schedule`` read by :func:`ldiff.lit.checkpoint.load_prior`)
  resolves classes with :func:`resolve_class`, which calls it;
- jsonargparse, under LightningCLI (``fit``, ``validate``, ``test``, ``predict``), calls
  ``check_import_path`` on every import path it is given as a value, whatever the source:
  argv, inline JSON, ``--config`` files, config files named by a value, callbacks and
  loggers, and the checkpoint hyperparameters that ``fit --ckpt_path`` applies.
  :func:`install` puts :func:`check_import` in its place.

**Allowed.** Paths inside :data:`ALLOWED_ROOTS` (``ldiff``, and the ``lightning`` and
``torch`` classes that configs legitimately name: loggers, callbacks, optimisers), and
the packages a user opts into with the environment variable ``LDIFF_ALLOW_IMPORTS``, a
comma-separated list of module prefixes (``LDIFF_ALLOW_IMPORTS=mypkg,lab.nets``): one's
own network or guidance strategy. Every refusal names the path and the opt-in.
"""

from __future__ import annotations

import importlib
import inspect
import os

ALLOWED_ROOTS = ("ldiff", "lightning", "torch")
"""Packages whose classes any config may name."""

ENV = "LDIFF_ALLOW_IMPORTS"
"""Environment variable: comma-separated module prefixes the user allows besides
:data:`ALLOWED_ROOTS`."""


class ImportRefused(ImportError, ValueError):
    """A class path outside the allowed packages. An ``ImportError`` and a ``ValueError``,
    as jsonargparse's own refusal is, so that its handlers report it as a parse error."""


def allowed_roots() -> tuple[str, ...]:
    """:data:`ALLOWED_ROOTS` and the user's :data:`ENV` entries (dotted module names;
    anything else in the variable is refused with one line naming it)."""
    extra = [entry.strip() for entry in os.environ.get(ENV, "").split(",") if entry.strip()]
    for entry in extra:
        if not all(part.isidentifier() for part in entry.split(".")):
            raise ValueError(f"{ENV}: {entry!r} is not a dotted module name")
    return (*ALLOWED_ROOTS, *extra)


def is_allowed(path: str) -> bool:
    """True when ``path`` is an allowed root or lies inside one (``torch.optim.AdamW``
    inside ``torch``; ``torchvision`` is not inside ``torch``)."""
    return any(path == root or path.startswith(root + ".") for root in allowed_roots())


def check_import(path: str, where: str | None = None) -> None:
    """Raise :class:`ImportRefused` unless ``path`` may be imported (see the module
    docstring); ``where`` (a file, a key) starts the message. Imports nothing."""
    if isinstance(path, str) and is_allowed(path):
        return
    prefix = f"{where}: " if where else ""
    roots = ", ".join(ALLOWED_ROOTS)
    top = str(path).partition(".")[0]
    raise ImportRefused(
        f"{prefix}class path {path!r} lies outside {roots}; refusing to import it "
        f"(to allow your own package: {ENV}={top})"
    )


def resolve_class(class_path: str, where: str, base: type | None = None) -> type:
    """The class at ``class_path``, imported after :func:`check_import` allowed it, and a
    subclass of ``base`` if given; every failure is a ``ValueError`` naming ``where``."""
    check_import(class_path, where)
    module_name, _, name = class_path.rpartition(".")
    try:
        cls = getattr(importlib.import_module(module_name), name)
    except (ImportError, AttributeError):
        raise ValueError(f"{where}: class_path {class_path!r} does not exist") from None
    if not inspect.isclass(cls):
        raise ValueError(f"{where}: {class_path!r} is not a class")
    if base is not None and not issubclass(cls, base):
        raise ValueError(f"{where}: class_path {class_path!r} is not a {base.__name__}")
    return cls


refusals: list[str] = []
"""Paths :func:`check_import` refused for jsonargparse since :func:`install` (the CLI
reports the first in its own words: jsonargparse folds it into a long union message)."""


def _jsonargparse_check(path: str) -> None:
    try:
        check_import(path)
    except ImportRefused:
        refusals.append(path)
        raise


JSONARGPARSE_MODULES = ("jsonargparse._common", "jsonargparse._util", "jsonargparse._typehints")
"""The jsonargparse modules that hold a reference to ``check_import_path``."""


def install() -> None:
    """Make jsonargparse call :func:`check_import` before every import of a path it was
    given as a value (its ``check_import_path``, in each module that uses it), and clear
    :data:`refusals`. Fails loudly if a jsonargparse release moved the hook, rather than
    leave a route open."""
    refusals.clear()
    for name in JSONARGPARSE_MODULES:
        module = importlib.import_module(name)
        if not hasattr(module, "check_import_path"):
            raise RuntimeError(f"{name} has no check_import_path: this jsonargparse release cannot be gated by ldiff")
        module.check_import_path = _jsonargparse_check
