"""The op taxonomy (graph/op_kinds.py): real op names, disjoint kinds, and defined only there."""

from __future__ import annotations

import ast
import itertools
from pathlib import Path

import onnx.defs
import pytest

from onnxplain.graph import op_kinds

ROOT = Path(__file__).resolve().parents[2]
GROUPS = {name: value for name, value in vars(op_kinds).items()
          if name.isupper() and isinstance(value, frozenset)}
STANDARD = {schema.name for schema in onnx.defs.get_all_schemas_with_history()
            if schema.domain in ("", "ai.onnx")}

# Kinds that say different things about an op, so no op may be of two of them.
DISJOINT = [
    ("WEIGHTED", "ACTIVATIONS", "SOFTMAXES", "ARITHMETIC", "VALUE_MOVERS", "CASTS",
     "ORDER_SELECTIONS", "POOLED_SUMS", "BATCH_NORMS", "FEATURE_NORMS", "GROUP_NORMS",
     "NO_GRADIENT", "QUANTIZERS", "DEQUANTIZERS", "RECURRENT", "CONTROL_FLOW"),
    ("MONOTONE_ACTIVATIONS", "THRESHOLD_ACTIVATIONS", "GATED_ACTIVATIONS"),
    ("RESHAPES", "PERMUTATIONS", "SELECTIONS", "REPLICATIONS", "CONCATS", "IDENTITY"),
    ("SHAPE_READERS", "BOOLEAN_RESULTS", "INDEX_RESULTS", "GENERATORS", "PIECEWISE_CONSTANT",
     "RANDOM", "BITWISE"),
    ("UNARY_MATH", "ACTIVATIONS"),
]


def test_groups_are_op_names() -> None:
    """Every member is a standard ONNX op, or a contrib op declared in CONTRIB_OPS."""
    assert op_kinds.CONTRIB_OPS.isdisjoint(STANDARD)
    unknown = {name: sorted(group - STANDARD - op_kinds.CONTRIB_OPS)
               for name, group in GROUPS.items()}
    assert {name: ops for name, ops in unknown.items() if ops} == {}
    assert all(group for group in GROUPS.values()), "an empty group"


@pytest.mark.parametrize("kinds", DISJOINT, ids=lambda kinds: kinds[0])
def test_kinds_do_not_overlap(kinds: tuple[str, ...]) -> None:
    overlaps = {(a, b): sorted(GROUPS[a] & GROUPS[b])
                for a, b in itertools.combinations(kinds, 2) if GROUPS[a] & GROUPS[b]}
    assert overlaps == {}


def test_unions_cover_their_parts() -> None:
    assert op_kinds.ACTIVATIONS == (op_kinds.MONOTONE_ACTIVATIONS
                                    | op_kinds.THRESHOLD_ACTIVATIONS
                                    | op_kinds.GATED_ACTIVATIONS)
    assert op_kinds.PARAMETERISED_ACTIVATIONS < op_kinds.ACTIVATIONS
    assert op_kinds.GATE_FUNCTIONS < op_kinds.ACTIVATIONS
    assert op_kinds.NON_NEGATIVE_RESULTS <= (op_kinds.ACTIVATIONS | op_kinds.SOFTMAXES
                                             | op_kinds.UNARY_MATH)


def _op_names(node: ast.AST) -> list[str] | None:
    """The members of a set, tuple or list literal (or frozenset() of one) when there are two
    or more and all are names of standard or contrib ops."""
    if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "frozenset" and node.args:
        node = node.args[0]
    if not isinstance(node, ast.Set | ast.Tuple | ast.List) or len(node.elts) < 2:
        return None
    names = [e.value for e in node.elts if isinstance(e, ast.Constant)]
    if len(names) != len(node.elts) or not all(isinstance(n, str) for n in names):
        return None
    known = STANDARD | op_kinds.CONTRIB_OPS
    return names if all(n in known for n in names) else None


def _defined_op_sets(tree: ast.Module) -> list[int]:
    """Lines of set literals of op names anywhere, and of module-level constants that are set,
    tuple or list literals of op names (inline tuples in `in (...)` tests are left alone)."""
    lines = [n.lineno for n in ast.walk(tree) if isinstance(n, ast.Set) and _op_names(n)]
    for statement in tree.body:
        value = statement.value if isinstance(statement, ast.Assign | ast.AnnAssign) else None
        if value is not None and _op_names(value):
            lines.append(statement.lineno)
    return sorted(set(lines))


def test_op_sets_are_defined_only_in_op_kinds() -> None:
    """A new list of op types goes into op_kinds as a named group, not into its user."""
    own = Path(op_kinds.__file__).resolve()
    found = []
    for path in sorted([*(ROOT / "onnxplain").rglob("*.py"), *(ROOT / "cli").rglob("*.py")]):
        if path.resolve() != own:
            tree = ast.parse(path.read_text(encoding="utf-8"))
            found += [f"{path.relative_to(ROOT)}:{line}" for line in _defined_op_sets(tree)]
    assert found == []


def test_the_scan_finds_op_sets() -> None:
    """The scan above can fail: it flags a set of op names and a module-level tuple of them."""
    tree = ast.parse('A = ("Relu", "Gelu")\nB = {"self", "cache"}\n'
                     'def f(op):\n    return op in {"Add", "Sub"} or op in ("Mul", "Div")\n')
    assert _defined_op_sets(tree) == [1, 4]
