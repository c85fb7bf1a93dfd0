"""Immutable value records without dataclasses.

`@dataclass(frozen=True)` generates its methods by compiling source text when the class is
defined: ~0.5-1 ms per class, paid by every `aarm-sandbox run` for each record defined on
its startup path. A record here is a plain class: its fields are its `__slots__`, its
`__init__` is written out (compiled once into the .pyc) and sets each field through
`object.__setattr__`; this base gives what the frozen dataclasses gave: assignment
refused, equality and hashing by value (same class, same fields), and a readable repr.
"""
from __future__ import annotations


class FrozenRecord:
    __slots__ = ()

    def __setattr__(self, name: str, value) -> None:
        raise AttributeError(f"cannot assign to field {name!r}")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"cannot delete field {name!r}")

    def _values(self) -> tuple:
        return tuple(getattr(self, f) for f in self.__slots__)

    def __eq__(self, other: object) -> bool:
        if other.__class__ is self.__class__:
            return self._values() == other._values()
        return NotImplemented

    def __hash__(self) -> int:
        return hash(self._values())

    def __repr__(self) -> str:
        fields = ", ".join(f"{f}={getattr(self, f)!r}" for f in self.__slots__)
        return f"{self.__class__.__qualname__}({fields})"

    def __reduce__(self):
        # (copy and pickle: rebuilt from the field values, whatever __init__'s signature)
        return (_rebuild, (self.__class__, self._values()))


def _rebuild(cls, values: tuple):
    obj = object.__new__(cls)
    for name, value in zip(cls.__slots__, values):
        object.__setattr__(obj, name, value)
    return obj
