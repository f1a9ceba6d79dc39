"""The base of every job-file section, and how pydantic's errors become hfray's problem list.

A section is a pydantic v2 model that refuses unknown keys. ``from_dict`` validates a plain dict (what crosses
Ray boundaries) and turns every pydantic error into one :class:`~hfray.errors.Problem` naming the dotted key,
the value and what was expected; an unknown key gets a "did you mean" from the keys allowed at its place.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError
from typing_extensions import Self

from hfray.errors import ConfigError, Problem


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_default=True)

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able dict: what crosses Ray boundaries."""
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "job") -> Self:
        """Validate a plain dict; every problem at once as a ConfigError naming ``source``."""
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(problems_from_validation(exc, raw, cls), source) from None


def _lookup(raw: Any, loc: tuple[Any, ...]) -> tuple[bool, Any]:
    node = raw
    for part in loc:
        if (
            isinstance(node, dict)
            and part in node
            or isinstance(node, list)
            and isinstance(part, int)
            and part < len(node)
        ):
            node = node[part]
        else:
            return False, None
    return True, node


def _section_keys(root: type[BaseModel], loc: tuple[Any, ...]) -> list[str]:
    """Field names allowed at the parent of ``loc`` (for 'did you mean'), walking down from ``root``."""
    model: Any = root
    for part in loc[:-1]:
        field = model.model_fields.get(part) if isinstance(part, str) else None
        ann = getattr(field, "annotation", None)
        members = [a for a in (ann, *typing.get_args(ann)) if isinstance(a, type) and issubclass(a, BaseModel)]
        if not members:  # Optional[Section] counts as the section
            return []
        model = members[0]
    return list(model.model_fields)


def problems_from_validation(exc: ValidationError, raw: dict[str, Any], root: type[BaseModel]) -> list[Problem]:
    """One Problem per bad key of ``raw`` (validated as ``root``), in pydantic's order, duplicates dropped."""
    problems = []
    for err in exc.errors():
        # Union members and validator names clutter the location; keep the user's keys only.
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and ("[" in p or p.startswith("function-"))))
        if loc[:2] == ("sweep", "parameters") and len(loc) > 3:
            loc = loc[:3] + loc[4:]  # drop the distribution tag pydantic inserts ('uniform', ...)
        where = ".".join(str(p) for p in loc) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _section_keys(root, loc)
            close = difflib.get_close_matches(str(loc[-1]), allowed, n=1)
            hint = f"; did you mean '{close[0]}'?" if close else ""
            msg = f"unknown key{hint} Allowed here: {', '.join(allowed)}" if allowed else "unknown key"
            problems.append(Problem(where, msg))
            continue
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "missing":
            problems.append(Problem(where, "required key is missing"))
            continue
        found, value = _lookup(raw, loc)
        problems.append(Problem(where, msg, value, has_value=found and err["type"] != "value_error"))
    # One problem per location and message: union branches repeat the same complaint.
    seen: set[tuple[str, str]] = set()
    unique = []
    for p in problems:
        if (p.location, p.message) not in seen:
            seen.add((p.location, p.message))
            unique.append(p)
    return unique
