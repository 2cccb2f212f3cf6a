"""Config keys as an operator writes them: a pydantic validation error becomes one line naming the key
(`destinations.pacs.host`, never the union's internal tag) with a "did you mean" for a misspelt key.

Used by config.load_settings for every command, and so by `x2x config check` and `x2x serve`.
"""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel


def _strip(annotation: Any) -> Any:
    """Annotated[X, ...] -> X; Optional[X] -> X."""
    while typing.get_origin(annotation) is typing.Annotated:
        annotation = typing.get_args(annotation)[0]
    if typing.get_origin(annotation) is typing.Union:
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        if len(args) == 1:
            return _strip(args[0])
    return annotation


def union_members(annotation: Any) -> dict[str, type[BaseModel]]:
    """For a union of models told apart by a `type` literal: tag -> model; else empty."""
    annotation = _strip(annotation)
    if typing.get_origin(annotation) is not typing.Union:
        return {}
    members: dict[str, type[BaseModel]] = {}
    for arg in typing.get_args(annotation):
        model = _strip(arg)
        if isinstance(model, type) and issubclass(model, BaseModel) and "type" in model.model_fields:
            for tag in typing.get_args(model.model_fields["type"].annotation):
                members[str(tag)] = model
    return members


def _walk(root: type[BaseModel], loc: tuple[Any, ...]) -> tuple[list[str], type[BaseModel] | None]:
    """The key as written (tags dropped) and the model that holds its last part."""
    shown, holder, _ = _walk_union(root, loc)
    return shown, holder


def _walk_union(root: type[BaseModel], loc: tuple[Any, ...]
                ) -> tuple[list[str], type[BaseModel] | None, dict[str, type[BaseModel]]]:
    """As _walk, plus the union the holder was chosen from (tag -> model; empty when none)."""
    shown: list[str] = []
    holder: type[BaseModel] | None = None
    siblings: dict[str, type[BaseModel]] = {}
    current: Any = root
    for part in loc:
        current = _strip(current)
        members = union_members(current)
        if members and str(part) in members:  # the discriminated union's tag: not part of the key
            current, siblings = members[str(part)], members
            continue
        shown.append(str(part))
        origin = typing.get_origin(current)
        if origin is dict:
            current = typing.get_args(current)[1]
        elif origin is list:
            current = typing.get_args(current)[0]
        elif isinstance(current, type) and issubclass(current, BaseModel):
            holder = current
            field = current.model_fields.get(str(part))
            current = field.annotation if field is not None else None
        else:
            current = None
    return shown, holder, siblings


def closest(word: str, known: typing.Iterable[str]) -> str | None:
    found = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return found[0] if found else None


def describe_error(root: type[BaseModel], error: Any) -> str:
    """One line for one pydantic error (an `ErrorDetails` dict) of the settings model `root`."""
    loc = tuple(error.get("loc", ()))
    shown, holder, siblings = _walk_union(root, loc)
    key = ".".join(shown) or "<root>"
    kind = error.get("type")
    if kind == "extra_forbidden" and shown:
        known = list(holder.model_fields) if holder is not None else []
        guess = closest(shown[-1], known)
        other = [tag for tag, model in siblings.items() if model is not holder and shown[-1] in model.model_fields]
        if guess:
            hint = f" (did you mean '{guess}'?)"
        elif other:
            hint = f" ({shown[-1]} is a key of type {' / '.join(other)}; this table's keys: {', '.join(known)})"
        else:
            hint = f" (known: {', '.join(known)})" if known else ""
        return f"unknown config key '{key}'{hint}"
    if kind == "destination_type":
        given = error.get("input", {}).get("type") if isinstance(error.get("input"), dict) else None
        guess = closest(str(given), ("cstore", "stow", "folder")) if given is not None else None
        hint = f" (did you mean '{guess}'?)" if guess else ""
        return f"invalid config key '{key}.type': {given!r} is not a destination type: cstore, stow or folder{hint}"
    if kind == "missing" and holder is not None:
        required = [name for name, f in holder.model_fields.items() if f.is_required() and name != "type"]
        what = getattr(holder, "config_label", holder.__name__)
        return f"missing config key '{key}' ({what} needs {', '.join(required)})"
    message = str(error.get("msg", "invalid")).removeprefix("Value error, ")
    return f"invalid config key '{key}': {message}"


def describe_errors(root: type[BaseModel], errors: typing.Iterable[Any]) -> list[str]:
    """One line per problem; unknown keys first (a misspelt key is usually why a required one is missing);
    the missing keys of one table in one line."""
    ordered = sorted(errors, key=lambda e: e.get("type") != "extra_forbidden")
    lines: list[str] = []
    missing: dict[tuple[Any, ...], list[str]] = {}
    for error in ordered:
        loc = tuple(error.get("loc", ()))
        if error.get("type") == "missing" and len(loc) > 1:
            if loc[:-1] not in missing:
                missing[loc[:-1]] = []
                lines.append(f"missing:{len(missing) - 1}")  # placeholder, keeps the order
            missing[loc[:-1]].append(str(loc[-1]))
            continue
        lines.append(describe_error(root, error))
    for i, (table, names) in enumerate(missing.items()):
        shown, holder = _walk(root, (*table, names[0]))
        where = ".".join(shown[:-1])
        what = getattr(holder, "config_label", holder.__name__ if holder else "this table")
        required = [n for n, f in holder.model_fields.items() if f.is_required() and n != "type"] if holder else []
        keys = ", ".join(f"'{where}.{n}'" for n in names)
        lines[lines.index(f"missing:{i}")] = (
            f"missing config key{'s' if len(names) > 1 else ''} {keys} ({what} needs {', '.join(required)})"
        )
    return lines
