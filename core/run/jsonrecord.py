"""What the records of a run's JSON files share (:mod:`chipbench.run.resultrecord`): typed fields
checked by kind, every other key kept as read, the keys written back in the order they were read,
and the one line that names the file, the field and its value for whatever a record refuses."""

from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, Dict, Sequence, Tuple, Type, TypeVar, Union

from chipbench.errors import UserError
from chipbench.util.text import shown

Source = Union[str, Path]
"""Where a record was read from, as its refusals name it (a file, or a case's ``run()``)."""
Kinds = Tuple[type, ...]
R = TypeVar("R", bound="JsonRecord")

NUMBER: Kinds = (int, float)
FIX_RESULT = "restore the result.json that `core run` wrote, or leave that run out"
FIX_NOT_RESULT = "give run folders written by `core run`, or their result.json"
FIX_PROGRESS = "restore the progress.json that the run wrote, or start a new run"


def _fix_for(source: Source) -> str:
    return FIX_PROGRESS if Path(str(source)).name == "progress.json" else FIX_RESULT


def refused(source: Source, name: str, value: Any, expected: str) -> UserError:
    """The one line of a field that a record refuses: ``<file>: <field> is <value>, not <...>``."""
    return UserError("{}: {} is {}, not {}".format(source, name, shown(value), expected),
                     _fix_for(source))


def expected_kinds(kinds: Kinds) -> str:
    """How a refusal names ``kinds``: "a number", or "a str or dict"."""
    return "a number" if kinds == NUMBER else "a " + " or ".join(k.__name__ for k in kinds)


def of_kind(value: Any, kinds: Kinds) -> bool:
    """Whether ``value`` is one of ``kinds`` (a bool is a number only where ``bool`` is listed)."""
    return isinstance(value, kinds) and (bool in kinds or not isinstance(value, bool))


def check_kinds(data: Dict[str, Any], kinds: Dict[str, Kinds], names: Sequence[str],
                source: Source, prefix: str = "") -> None:
    """Refuse a field of ``names`` in ``data`` that is neither absent, null nor of its kinds."""
    for name in names:
        value = data.get(name)
        if value is not None and not of_kind(value, kinds[name]):
            raise refused(source, prefix + name, value, expected_kinds(kinds[name]))


def _plain(value: Any) -> Any:
    if isinstance(value, JsonRecord):
        return value.to_json()
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


class JsonRecord:
    """What the records of a run's files share: typed fields, ``other`` (every key they do not
    type, kept as read) and ``key_order`` (the keys read, in order; a record built in code lists
    the keys it writes even when null)."""

    other: Dict[str, Any]
    key_order: Tuple[str, ...]
    KINDS: ClassVar[Dict[str, Kinds]] = {}
    """The kind of each typed field (nested records apart)."""

    @classmethod
    def json_fields(cls) -> Tuple[str, ...]:
        """The JSON keys this record types, in the order it writes them."""
        return tuple(f.name for f in fields(cls)  # type: ignore[arg-type]
                     if f.name not in ("other", "key_order"))

    def value(self, name: str) -> Any:
        """A field by its JSON name: a typed one, or one kept in ``other`` (a case's metric)."""
        return getattr(self, name) if name in self.json_fields() else self.other.get(name)

    def to_json(self) -> Dict[str, Any]:
        """The JSON object: the keys it was read with (or built to write) in their order, then
        every other typed field that holds a value, then the keys it does not type."""
        typed = self.json_fields()
        out: Dict[str, Any] = {}
        for name in self.key_order:
            value = getattr(self, name) if name in typed else None
            if value is None and name in self.other:
                out[name] = self.other[name]
            elif name in typed:
                out[name] = _plain(value)
        for name in typed:
            if name not in out and getattr(self, name) is not None:
                out[name] = _plain(getattr(self, name))
        for name, value in self.other.items():
            out.setdefault(name, value)
        return out

    @classmethod
    def _typed_from(cls: Type[R], data: Dict[str, Any], **converted: Any) -> R:
        """The record of ``data`` as read (checked already): each typed field that holds a
        value of its kind, ``converted`` for its nested records, the rest in ``other``."""
        typed, values, other = cls.json_fields(), dict(converted), {}
        for name, value in data.items():
            if name in converted:
                continue
            if name in typed and (value is None or of_kind(value, cls.KINDS[name])):
                values[name] = value
            else:
                other[name] = value
        return cls(other=other, key_order=tuple(data), **values)  # type: ignore[call-arg]
