"""Expressions in scenario files: ``"=tsc_khz * jump_ms"``, evaluated exactly.

A string value starting with ``=`` is an expression over the scenario's parameters.  Allowed:
integer and decimal numbers, parameter names, ``+ - * / //``, unary ``-`` and parentheses;
nothing else (no calls, attributes, comparisons, ``**`` or ``%``).  Arithmetic is exact
(:class:`fractions.Fraction`; a float parameter or literal is taken by its decimal text, so
``0.05`` is exactly 1/20).  An expression that is a parameter name alone gives that
parameter's value as it is (a string parameter may be used this way).
"""

from __future__ import annotations

import ast
import math
from collections.abc import Mapping
from fractions import Fraction

__all__ = ["ExprError", "evaluate", "is_expr", "to_fraction"]

ALLOWED = "numbers, parameter names, + - * / //, unary - and parentheses"


class ExprError(ValueError):
    """A bad expression; the message says what is wrong (the caller adds the key)."""


def is_expr(value: object) -> bool:
    """A string starting with ``=``."""
    return isinstance(value, str) and value.startswith("=")


def to_fraction(value: object) -> Fraction:
    """A number (int, float by its repr, decimal string, Fraction) exactly; ExprError else."""
    if isinstance(value, bool) or value is None:
        raise ExprError(f"{value!r} is not a number")
    if isinstance(value, Fraction):
        return value
    if isinstance(value, int):
        return Fraction(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ExprError(f"{value!r} is not a finite number")
        return Fraction(repr(value))
    if isinstance(value, str):
        try:
            return Fraction(value.strip())
        except (ValueError, ZeroDivisionError):
            raise ExprError(f"{value!r} is not a number") from None
    raise ExprError(f"{value!r} is not a number")


def evaluate(text: str, env: Mapping[str, object]) -> object:
    """The value of expression ``text`` (with its leading ``=``) over ``env`` (parameter
    name -> value): a Fraction, or the parameter's own value for a lone name."""
    src = text[1:].strip() if text.startswith("=") else text.strip()
    if not src:
        raise ExprError("empty expression after '='")
    try:
        tree = ast.parse(src, mode="eval")
    except SyntaxError:
        raise ExprError(f"{text!r} is not an expression of {ALLOWED}") from None
    body = tree.body
    if isinstance(body, ast.Name):
        return _name(body, env)
    return _eval(body, env, text)


def _name(node: ast.Name, env: Mapping[str, object]) -> object:
    if node.id not in env:
        raise ExprError(
            f"unknown parameter {node.id!r}; parameters: {', '.join(env) or 'none'}"
        )
    return env[node.id]


def _eval(node: ast.expr, env: Mapping[str, object], text: str) -> Fraction:
    if isinstance(node, ast.Constant) and type(node.value) in (int, float):
        return to_fraction(node.value)
    if isinstance(node, ast.Name):
        value = _name(node, env)
        try:
            return to_fraction(value)
        except ExprError:
            raise ExprError(f"parameter {node.id}={value!r} is not a number") from None
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        v = _eval(node.operand, env, text)
        return -v if isinstance(node.op, ast.USub) else v
    if isinstance(node, ast.BinOp) and isinstance(
        node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv)
    ):
        a = _eval(node.left, env, text)
        b = _eval(node.right, env, text)
        if isinstance(node.op, ast.Add):
            return a + b
        if isinstance(node.op, ast.Sub):
            return a - b
        if isinstance(node.op, ast.Mult):
            return a * b
        if b == 0:
            raise ExprError(f"{text!r} divides by zero")
        return a / b if isinstance(node.op, ast.Div) else Fraction(a // b)
    raise ExprError(f"{text!r}: {ast.unparse(node)!r} is not allowed; use only {ALLOWED}")
