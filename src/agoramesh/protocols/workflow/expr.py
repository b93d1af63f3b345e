"""Workflow expressions: ``${…}`` references and ``when:`` conditions (M-3.5).

References
    ``${steps.NAME.output}``, ``${steps.NAME.output.FIELD.SUB}`` (a number
    indexes a list: ``${steps.review.output.issues.0.message}``),
    ``${steps.NAME.status}`` (``COMPLETED`` or ``SKIPPED`` when read by a later
    step) and ``${inputs.NAME}`` (with a path too). A string that is exactly
    one reference becomes the referenced value with its type (a list stays a
    list); references inside a longer string are stringified — strings as they
    are, anything else as compact JSON. ``$${`` writes a literal ``${``. The
    syntax and this rule are :mod:`.references`', shared with collaborations.

Conditions
    ``when:`` is a small expression over references and literals, e.g.
    ``${steps.review.output.score} >= 50 and ${steps.review.output.issues} == []``.
    It is parsed with :mod:`ast` and evaluated by walking a whitelist —
    comparisons (``== != < <= > >= in not in is is not``), ``and``/``or``/``not``,
    unary minus, string/number/bool/null literals (``true``/``false``/``null``
    also spelled the YAML way), lists, tuples, dicts and ``len(…)`` — never by
    :func:`eval`. References are values, not text: write them bare, not inside
    quotes. A YAML boolean (``when: false``) is a constant condition.

Parsing errors are :class:`~agoramesh.errors.WorkflowInvalid` (the caller adds
which step and field); evaluation errors are ``LookupError`` (a missing field)
or ``TypeError``/``ValueError`` (an impossible comparison), which the engine
reports as the step's failure.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agoramesh.errors import WorkflowInvalid
from agoramesh.protocols.references import Syntax, describe, follow

__all__ = ("NAME_PATTERN", "Condition", "Lookup", "Reference", "references", "render")

#: Step and input names: a letter or ``_``, then letters, digits, ``_`` or ``-``.
NAME_PATTERN = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")

Lookup = Callable[["Reference"], Any]


@dataclass(frozen=True, slots=True)
class Reference:
    """One parsed ``${…}``: ``source`` is ``steps`` or ``inputs``."""

    source: str
    name: str
    attribute: str  # "output" or "status" for steps, "" for inputs
    path: tuple[str, ...]
    text: str  # as written (spaces around trimmed), for messages

    @property
    def step(self) -> str | None:
        """The step this reference reads, if it reads one."""
        return self.name if self.source == "steps" else None

    def follow(self, value: Any) -> Any:
        """The value at ``path`` inside ``value``; LookupError naming what is missing."""
        return follow(value, self.path, text=self.text,
                      root="output" if self.step else self.name)


def _read(parts: list[str], text: str) -> Reference | None:
    source, rest = parts[0], parts[1:]
    if source == "inputs" and rest and NAME_PATTERN.fullmatch(rest[0]):
        return Reference("inputs", rest[0], "", tuple(rest[1:]), text)
    if source == "steps" and len(rest) >= 2 and NAME_PATTERN.fullmatch(rest[0]):
        name, attribute, path = rest[0], rest[1], tuple(rest[2:])
        if attribute == "output" or (attribute == "status" and not path):
            return Reference("steps", name, attribute, path, text)
    return None


_SYNTAX = Syntax(_read, error=WorkflowInvalid,
                 usage="use ${steps.NAME.output[.FIELD…]}, ${steps.NAME.status} or "
                       "${inputs.NAME[.FIELD…]}")

#: ``references(value)``: every reference in the strings of ``value`` (nested too).
references = _SYNTAX.references
#: ``render(value, lookup)``: ``value`` with every reference replaced (see the module doc).
render = _SYNTAX.render


# -- conditions ---------------------------------------------------------------------------

_LITERAL_NAMES: dict[str, Any] = {"true": True, "false": False, "null": None, "none": None}
_COMPARE: dict[type[ast.cmpop], Callable[[Any, Any], bool]] = {
    ast.Eq: lambda a, b: bool(a == b), ast.NotEq: lambda a, b: bool(a != b),
    ast.Lt: lambda a, b: bool(a < b), ast.LtE: lambda a, b: bool(a <= b),
    ast.Gt: lambda a, b: bool(a > b), ast.GtE: lambda a, b: bool(a >= b),
    ast.In: lambda a, b: a in b, ast.NotIn: lambda a, b: a not in b,
    ast.Is: lambda a, b: a is b, ast.IsNot: lambda a, b: a is not b,
}
_ALLOWED = (ast.Expression, ast.BoolOp, ast.And, ast.Or, ast.UnaryOp, ast.Not, ast.USub,
            ast.Compare, ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Name, ast.Load,
            ast.Call, *_COMPARE)
_PLACEHOLDER = "__ref{}__"


@dataclass(frozen=True, slots=True)
class Condition:
    """A parsed ``when:``; :meth:`evaluate` reads references through a lookup."""

    text: str
    references: tuple[Reference, ...]
    _tree: ast.Expression | None = field(repr=False)  # None: a constant (YAML true/false)
    _constant: bool = field(default=True, repr=False)

    @classmethod
    def parse(cls, when: str | bool) -> Condition:
        if isinstance(when, bool):
            return cls(str(when).lower(), (), None, when)
        if not isinstance(when, str) or not when.strip():
            raise WorkflowInvalid(f"a condition must be a non-empty string or a boolean, "
                                  f"got {when!r}")
        refs: list[Reference] = []
        source: list[str] = []
        for token in _SYNTAX.tokens(when):
            if isinstance(token, Reference):
                source.append(_PLACEHOLDER.format(len(refs)))
                refs.append(token)
            else:
                source.append(token)
        try:
            tree = ast.parse("".join(source).strip(), mode="eval")
        except SyntaxError as exc:
            raise WorkflowInvalid(f"condition {when!r} is not an expression: {exc.msg}") from None
        names = [node.id for node in ast.walk(tree) if isinstance(node, ast.Name)]
        known = set(_LITERAL_NAMES) | {_PLACEHOLDER.format(i) for i in range(len(refs))}
        callees = {id(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)}
        for node in ast.walk(tree):
            problem = None if id(node) in callees else _disallowed(node, known)
            if problem:
                raise WorkflowInvalid(f"condition {when!r}: {problem}")
        for index, ref in enumerate(refs):
            if _PLACEHOLDER.format(index) not in names:
                raise WorkflowInvalid(f"condition {when!r}: write {ref.text} bare, not inside "
                                      f"quotes (references are values)")
        return cls(when, tuple(refs), tree)

    def evaluate(self, lookup: Lookup) -> bool:
        """True or False; LookupError/TypeError/ValueError when it cannot be decided."""
        if self._tree is None:
            return self._constant
        values = {_PLACEHOLDER.format(i): lookup(ref) for i, ref in enumerate(self.references)}
        return bool(_evaluate(self._tree.body, values))


def _disallowed(node: ast.AST, known: set[str]) -> str | None:
    if not isinstance(node, _ALLOWED):
        return f"{type(node).__name__} is not allowed (only comparisons, and/or/not, literals)"
    if isinstance(node, ast.Name) and node.id not in known:
        return f"unknown name {node.id!r} (write references as ${{…}}, strings in quotes)"
    if isinstance(node, ast.Dict) and None in node.keys:
        return "** is not allowed"
    if isinstance(node, ast.Call) and (not isinstance(node.func, ast.Name)
                                       or node.func.id != "len" or node.keywords
                                       or len(node.args) != 1):
        return "the only function is len(value)"
    return None


def _evaluate(node: ast.expr, values: dict[str, Any]) -> Any:
    if isinstance(node, ast.Constant):
        return node.value
    if isinstance(node, ast.Name):
        return values[node.id] if node.id in values else _LITERAL_NAMES[node.id]
    if isinstance(node, ast.BoolOp):
        result: Any = isinstance(node.op, ast.And)
        for operand in node.values:  # short-circuits like Python
            result = _evaluate(operand, values)
            if bool(result) is isinstance(node.op, ast.Or):
                return result
        return result
    if isinstance(node, ast.UnaryOp):
        operand = _evaluate(node.operand, values)
        return (not operand) if isinstance(node.op, ast.Not) else -operand
    if isinstance(node, ast.Compare):
        left = _evaluate(node.left, values)
        for operator, comparator in zip(node.ops, node.comparators, strict=True):
            right = _evaluate(comparator, values)
            try:
                if not _COMPARE[type(operator)](left, right):
                    return False
            except TypeError:
                raise TypeError(f"cannot compare {describe(left)} ({left!r:.40}) with "
                                f"{describe(right)} ({right!r:.40})") from None
            left = right
        return True
    if isinstance(node, ast.List | ast.Tuple):
        return [_evaluate(item, values) for item in node.elts]
    if isinstance(node, ast.Dict):
        return {_evaluate(key, values): _evaluate(item, values)
                for key, item in zip(node.keys, node.values, strict=True) if key is not None}
    if isinstance(node, ast.Call):
        argument = _evaluate(node.args[0], values)
        try:
            return len(argument)
        except TypeError:
            raise TypeError(f"len() of {describe(argument)}") from None
    raise ValueError(f"cannot evaluate {type(node).__name__}")  # pragma: no cover - whitelisted
