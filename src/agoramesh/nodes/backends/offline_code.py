"""Offline code skills: static review of Python with ``ast``, and template generation.

Generated code is written to pass :func:`review_python` with no errors and to
run under :func:`~agoramesh.nodes.backends.offline_sandbox.run_python`.
"""

from __future__ import annotations

import ast
import builtins
import re
from collections import Counter
from string import Template
from typing import Any

__all__ = ("MAX_BRANCHES", "MAX_FUNCTION_LINES", "generate_python", "review_python")

# --- code.review.python ------------------------------------------------------------------

MAX_FUNCTION_LINES = 50
MAX_BRANCHES = 12
_MAX_ISSUES = 200
_SEVERITIES = ("error", "warning", "info")
_PENALTY = {"error": 25, "warning": 8, "info": 2}
_BUILTINS = frozenset(name for name in dir(builtins) if not name.startswith("_"))
_BRANCHES = (ast.If, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.IfExp,
             ast.match_case)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
_MUTABLE = (ast.List, ast.Dict, ast.Set, ast.ListComp, ast.DictComp, ast.SetComp)


def review_python(code: str) -> dict[str, Any]:
    """Static review of Python source; a syntax error is an issue, not a failure."""
    try:
        tree = ast.parse(code)
        issues = _review(tree)
    except SyntaxError as exc:
        issues = [_issue(exc.lineno or 1, "error", "syntax-error", f"syntax error: {exc.msg}")]
    except (ValueError, RecursionError, MemoryError) as exc:
        issues = [_issue(1, "error", "syntax-error", f"cannot parse: {exc or 'nested too deeply'}")]
    issues.sort(key=lambda i: (i["line"], _SEVERITIES.index(i["severity"]), i["code"],
                               i["message"]))
    counts = Counter(issue["severity"] for issue in issues)
    penalty = sum(_PENALTY[issue["severity"]] for issue in issues)
    syntax = any(issue["code"] == "syntax-error" for issue in issues)
    summary = ("no issues found" if not issues else
               f"{len(issues)} issue(s): " + ", ".join(f"{counts[s]} {s}" for s in _SEVERITIES))
    if len(issues) > _MAX_ISSUES:
        summary += f" (the first {_MAX_ISSUES} are listed)"
    return {"issues": issues[:_MAX_ISSUES], "score": 0 if syntax else max(0, 100 - penalty),
            "summary": summary}


def _issue(line: int, severity: str, code: str, message: str) -> dict[str, Any]:
    return {"line": line, "severity": severity, "code": code, "message": message}


def _walk_scope(root: ast.AST) -> list[ast.AST]:
    """The nodes under ``root`` that are not inside a nested function or class."""
    found: list[ast.AST] = []
    stack = list(ast.iter_child_nodes(root))
    while stack:
        node = stack.pop()
        found.append(node)
        if not isinstance(node, _SCOPES):
            stack.extend(ast.iter_child_nodes(node))
    return found


def _is_main_guard(node: ast.AST) -> bool:
    return (isinstance(node, ast.If) and isinstance(node.test, ast.Compare)
            and isinstance(node.test.left, ast.Name) and node.test.left.id == "__name__")


def _review(tree: ast.Module) -> list[dict[str, Any]]:
    parents = {child: parent for parent in ast.walk(tree) for child in ast.iter_child_nodes(parent)}
    issues: list[dict[str, Any]] = []
    imported: dict[str, int] = {}
    used: set[str] = set()
    shadowed: set[tuple[int, str]] = set()

    def shadow(line: int, name: str) -> None:
        if name in _BUILTINS:
            shadowed.add((line, name))

    for node in ast.walk(tree):
        line = getattr(node, "lineno", 1)
        if isinstance(node, ast.Name):
            used.add(node.id)
            if isinstance(node.ctx, ast.Store):
                shadow(line, node.id)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            for alias in node.names:
                if alias.name == "*":
                    issues.append(_issue(line, "warning", "wildcard-import",
                                         "`import *` hides where names come from"))
                elif not (isinstance(node, ast.ImportFrom) and node.module == "__future__") and (
                        alias.asname is None or alias.asname != alias.name):  # `as x` re-exports
                    bound = alias.asname or alias.name.split(".")[0]
                    imported.setdefault(bound, line)
                    shadow(line, bound)
        elif isinstance(node, ast.ExceptHandler):
            if node.type is None:
                issues.append(_issue(line, "warning", "bare-except",
                                     "bare `except:` also catches KeyboardInterrupt, SystemExit"))
            if node.name:
                shadow(line, node.name)
        elif isinstance(node, ast.arg):
            shadow(line, node.arg)
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
            if node.func.id in ("eval", "exec"):
                issues.append(_issue(line, "error", "eval-exec",
                                     f"`{node.func.id}()` runs arbitrary code"))
            elif node.func.id == "print":
                ancestor: ast.AST | None = parents.get(node)
                while ancestor is not None and not _is_main_guard(ancestor):
                    ancestor = parents.get(ancestor)
                if ancestor is None:
                    issues.append(_issue(line, "info", "print-call",
                                         "`print()` left in; use logging or return the value"))
        elif isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for index, op in enumerate(node.ops):
                if isinstance(op, ast.Eq | ast.NotEq) and any(
                        isinstance(side, ast.Constant) and side.value is None
                        for side in operands[index:index + 2]):
                    issues.append(_issue(line, "warning", "compare-none",
                                         "compare with None using `is` / `is not`"))
        elif isinstance(node, ast.ClassDef):
            shadow(line, node.name)
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            for default in [*node.args.defaults, *node.args.kw_defaults]:
                if isinstance(default, _MUTABLE) or (
                        isinstance(default, ast.Call) and isinstance(default.func, ast.Name)
                        and default.func.id in ("list", "dict", "set")):
                    issues.append(_issue(default.lineno, "warning", "mutable-default",
                                         "a mutable default is shared between calls; use None"))
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            issues.extend(_review_function(node, parents.get(node)))
            if not isinstance(parents.get(node), ast.ClassDef):
                shadow(line, node.name)
    for name in _exported(tree):
        used.add(name)
    issues.extend(_issue(line, "warning", "unused-import", f"`{name}` is imported but unused")
                  for name, line in imported.items() if name not in used)
    issues.extend(_issue(line, "warning", "builtin-shadowing",
                         f"`{name}` shadows the builtin of the same name")
                  for line, name in sorted(shadowed))
    return issues


def _exported(tree: ast.Module) -> list[str]:
    names: list[str] = []
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(
                isinstance(target, ast.Name) and target.id == "__all__" for target in node.targets):
            names.extend(item.value for item in ast.walk(node.value)
                         if isinstance(item, ast.Constant) and isinstance(item.value, str))
    return names


def _review_function(node: ast.FunctionDef | ast.AsyncFunctionDef,
                     parent: ast.AST | None) -> list[dict[str, Any]]:
    issues = []
    length = (node.end_lineno or node.lineno) - node.lineno + 1
    if length > MAX_FUNCTION_LINES:
        issues.append(_issue(node.lineno, "warning", "too-long",
                             f"`{node.name}` is {length} lines long (limit {MAX_FUNCTION_LINES})"))
    branches = sum(isinstance(child, _BRANCHES) for child in _walk_scope(node))
    if branches > MAX_BRANCHES:
        issues.append(_issue(node.lineno, "warning", "too-many-branches",
                             f"`{node.name}` has {branches} branches (limit {MAX_BRANCHES})"))
    public = not node.name.startswith("_") and (
        isinstance(parent, ast.Module)
        or (isinstance(parent, ast.ClassDef) and not parent.name.startswith("_")))
    if public and ast.get_docstring(node) is None:
        issues.append(_issue(node.lineno, "info", "missing-docstring",
                             f"public function `{node.name}` has no docstring"))
    return issues


# --- code.generate.python ----------------------------------------------------------------

_TEMPLATES: dict[str, tuple[str, str]] = {
    "fizzbuzz": (r"fizz\s*buzz", '''\
def fizzbuzz(limit: int) -> list[str]:
    """Return the FizzBuzz words for the numbers 1 to ``limit``."""
    result = []
    for number in range(1, limit + 1):
        if number % 15 == 0:
            result.append("FizzBuzz")
        elif number % 3 == 0:
            result.append("Fizz")
        elif number % 5 == 0:
            result.append("Buzz")
        else:
            result.append(str(number))
    return result


if __name__ == "__main__":
    for word in fizzbuzz($number):
        print(word)
'''),
    "fibonacci": (r"fibonacci", '''\
def fibonacci(count: int) -> list[int]:
    """Return the first ``count`` Fibonacci numbers, starting 0, 1."""
    numbers = []
    current, following = 0, 1
    for _ in range(count):
        numbers.append(current)
        current, following = following, current + following
    return numbers


if __name__ == "__main__":
    print(fibonacci($number))
'''),
    "factorial": (r"factorial", '''\
def factorial(number: int) -> int:
    """Return ``number``! for a number of zero or more."""
    if number < 0:
        raise ValueError("factorial is not defined for negative numbers")
    result = 1
    for factor in range(2, number + 1):
        result *= factor
    return result


if __name__ == "__main__":
    print(factorial($number))
'''),
    "primes": (r"prime", '''\
def primes_up_to(limit: int) -> list[int]:
    """Return the primes not greater than ``limit`` (sieve of Eratosthenes)."""
    if limit < 2:
        return []
    is_prime = [True] * (limit + 1)
    is_prime[0] = is_prime[1] = False
    for candidate in range(2, int(limit**0.5) + 1):
        if is_prime[candidate]:
            for multiple in range(candidate * candidate, limit + 1, candidate):
                is_prime[multiple] = False
    return [number for number, flag in enumerate(is_prime) if flag]


if __name__ == "__main__":
    print(primes_up_to($number))
'''),
    "reverse_string": (r"revers", '''\
def reverse_string(text: str) -> str:
    """Return ``text`` with its characters in reverse order."""
    return text[::-1]


if __name__ == "__main__":
    print(reverse_string($text))
'''),
    "sum_list": (r"\bsum\b|\btotal\b|add up", '''\
def sum_list(numbers: list[float]) -> float:
    """Return the sum of ``numbers`` (0 for an empty list)."""
    total = 0
    for number in numbers:
        total += number
    return total


if __name__ == "__main__":
    print(sum_list($numbers))
'''),
}
#: intent → (default example number, largest number taken from the spec)
_EXAMPLE_NUMBERS = {"fizzbuzz": (15, 100), "fibonacci": (10, 100), "factorial": (10, 100),
                    "primes": (30, 10_000)}


def generate_python(spec: str) -> dict[str, Any]:
    """A documented function for a recognised intent, or a stub that prints the spec."""
    lowered = spec.lower()
    intent = next((name for name, (pattern, _) in _TEMPLATES.items()
                   if re.search(pattern, lowered)), None)
    title = " ".join(spec.split())[:70].replace("\\", "/").replace('"', "'") or "(empty)"
    header = f'"""{title}\n\nGenerated offline by agoramesh from this specification.\n"""\n\n\n'
    if intent is None:
        body = ("SPECIFICATION = " + repr(spec) + "\n\n\n"
                "def describe() -> str:\n"
                '    """Return the specification this stub was generated from."""\n'
                "    return SPECIFICATION\n\n\n"
                'if __name__ == "__main__":\n'
                "    print(describe())\n")
        return {"code": header + body, "language": "python", "intent": "stub"}
    integers = [int(match) for match in re.findall(r"\b\d{1,6}\b", spec)]
    default, largest = _EXAMPLE_NUMBERS.get(intent, (0, 0))
    quoted = re.search(r"\"([^\"\n]{1,100})\"|'([^'\n]{1,100})'", spec)
    example = Template(_TEMPLATES[intent][1]).substitute(
        number=next((n for n in integers if 0 < n <= largest), default),
        text=repr(next(filter(None, quoted.groups()), "") if quoted else "agoramesh"),
        numbers=integers[:20] if len(integers) >= 2 else [1, 2, 3, 4, 5],
    )
    return {"code": header + example, "language": "python", "intent": intent}
