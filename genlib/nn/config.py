"""Constructor configs: a trained model is rebuilt from a checkpoint without re-stating its architecture.

A *spec* is plain data: ``{"__class__": "package.module.ClassName", "config": {constructor kwargs}}``.
Module-valued arguments are stored as nested specs, so a VAE's spec holds its encoder's, decoder's,
likelihood's and prior's.
The "registry" is Python's import system: any importable ``nn.Module`` class (genlib's or the user's) can be
rebuilt, which keeps the mechanism explicit and means there is no name table to keep in sync.

Classes opt in by inheriting :class:`Configurable`, which records the arguments of the outermost ``__init__``
call. Modules that do not (e.g. a user's own likelihood) are read scikit-learn ``get_params`` style: every
``__init__`` parameter must be stored on the instance under the same name (or ``_name``).
"""

from __future__ import annotations

import functools
import importlib
import inspect
from typing import Any

import torch
from torch import nn

__all__ = ["Configurable", "get_config", "to_spec", "from_spec"]

_CLASS_KEY = "__class__"


class Configurable:
    """Mixin for ``nn.Module`` subclasses: remembers the keyword arguments the instance was built with.

    ``get_config()`` returns them (positional arguments bound to their names, defaults filled in), so
    ``type(m)(**m.get_config())`` builds an identical, freshly initialised module.
    """

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        init = cls.__dict__.get("__init__")
        if init is None:
            return
        signature = inspect.signature(init)

        @functools.wraps(init)
        def recording_init(self, *args: Any, **kw: Any) -> None:
            # Only the outermost __init__ (the most derived class) records: subclasses call super().__init__.
            if "_genlib_config" not in self.__dict__:
                bound = signature.bind(self, *args, **kw)
                bound.apply_defaults()
                config = dict(bound.arguments)
                config.pop(next(iter(signature.parameters)))  # drop `self`
                for name, param in signature.parameters.items():
                    if param.kind is inspect.Parameter.VAR_KEYWORD and name in config:
                        config.update(config.pop(name))
                    elif param.kind is inspect.Parameter.VAR_POSITIONAL and name in config:
                        raise TypeError(f"{cls.__name__}: *{name} arguments cannot be stored in a config")
                object.__setattr__(self, "_genlib_config", config)
            init(self, *args, **kw)

        cls.__init__ = recording_init  # type: ignore[method-assign]

    def get_config(self) -> dict[str, Any]:
        """Constructor keyword arguments of this instance (a shallow copy)."""
        return dict(self.__dict__["_genlib_config"])


def get_config(module: nn.Module) -> dict[str, Any]:
    """Constructor kwargs of ``module``: its ``get_config()`` if any, else read from same-named attributes."""
    if callable(getattr(module, "get_config", None)):
        return module.get_config()
    config: dict[str, Any] = {}
    for name, param in inspect.signature(type(module).__init__).parameters.items():
        if name == "self" or param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        for attr in (name, "_" + name):
            if attr in module.__dict__ or hasattr(module, attr):
                value = getattr(module, attr)
                config[name] = value.detach().cpu().clone() if isinstance(value, torch.Tensor) else value
                break
        else:
            raise ValueError(
                f"cannot recover constructor argument {name!r} of {type(module).__qualname__}: store it as "
                f"self.{name} in __init__, or inherit genlib.nn.config.Configurable, or define get_config()"
            )
    return config


def _class_path(cls: type) -> str:
    if "<locals>" in cls.__qualname__:
        raise ValueError(
            f"{cls.__qualname__} is defined inside a function; define it at module level to save it"
        )
    return f"{cls.__module__}.{cls.__qualname__}"


def _encode(value: Any) -> Any:
    if isinstance(value, nn.Module):
        return to_spec(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_encode(v) for v in value)
    if isinstance(value, dict):
        return {k: _encode(v) for k, v in value.items()}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and _CLASS_KEY in value:
        return from_spec(value)
    if isinstance(value, (list, tuple)):
        return type(value)(_decode(v) for v in value)
    if isinstance(value, dict):
        return {k: _decode(v) for k, v in value.items()}
    return value


def to_spec(module: nn.Module) -> dict[str, Any]:
    """Plain-data description of ``module``'s class and constructor arguments (nested modules included)."""
    if not isinstance(module, nn.Module):
        raise ValueError(f"module must be a torch.nn.Module, got {type(module).__name__}")
    return {_CLASS_KEY: _class_path(type(module)), "config": _encode(get_config(module))}


def _import_class(path: str) -> type:
    module_name, _, qualname = path.rpartition(".")
    # The qualname may itself be dotted (a nested class): import the longest importable prefix.
    while module_name:
        try:
            obj: Any = importlib.import_module(module_name)
            break
        except ModuleNotFoundError:
            module_name, _, head = module_name.rpartition(".")
            qualname = f"{head}.{qualname}"
    else:
        raise ValueError(f"cannot import the module of class {path!r}")
    for part in qualname.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            raise ValueError(f"class {path!r} not found (was it renamed or removed?)")
    if not (isinstance(obj, type) and issubclass(obj, nn.Module)):
        raise ValueError(f"{path!r} is not a torch.nn.Module class")
    return obj


def from_spec(spec: dict[str, Any]) -> nn.Module:
    """Build a freshly initialised module from :func:`to_spec`'s output (load a ``state_dict`` afterwards)."""
    if not (isinstance(spec, dict) and _CLASS_KEY in spec and "config" in spec):
        raise ValueError(f"spec must be a dict with keys {_CLASS_KEY!r} and 'config', got {spec!r:.200}")
    cls = _import_class(spec[_CLASS_KEY])
    return cls(**_decode(spec["config"]))
