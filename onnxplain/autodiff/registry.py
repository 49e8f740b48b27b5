"""The registry of backward rules, keyed by (domain, op type) and the opset a rule starts at.

A rule receives a NodeContext and the gradients of the node's outputs (None where an output
has no gradient) and returns one gradient tensor name per input, None where an input needs
none. Rules only emit standard ai.onnx ops through the GraphBuilder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import onnx
from onnx import helper

from ..graph.builder import GraphBuilder
from ..graph.op_kinds import NO_GRADIENT

Grad = str | None
Rule = Callable[["NodeContext", list[Grad]], Sequence[Grad]]
Supports = Callable[["NodeContext"], str | None]


@dataclass
class NodeContext:
    """What a rule sees: the builder, the forward node and which inputs need a gradient."""

    b: GraphBuilder
    node: onnx.NodeProto
    needs: tuple[bool, ...]
    # The rule set being applied: rules that differentiate subgraphs (If, Loop) use it there.
    rules: RuleSet | None = None

    def x(self, i: int) -> str:
        """Name of input i, or '' when the optional input is absent."""
        return self.node.input[i] if i < len(self.node.input) else ""

    def y(self, i: int = 0) -> str:
        return self.node.output[i] if i < len(self.node.output) else ""

    def need(self, i: int) -> bool:
        return i < len(self.needs) and self.needs[i]

    def attr(self, name: str, default=None):
        for attribute in self.node.attribute:
            if attribute.name == name:
                return helper.get_attribute_value(attribute)
        return default

    def str_attr(self, name: str, default: str) -> str:
        value = self.attr(name, None)
        return value.decode() if isinstance(value, bytes) else (value or default)


@dataclass(frozen=True)
class RuleEntry:
    since: int
    rule: Rule
    supports: Supports | None = None


@dataclass
class RuleSet:
    """Backward rules by op. `override` derives a rule set for modified backward passes."""

    name: str = "gradient"
    _rules: dict[tuple[str, str], list[RuleEntry]] = field(default_factory=dict)
    parent: RuleSet | None = None

    def register(self, op_type: str, rule: Rule, *, domain: str = "", since: int = 1,
                 supports: Supports | None = None) -> None:
        entries = self._rules.setdefault((_domain(domain), op_type), [])
        entries.append(RuleEntry(since, rule, supports))
        entries.sort(key=lambda entry: entry.since)

    def lookup(self, domain: str, op_type: str, opset: int) -> RuleEntry | None:
        """The rule for this op at this opset; None if it has none, or only from a later one."""
        entries = self._rules.get((_domain(domain), op_type))
        if entries is None:
            return self.parent.lookup(domain, op_type, opset) if self.parent else None
        usable = [entry for entry in entries if entry.since <= opset]
        return usable[-1] if usable else None

    def earliest(self, domain: str, op_type: str) -> int | None:
        entries = self._rules.get((_domain(domain), op_type))
        if entries is None:
            return self.parent.earliest(domain, op_type) if self.parent else None
        return entries[0].since

    def knows(self, domain: str, op_type: str) -> bool:
        return self.earliest(domain, op_type) is not None

    def override(self, name: str, rules: dict[str, Rule]) -> RuleSet:
        """A child rule set where `rules` replace the entries of the named ops."""
        child = RuleSet(name=name, parent=self)
        for op_type, fn in rules.items():
            child.register(op_type, fn)
        return child

    def rule(self, *op_types: str, domain: str = "", since: int = 1,
             supports: Supports | None = None) -> Callable[[Rule], Rule]:
        """Decorator: register one function as the rule of several ops."""
        def register(fn: Rule) -> Rule:
            for op_type in op_types:
                self.register(op_type, fn, domain=domain, since=since, supports=supports)
            return fn
        return register


def _domain(domain: str) -> str:
    return "" if domain in ("", "ai.onnx") else domain


GRADIENT = RuleSet("gradient")
rule = GRADIENT.rule


def plain_gradient(c: NodeContext, gy: list[Grad]) -> list[Grad]:
    """The op's ordinary backward rule, for modified rule sets that keep it in some cases."""
    entry = GRADIENT.lookup(c.node.domain, c.node.op_type, c.b.opset)
    assert entry is not None, c.node.op_type  # rule sets override only ops GRADIENT knows
    return list(entry.rule(c, gy))


def has_no_gradient(domain: str, op_type: str) -> bool:
    """Whether the op's outputs carry no gradient (op_kinds.NO_GRADIENT): float tensors
    flowing out of it get zero gradient."""
    return _domain(domain) == "" and op_type in NO_GRADIENT
