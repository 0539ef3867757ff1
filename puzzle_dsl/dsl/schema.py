"""The base of every recipe object and params.yaml section: one pydantic schema, three uses.

A `Schema` subclass is at once the DSL object a recipe builds (`BLD(lr=5e-4)`), the
params.yaml section it compiles to (`section()`), and the validated settings a stage program
reads back (`from_params(section, "bld.common")`). Built in a recipe, an object remembers the
file:line that built it, takes leading fields positionally, answers a misspelt field with
"did you mean", and prints back as the Python it was written as. Read from params.yaml, an
error names the dotted params key instead. Frozen, `extra="forbid"`; no torch here.

Adding a field to a section is one line in its class, e.g. `betas: Betas = (0.9, 0.95)`.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import os
import sys
import typing
from contextvars import ContextVar
from pathlib import Path
from typing import Annotated, Any, ClassVar, NoReturn, Union

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PrivateAttr,
    Strict,
    ValidationError,
    model_validator,
)

__all__ = ["Betas", "Int", "Num", "ParamsError", "RecipeError", "Schema"]

_DSL_DIR = os.path.dirname(os.path.abspath(__file__))  # frames here are not the recipe's
_WIDTH = 88  # repr lines longer than this are broken one field per line
_PARAMS_KEY: ContextVar[str | None] = ContextVar("params_key", default=None)


class RecipeError(ValueError):
    """A recipe is invalid; the message names the recipe file:line and says how to fix it."""


class ParamsError(RecipeError):
    """A params.yaml value a stage reads is invalid; the message names its dotted key."""


class FieldRule(ValueError):
    """A rule about one field, raised from a validator: errors name the field's path."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


def Int(ge: int | None = None) -> Any:
    """A strict integer (True is not 1), optionally >= `ge`."""
    return Annotated[int, Strict(), Field(ge=ge)]


def Num(gt: float | None = None, ge: float | None = None, le: float | None = None,
        lt: float | None = None) -> Any:
    """A number (int or float, kept as written so params.yaml prints it back the same)."""
    return Annotated[Union[Annotated[int, Strict()], Annotated[float, Strict()]],  # noqa: UP007
                     Field(gt=gt, ge=ge, le=le, lt=lt)]


Betas = Annotated[tuple[Num(ge=0, lt=1), Num(ge=0, lt=1)], Field()]


# ---------------------------------------------------------------------------- origin
def _caller_origin() -> str:
    """file:line of the first frame outside this package's schema machinery and pydantic."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_code.co_filename
        if name.startswith("<"):
            if not name.startswith("<frozen"):
                return f"{name}:{frame.f_lineno}"
        elif (os.path.dirname(os.path.abspath(name)) != _DSL_DIR
              and f"{os.sep}pydantic" not in name):
            return f"{show_path(name)}:{frame.f_lineno}"
        frame = frame.f_back
    return "<unknown>:0"


def show_path(path: str) -> str:
    """Relative to the current directory when inside it, else absolute."""
    path = os.path.abspath(path)
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


# ---------------------------------------------------------------------------- messages
_BOUNDS = {"greater_than": ">", "greater_than_equal": ">=", "less_than": "<",
           "less_than_equal": "<="}


def _explain(err: dict, root: type | None) -> tuple[str, str]:
    """(dotted field path, reason) of one pydantic error, in the DSL's words."""
    loc = [p for p in err["loc"] if not (isinstance(p, str) and (
        p in _tags() or p in ("int", "float") or p.startswith("function-")))]
    path, value, kind = ".".join(map(str, loc)), err.get("input"), err["type"]
    ctx = err.get("ctx") or {}
    if kind in _BOUNDS:
        bound = next(iter(ctx.values()))
        return path, f" must be {_BOUNDS[kind]} {bound}, got {value!r}"
    if kind in ("int_type", "int_parsing", "int_from_float"):
        return path, f" must be an integer, got {value!r}"
    if kind in ("float_type", "float_parsing"):
        return path, f" must be a number, got {value!r}" + _yaml_hint(value)
    if kind in ("string_type", "string_too_short"):
        return path, f" must be a non-empty string, got {value!r}"
    if kind in ("bool_type", "bool_parsing"):
        return path, f" must be True or False (true/false in YAML), got {value!r}"
    if kind == "literal_error":
        return path, f" is {value!r}, not one of {ctx.get('expected')}"
    if kind == "extra_forbidden":
        known = _known_fields(root, loc[:-1]) if root else []
        near = difflib.get_close_matches(str(loc[-1]), known, n=1)
        hint = f"did you mean {near[0]!r}? " if near else ""
        return path, f" is not a known key; {hint}known: {', '.join(known)}"
    if kind == "missing":
        return path, " is missing"
    if kind in ("tuple_type", "list_type", "too_short", "too_long"):
        return path, f" must be a list ({err['msg'].lower()}), got {value!r}"
    if kind in ("union_tag_invalid", "union_tag_not_found"):
        tag = str(ctx.get("discriminator", "kind")).strip("'")
        return f"{path}.{tag}", f" is {ctx.get('tag')!r}: use one of {ctx.get('expected_tags')}"
    if kind == "value_error":  # a rule of the object at `path` (or of one of its fields)
        error = ctx.get("error", err["msg"])
        field = getattr(error, "field", None)
        if field is None:
            return path, ": " + str(error)
        path, text = ".".join(p for p in (path, field) if p), str(error)
        return path, text[len(field):] if text.startswith(field + " ") else ": " + text
    return path, f": {err['msg'].lower()}, got {value!r}"


def _yaml_hint(value: Any) -> str:
    """Why a number written like 1e-4 arrives as text: YAML 1.1 needs a dot (1.0e-4)."""
    if not isinstance(value, str):
        return ""
    try:
        float(value)
    except ValueError:
        return ""
    return " (YAML reads 1e-4 as text: write 1.0e-4 or 0.0001)"


def _reasons(exc: ValidationError, root: type | None = None) -> list[tuple[str, str]]:
    """One (path, reason) per field, most specific first; a number union's two alternatives
    count once, and a list's own error is dropped when one of its items has one."""
    out: dict[str, str] = {}
    for err in exc.errors():
        path, reason = _explain(err, root)
        if path in out and out[path].startswith(" must be an integer") and "number" in reason:
            out[path] = reason
        out.setdefault(path, reason)
    return [(p, r) for p, r in out.items()
            if not any(q.startswith(p + ".") for q in out if p and q != p)]


def join(path: str, reason: str) -> str:
    """`path reason`, or `path: reason` for a rule about the whole object."""
    return f"{path}{reason}" if path else reason.removeprefix(": ").lstrip()


def _schemas(cls: type | None = None) -> list[type]:
    """Every Schema subclass, recursively."""
    out = []
    for sub in (cls or Schema).__subclasses__():
        out += [sub, *_schemas(sub)]
    return out


@functools.cache
def _tags() -> frozenset[str]:
    """Names pydantic puts in an error's location for union members: class names, kinds."""
    names = set()
    for cls in _schemas():
        names.add(cls.__name__)
        if "kind" in cls.model_fields:
            names.update(typing.get_args(cls.model_fields["kind"].annotation))
    return frozenset(names)


def _inner(annotation: Any) -> list[type]:
    """The Schema classes inside a field type (through Optional, unions, tuples, dicts)."""
    if isinstance(annotation, type) and issubclass(annotation, Schema):
        return [annotation]
    return [c for a in typing.get_args(annotation) for c in _inner(a)]


def _known_fields(root: type, loc: list) -> list[str]:
    """Field names of the schema(s) at `loc` under `root` (for "did you mean")."""
    here = [root]
    for part in loc:
        inner = [c for cls in here if part in cls.model_fields
                 for c in _inner(cls.model_fields[part].annotation)]
        here = inner or here
    return sorted({n for cls in here for n in cls.model_fields if n not in cls.hidden})


def _call_text(cls: type, kwargs: dict) -> str:
    """`Name(k=v, ...)` as the recipe wrote it, short."""
    text = f"{cls.__name__}(" + ", ".join(f"{k}={_fmt(v)}" for k, v in kwargs.items()) + ")"
    return text if len(text) <= 60 and "\n" not in text else f"{cls.__name__}(...)"


# ---------------------------------------------------------------------------- repr
def _fmt(value: Any, indent: int = 0) -> str:
    """Python source for a field value; tuples print as lists (they are built from lists)."""
    if isinstance(value, tuple):
        items = [_fmt(v, indent + 4) for v in value]
        one = "[" + ", ".join(items) + "]"
        if len(one) + indent <= _WIDTH and "\n" not in one:
            return one
        pad = " " * (indent + 4)
        return "[\n" + "".join(f"{pad}{i},\n" for i in items) + " " * indent + "]"
    if isinstance(value, Schema):
        return value._source(indent)
    return repr(value)


# ---------------------------------------------------------------------------- the base
def _positional(cls: type) -> list[str]:
    """Field names in positional order: the class's own fields first, then inherited ones
    (so `GQA(1)` is kv_heads although `name` and `layers` come from Variant)."""
    own = [n for n in vars(cls).get("__annotations__", {}) if n in cls.model_fields]
    rest = [n for n in cls.model_fields if n not in own]
    return [n for n in own + rest if n not in cls.hidden]


class Schema(BaseModel):
    """Base of every DSL object and params section (see the module docstring)."""

    model_config = ConfigDict(frozen=True, extra="forbid", arbitrary_types_allowed=True,
                              hide_input_in_errors=False)
    _origin: str = PrivateAttr(default="<unknown>:0")
    hidden: ClassVar[tuple[str, ...]] = ("kind",)  # fields not shown, listed or positional

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        cls = type(self)
        where = _PARAMS_KEY.get() or _caller_origin()
        names = _positional(cls)
        if len(args) > len(names):
            raise RecipeError(f"{where}: {cls.__name__} takes at most {len(names)} positional "
                              f"arguments ({', '.join(names)}), got {len(args)}")
        for key in kwargs:
            if key not in cls.model_fields:
                near = difflib.get_close_matches(key, names, n=1)
                hint = f"did you mean {near[0]!r}? " if near else ""
                raise RecipeError(f"{where}: {cls.__name__} has no field {key!r}; {hint}"
                                  f"fields: {', '.join(names)}")
        kwargs = {**dict(zip(names, args, strict=False)), **kwargs}
        kwargs = {k: tuple(v) if isinstance(v, list) else str(v) if isinstance(v, Path) else v
                  for k, v in kwargs.items()}
        missing = [n for n, f in cls.model_fields.items() if f.is_required() and n not in kwargs]
        if missing:
            raise RecipeError(f"{where}: {cls.__name__} needs {', '.join(missing)}")
        try:
            super().__init__(**kwargs)
        except ValidationError as exc:
            reasons = "; ".join(join(p, r) for p, r in _reasons(exc, cls))
            raise RecipeError(f"{where}: {_call_text(cls, kwargs)}: {reasons}") from None
        self._origin = where

    # validation from data (params.yaml, nested dicts) builds objects without the DSL's
    # __init__, so errors keep pydantic's full location
    __init__.__pydantic_base_init__ = True

    @model_validator(mode="after")
    def _rules(self):
        self._check()
        return self

    def _check(self) -> None:
        """Cross-field rules; subclasses call self.fail(...) (field ranges are in the types)."""

    @property
    def origin(self) -> str:
        """file:line where this object was built (or the params key it was read from)."""
        return self._origin

    def fail(self, message: str, field: str | None = None) -> NoReturn:
        """Reject this object (`field`: the rule is about that field); the caller of the
        validation adds where and what."""
        raise FieldRule(field, message) if field else ValueError(message)

    def _short(self) -> str:
        text = repr(self)
        return text if len(text) <= 60 and "\n" not in text else type(self).__name__ + "(...)"

    def __setattr__(self, name: str, value: Any) -> None:
        if name.startswith("_"):
            return super().__setattr__(name, value)
        raise dataclasses.FrozenInstanceError(
            f"{type(self).__name__} objects are frozen: build another with "
            f"obj.replace({name}=...)")

    # ------------------------------------------------------------ equality ignores origin
    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and all(
            getattr(self, n) == getattr(other, n) for n in type(self).model_fields)

    def __hash__(self) -> int:
        return hash((type(self), tuple(getattr(self, n) for n in type(self).model_fields)))

    def replace(self, **changes: Any) -> Schema:
        """A validated copy with `changes`; it keeps this object's origin."""
        fields = {n: getattr(self, n) for n in type(self).model_fields}
        token = _PARAMS_KEY.set(self._origin)
        try:
            return type(self)(**{**fields, **changes})
        finally:
            _PARAMS_KEY.reset(token)

    # ------------------------------------------------------------ repr as Python
    def _source(self, indent: int = 0) -> str:
        cls = type(self)
        shown = [(n, getattr(self, n)) for n, f in cls.model_fields.items()
                 if n not in cls.hidden and (f.is_required() or getattr(self, n) != f.default)]
        parts = [f"{k}={_fmt(v, indent + 4)}" for k, v in shown]
        one = f"{cls.__name__}(" + ", ".join(parts) + ")"
        if len(one) + indent <= _WIDTH and "\n" not in one:
            return one
        pad = " " * (indent + 4)
        return (f"{cls.__name__}(\n" + "".join(f"{pad}{p},\n" for p in parts)
                + " " * indent + ")")

    def __repr__(self) -> str:
        return self._source()

    __str__ = __repr__

    # ------------------------------------------------------------ params.yaml
    def section(self, *only: str) -> dict:
        """This object as its params.yaml section (plain YAML types), or only the named fields."""
        return self.model_dump(mode="json", include=set(only) or None)

    @classmethod
    def from_params(cls, section: Any, key: str) -> Schema:
        """Validate params.yaml section `key` (dotted; "" for the whole file) into typed
        settings. A bad value raises ParamsError naming the full key, the reason and the fix.
        """
        where = f"params.yaml {key}".strip()
        if not isinstance(section, dict):
            raise ParamsError(f"{where}: must be a mapping, got {section!r}; recompile the "
                              "recipe (`puzzle-dsl compile RECIPE`)")
        try:
            obj = cls.model_validate(section)
        except ValidationError as exc:
            bad = [(".".join(p for p in (key, path) if p), r) for path, r in _reasons(exc, cls)]
            key, reason = bad[0]
            raise ParamsError("params.yaml: " + "; ".join(join(k, r) for k, r in bad)
                              + fix_hint(key + (".FIELD" if reason.startswith(":") else ""))
                              ) from None
        obj._origin = where
        return obj


def fix_hint(key: str) -> str:
    """How to fix a bad params value: set it right, or recompile from the recipe."""
    return (f". Fix it in params.yaml (or `dvc exp run -S {key}=VALUE`), or recompile the "
            "recipe (`puzzle-dsl compile RECIPE`) to restore the compiled value")
