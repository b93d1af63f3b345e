"""The offline backend's skills: real, deterministic work with the standard library only.

Each skill is a plain function of typed arguments returning the capability's
output dict (see :data:`~agoramesh.nodes.backends.offline.OFFLINE_CAPABILITIES`);
:class:`~agoramesh.nodes.backends.offline.OfflineBackend` checks parameters
and streams the result. Bad input raises :class:`~agoramesh.errors.InvalidInput`.

The code skills live in :mod:`.offline_code` (review, generation) and
:mod:`.offline_sandbox` (running snippets); they are re-exported here so the
backend has one place to look skills up.
"""

from __future__ import annotations

import ast
import hashlib
import math
import operator
import re
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

from agoramesh.errors import InvalidInput
from agoramesh.nodes.backends.offline_code import generate_python, review_python
from agoramesh.nodes.backends.offline_sandbox import MAX_CODE_BYTES, MAX_TIMEOUT, run_python

__all__ = (
    "MAX_CODE_BYTES",
    "MAX_EXPRESSION",
    "MAX_TIMEOUT",
    "debate",
    "evaluate",
    "generate_python",
    "review_python",
    "run_python",
    "stable_hash",
    "summarize",
    "vote",
    "words",
)

Number = int | float


def stable_hash(*parts: object) -> int:
    """A 64-bit hash of ``parts`` that is the same in every process (unlike ``hash``)."""
    text = "\x00".join(map(str, parts)).encode("utf-8", "surrogatepass")
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big")


# --- math.evaluate -----------------------------------------------------------------------

MAX_EXPRESSION = 1000
_MAX_INT_BITS = 4096  # bounds every intermediate integer, so 9**9**9 is refused, not computed
_OPERATORS: dict[type[ast.operator], Callable[[Any, Any], Any]] = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
    ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod,
    ast.Pow: operator.pow,
}
_CONSTANTS = {"pi": math.pi, "e": math.e, "tau": math.tau}
_FUNCTIONS: dict[str, Callable[..., Any]] = {
    "abs": abs, "round": round, "min": lambda *args: min(args), "max": lambda *args: max(args),
    "sqrt": math.sqrt, "log": math.log}
_ARITY = {"abs": (1, 1), "round": (1, 2), "sqrt": (1, 1), "log": (1, 2)}


def evaluate(expression: str) -> Number:
    """The value of an arithmetic expression, computed over its syntax tree (never ``eval``).

    Integers beyond 64 bits come back as floats: msgpack, the mesh's wire
    format, carries no bigger integers.
    """
    if len(expression) > MAX_EXPRESSION:
        raise InvalidInput(f"expression longer than {MAX_EXPRESSION} characters")
    try:
        tree = ast.parse(expression.strip(), mode="eval")
    except SyntaxError as exc:
        raise InvalidInput(f"not an arithmetic expression: {exc.msg}") from None
    except (ValueError, RecursionError, MemoryError) as exc:
        raise InvalidInput(f"not an arithmetic expression: {exc}") from None
    try:
        value = _eval(tree.body)
    except RecursionError:
        raise InvalidInput("the expression is nested too deeply") from None
    if isinstance(value, int) and value.bit_length() > 63:
        try:
            value = float(value)
        except OverflowError:
            raise InvalidInput("the result is too large to return as a number") from None
    return value


def _eval(node: ast.expr) -> Number:
    match node:
        case ast.Constant(value=bool()):
            pass
        case ast.Constant(value=int() | float() as value):
            return _checked(value)
        case ast.Name(id=name) if name in _CONSTANTS:
            return _CONSTANTS[name]
        case ast.Name(id=name):
            raise InvalidInput(f"unknown name {name!r}; known: {', '.join(_CONSTANTS)}")
        case ast.UnaryOp(op=ast.USub(), operand=operand):
            return -_eval(operand)
        case ast.UnaryOp(op=ast.UAdd(), operand=operand):
            return _eval(operand)
        case ast.BinOp(left=left, op=op, right=right) if type(op) in _OPERATORS:
            return _binary(op, _eval(left), _eval(right))
        case ast.Call(func=ast.Name(id=name), args=args, keywords=[]) if name in _FUNCTIONS:
            return _call(name, [_eval(arg) for arg in args])
    raise InvalidInput(f"{ast.unparse(node)[:60]!r} is not allowed: use numbers, + - * / // % **,"
                       f" parentheses, {', '.join(_CONSTANTS)} and {', '.join(_FUNCTIONS)}()")


def _checked(value: Any) -> Number:
    if isinstance(value, complex):
        raise InvalidInput("the result is a complex number")
    if isinstance(value, float) and not math.isfinite(value):
        raise InvalidInput("the result is not a finite number")
    if isinstance(value, int) and value.bit_length() > _MAX_INT_BITS:
        raise InvalidInput(f"a number has more than {_MAX_INT_BITS} bits")
    return value  # type: ignore[no-any-return]


def _too_big() -> InvalidInput:
    return InvalidInput(f"the result would exceed {_MAX_INT_BITS} bits")


def _binary(op: ast.operator, left: Number, right: Number) -> Number:
    if isinstance(left, int) and isinstance(right, int):
        # Refuse before computing: these are the only operations that grow integers fast.
        if isinstance(op, ast.Mult) and left.bit_length() + right.bit_length() > _MAX_INT_BITS:
            raise _too_big()
        # |left| ** right has at least (bits(left) - 1) * right + 1 bits.
        if isinstance(op, ast.Pow) and right > 0 and abs(left) > 1 and (
                right > _MAX_INT_BITS or (left.bit_length() - 1) * right >= _MAX_INT_BITS):
            raise _too_big()
    try:
        return _checked(_OPERATORS[type(op)](left, right))
    except ZeroDivisionError:
        raise InvalidInput("division by zero") from None
    except OverflowError:
        raise InvalidInput("the result is too large") from None


def _call(name: str, args: list[Number]) -> Number:
    low, high = _ARITY.get(name, (1, 64))
    if not low <= len(args) <= high:
        raise InvalidInput(f"{name}() takes {low} to {high} arguments, got {len(args)}")
    if name == "round" and len(args) == 2 and (not isinstance(args[1], int) or abs(args[1]) > 100):
        # round(5, -10**9) would build 10**10**9 first.
        raise InvalidInput("round() digits must be an integer from -100 to 100")
    try:
        return _checked(_FUNCTIONS[name](*args))
    except (ValueError, ZeroDivisionError, OverflowError) as exc:
        raise InvalidInput(f"{name}(): {exc}") from None


# --- text.summarize ----------------------------------------------------------------------

_STOP_WORDS = frozenset("""
a about above after again against all also am an and any are as at be because been before
being below between both but by can could did do does doing down during each few for from
further had has have having he her here hers herself him himself his how i if in into is it its
itself just me more most my myself no nor not now of off on once only or other our ours
ourselves out over own same she should so some such than that the their theirs them themselves
then there these they this those through to too under until up very was we were what when
where which while who whom why will with would you your yours yourself yourselves
""".split())
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


def words(text: str) -> list[str]:
    """The lower-cased content words of ``text`` (stop words removed)."""
    return [word for word in _WORD.findall(text.lower()) if word not in _STOP_WORDS]


def summarize(text: str, max_sentences: int = 3) -> dict[str, Any]:
    """The ``max_sentences`` most representative sentences of ``text``, in their order.

    A sentence scores the sum of its content words' frequencies in the whole
    text, each divided by the top frequency; ties go to the earlier sentence.
    """
    sentences = [part for part in _SENTENCE_END.split(" ".join(text.split())) if part]
    frequency = Counter(words(text))
    top = max(frequency.values(), default=1)
    scores = [sum(frequency[word] / top for word in words(sentence)) for sentence in sentences]
    ranked = sorted(range(len(sentences)), key=lambda index: (-scores[index], index))
    chosen = [sentences[index] for index in sorted(ranked[:max_sentences])]
    return {"summary": " ".join(chosen), "sentences": chosen}


# --- text.debate and vote ----------------------------------------------------------------

_ARGUMENTS = {
    "for": (
        "{topic} deserves support: its benefits compound over time, and the risks people "
        "fear can be managed with care.",
        "The strongest case for {topic} is practical: it solves a real problem that the "
        "alternatives leave open.",
        "Evidence from comparable cases favours {topic}; where it was tried, the gains "
        "outweighed the costs.",
        "Rejecting {topic} has a price too: the status quo keeps every cost we already pay.",
        "{topic} widens the options available to the people it affects, and choice is worth "
        "defending.",
    ),
    "against": (
        "{topic} promises more than it can deliver: its hidden costs arrive later and land on "
        "others.",
        "The case against {topic} is caution: once adopted, it is hard to reverse if it fails.",
        "Comparable experiments with {topic} show mixed results at best, and the failures were "
        "expensive.",
        "{topic} solves a narrow problem while creating wider ones that nobody has budgeted for.",
        "Simpler alternatives reach the same goals as {topic} with fewer risks.",
    ),
}


def debate(topic: str, position: str = "for", round_: int = 1,
           history: Sequence[Any] = ()) -> dict[str, Any]:
    """One debate turn: a templated argument chosen by a stable hash of topic, round, position.

    From the second turn on, it answers the key word of the last argument in ``history``.
    """
    seed = stable_hash(topic, round_, position)
    subject = " ".join(topic.split()) or "the proposal"
    argument = _ARGUMENTS[position][seed % len(_ARGUMENTS[position])].format(topic=subject)
    argument = argument[0].upper() + argument[1:]
    last = history[-1] if history else None
    if isinstance(last, dict):
        last = last.get("argument")
    if isinstance(last, str) and (key := Counter(words(last)).most_common(1)):
        argument += f" The other side leans on '{key[0][0]}', but that does not settle the matter."
    return {"argument": argument, "stance": position,
            "confidence": round(0.5 + (seed >> 16) % 41 / 100, 2)}


def vote(question: str, options: Sequence[str], voter: str = "") -> dict[str, Any]:
    """A ballot: the option sharing the most content words with the question.

    Ties (including no overlap at all) go to the tied option with the lowest
    :func:`stable_hash` of question, voter and option, so different voters may
    differ, and each always votes the same way.
    """
    asked = set(words(question))
    overlap = [sorted(asked & set(words(option))) for option in options]
    best = max(len(shared) for shared in overlap)
    tied = [index for index, shared in enumerate(overlap) if len(shared) == best]
    choice = min(tied, key=lambda index: stable_hash(question, voter, options[index]))
    if len(tied) == 1:
        reason = f"it shares the most words with the question ({', '.join(overlap[choice])})"
    else:
        reason = (f"{len(tied)} options tie with {best} shared word(s); the tie is broken by a "
                  f"stable hash of the question, the voter and the option")
    return {"choice": options[choice], "reason": reason}

