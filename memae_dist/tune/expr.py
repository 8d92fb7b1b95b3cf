"""The little expression language of ``derived`` values in a space file.

``model.shrink_threshold: k / model.num_slots`` -- numbers, dotted names, arithmetic,
comparisons, ``a if cond else b`` and a few functions. Expressions are parsed with Python's
``ast`` and walked here; nothing is ever passed to ``eval``.
"""

from __future__ import annotations

import ast
import math
import operator
from typing import Any

from memae_dist.errors import UserError

_BINOPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul,
           ast.Div: operator.truediv, ast.FloorDiv: operator.floordiv, ast.Pow: operator.pow,
           ast.Mod: operator.mod}
# Every value an expression computes must be a finite number that fits a float (what config
# values are): Python's ints are unbounded, so ``10 ** 10 ** 10`` would compute for hours
# instead of failing. A little under float's 2 ** 1024, so every int passing converts to one.
MAX_BITS = 1000
_CMPOPS = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt,
           ast.LtE: operator.le, ast.Gt: operator.gt, ast.GtE: operator.ge}
_FUNCS = {"min": min, "max": max, "round": round, "int": int, "float": float, "abs": abs,
          "log": math.log, "exp": math.exp, "sqrt": math.sqrt}


def names_in(node: ast.AST, where: str) -> set[str]:
    """Dotted names an expression reads; anything beyond plain arithmetic is refused."""
    if isinstance(node, (ast.Name, ast.Attribute)):
        return {_dotted(node, where)}
    if isinstance(node, ast.Constant):
        if isinstance(node.value, (int, float, str)) and not isinstance(node.value, bool):
            return set()
    elif isinstance(node, ast.BinOp) and type(node.op) in _BINOPS:
        return names_in(node.left, where) | names_in(node.right, where)
    elif isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return names_in(node.operand, where)
    elif isinstance(node, ast.IfExp):
        return (names_in(node.test, where) | names_in(node.body, where)
                | names_in(node.orelse, where))
    elif isinstance(node, ast.Compare) and all(type(o) in _CMPOPS for o in node.ops):
        out = names_in(node.left, where)
        for c in node.comparators:
            out |= names_in(c, where)
        return out
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Name)
          and node.func.id in _FUNCS and not node.keywords):
        out: set[str] = set()
        for a in node.args:
            out |= names_in(a, where)
        return out
    raise UserError(f"{where}: only numbers, names, + - * / // % **, comparisons, "
                    f"'a if cond else b' and {', '.join(_FUNCS)} are allowed in expressions")


def _dotted(node: ast.AST, where: str) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value, where)}.{node.attr}"
    raise UserError(f"{where}: unsupported name in expression")


def evaluate(node: ast.AST, env: dict[str, Any], base: dict[str, Any]) -> Any:
    if isinstance(node, (ast.Name, ast.Attribute)):
        name = _dotted(node, "expression")
        return _bounded(env[name] if name in env else lookup(base, name))
    if isinstance(node, ast.Constant):
        return _bounded(node.value)
    if isinstance(node, ast.BinOp):
        left, right = evaluate(node.left, env, base), evaluate(node.right, env, base)
        if not isinstance(node.op, ast.Add) and (isinstance(left, str) or isinstance(right, str)):
            # 'x' * 10 ** 9 or '%09999999999d' % 1 would fill the memory.
            raise TypeError("text can only be joined with +")
        if isinstance(node.op, ast.Pow):
            _check_power(left, right)
        return _bounded(_BINOPS[type(node.op)](left, right))
    if isinstance(node, ast.UnaryOp):
        value = evaluate(node.operand, env, base)
        return -value if isinstance(node.op, ast.USub) else value
    if isinstance(node, ast.IfExp):
        branch = node.body if evaluate(node.test, env, base) else node.orelse
        return evaluate(branch, env, base)
    if isinstance(node, ast.Compare):
        left = evaluate(node.left, env, base)
        for op, comp in zip(node.ops, node.comparators):
            right = evaluate(comp, env, base)
            if not _CMPOPS[type(op)](left, right):
                return False
            left = right
        return True
    if isinstance(node, ast.Call):
        return _bounded(_FUNCS[node.func.id](*(evaluate(a, env, base) for a in node.args)))
    raise TypeError(f"unsupported expression node {type(node).__name__}")


def _check_power(base: Any, exponent: Any) -> None:
    """Refuse, before computing it, a power whose result could not fit a float."""
    if not all(isinstance(v, (int, float)) for v in (base, exponent)):
        return  # operator.pow raises the TypeError
    if abs(base) in (0, 1):
        return
    # log2 of the result, from operands that _bounded already kept finite and float-sized.
    if exponent * math.log2(abs(base)) > MAX_BITS:
        raise ArithmeticError(f"{base!r} ** {exponent!r} is too large (over 2 ** {MAX_BITS})")


def _bounded(value: Any) -> Any:
    """``value``, when it is a finite number that fits a float (or not a number at all)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value.bit_length() > MAX_BITS:
        raise ArithmeticError(f"a value is too large (over 2 ** {MAX_BITS})")
    if isinstance(value, float) and not math.isfinite(value):
        raise ArithmeticError(f"a value is not a finite number ({value})")
    if isinstance(value, complex):  # (-8) ** (1 / 3)
        raise ArithmeticError(f"a value is not a real number ({value})")
    return value


def lookup(tree: dict[str, Any], key: str) -> Any:
    """``tree["a"]["b"]`` for ``key="a.b"``; a missing key is a ValueError."""
    node: Any = tree
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            raise ValueError(f"config has no value for {key}")
        node = node[part]
    return node
