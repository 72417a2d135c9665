"""Registering components under snake-case names in Detectron2 registries."""
from typing import Callable

__all__ = ["register_by_name"]


def register_by_name(registry, name: str, what: str) -> Callable:
    """
    Class decorator: register a class in a Detectron2 ``registry`` under ``name`` (``Registry.register``
    would use the class name; configs name these components in snake case). ``what`` names the kind of
    component in the errors (an empty or already registered name is refused).
    """
    if not isinstance(name, str) or not name:
        raise ValueError(f"a {what} name must be a non-empty string, got {name!r}")

    def deco(cls):
        if name in registry:
            raise ValueError(f"a {what} named {name!r} is already registered")
        registry._do_register(name, cls)
        return cls

    return deco
