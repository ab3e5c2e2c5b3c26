"""Template reads: which variable paths a template reads, and whether it only prints some.

A message plan (:mod:`hogsend.channels.message_plans`) needs Jinja's output with value
slots in place of the recipient's values, and a proof that filling the slots gives the
real output. Rendering the template a second time with the real values and comparing
is such a proof, and costs a full render per message. This module gives a cheaper one,
from the template's syntax tree: when every use of a value is to print it whole
(``{{ contact.properties.first_name }}``, optionally through ``e``, ``escape`` or
``default``), rendering with a slot in its place and filling the slot afterwards gives
what rendering with the value gives, since the slottable characters are the same
escaped or not. Every other read of a variable (a condition, a filter argument, a
loop) is a *literal* read: the output depends on its value in ways only Jinja knows,
so a cached rendering is reused only for messages where each literal read gives an
equal value of the same type.

:func:`analyse` walks the template, its layouts and included files and returns the
:class:`TemplateReads` (the paths read, each marked printed or literal), or None when
the template does something with output this argument does not cover: macros, call
and filter blocks, block assignments, imports, a dynamic ``extends`` or ``include``,
or ``self``/``super``/``caller`` anywhere but printed whole. Every name read counts,
a loop variable's or a global's too: a variable given under that name may be what a
read sees (Jinja reads the variable until the template assigns the name).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import jinja2
from jinja2 import nodes

Path = tuple[str | tuple[str | int], ...]
"""A variable and what is read from it: an attribute as its name, an item as a 1-tuple
(``contact.properties["first_name"]`` is ``("contact", "properties", ("first_name",))``)."""

PRINT_FILTERS = frozenset({"e", "escape", "default", "d"})
"""Filters that print a slottable value as it is (``default`` only replaces undefined)."""
_BLOCK_OUTPUT = (nodes.Macro, nodes.CallBlock, nodes.FilterBlock, nodes.AssignBlock)
_UNCOVERED = (*_BLOCK_OUTPUT, nodes.Import, nodes.FromImport)
_RENDERERS = frozenset({"self", "super", "caller", "varargs", "kwargs"})


@dataclass(frozen=True, slots=True)
class TemplateReads:
    """The variable paths a template (with its layouts and includes) reads.

    Attributes:
        printed: paths only ever printed whole: a slot may stand in for their value.
        literal: paths read any other way: their values must match for a rendering
            to be reused.
        files: the template files read, for noticing edits.
    """

    printed: tuple[Path, ...]
    literal: tuple[Path, ...]
    files: tuple[str, ...]


class _NotCovered(Exception):
    """The template does something with output that the argument does not cover."""


def analyse(
    env: jinja2.Environment,
    *,
    files: Iterable[str],
    strings: Iterable[str] = (),
) -> TemplateReads | None:
    """What the template made of ``files`` (and string templates ``strings``) reads.

    Args:
        env: the environment that renders them (its loader finds the files).
        files: template names (the body, the text part), followed to their layouts and
            includes.
        strings: string templates rendered with the same variables (subject,
            preheader).

    Returns:
        The reads, or None when the template is not covered (see the module doc).
    """
    printed: dict[Path, None] = {}
    literal: dict[Path, None] = {}
    seen: list[str] = []
    pending = list(files)
    try:
        trees = [env.parse(source) for source in strings]
        while trees or pending:
            if not trees:
                name = pending.pop()
                if name in seen:
                    continue
                seen.append(name)
                if env.loader is None:
                    return None
                source, _, _ = env.loader.get_source(env, name)
                trees.append(env.parse(source, name))
            # Files this tree names (layouts, includes) land in ``pending``.
            for node in trees.pop().body:
                _visit(node, printed, literal, pending, output=True)
    except (_NotCovered, jinja2.TemplateError):
        return None
    if any(path[0] == "preheader" for path in literal):
        return None  # its value is rendered, not given: printed whole only
    return TemplateReads(
        printed=tuple(path for path in printed if path not in literal),
        literal=tuple(literal),
        files=tuple(seen),
    )


def _chain(node: nodes.Node) -> Path | None:
    """``name.attr["key"]...`` as a path; None for any other expression."""
    parts: list[str | tuple[str | int]] = []
    while True:
        if isinstance(node, nodes.Getattr):
            parts.append(node.attr)
            node = node.node
        elif isinstance(node, nodes.Getitem):
            arg: nodes.Node = node.arg
            if not isinstance(arg, nodes.Const) or type(arg.value) not in (str, int):
                return None
            parts.append((arg.value,))
            node = node.node
        elif isinstance(node, nodes.Name) and node.ctx == "load":
            parts.append(node.name)
            return tuple(reversed(parts))
        else:
            return None


def _visit(
    node: nodes.Node,
    printed: dict[Path, None],
    literal: dict[Path, None],
    files: list[str],
    *,
    output: bool,
) -> None:
    """Record the paths under ``node``; ``output``: its Output nodes print as they are."""
    if isinstance(node, _UNCOVERED):
        raise _NotCovered
    if isinstance(node, nodes.Extends | nodes.Include):
        template = node.template
        if not isinstance(template, nodes.Const) or not isinstance(template.value, str):
            raise _NotCovered
        files.append(template.value)
        return
    if isinstance(node, nodes.Name):
        if node.name in _RENDERERS:
            raise _NotCovered  # a block's or caller's output, read as a value
        if node.ctx == "load":
            # Every name, the template's own too (a loop variable, a global): a given
            # variable of the same name may be what it reads, before or beside them.
            literal[(node.name,)] = None
        return
    if isinstance(node, nodes.Output):
        for item in node.nodes:
            if isinstance(item, nodes.TemplateData):
                continue
            if output and _printed_whole(item, printed, literal, files):
                continue
            _visit(item, printed, literal, files, output=False)
        return
    path = _chain(node) if isinstance(node, nodes.Getattr | nodes.Getitem) else None
    if path is not None:
        if path[0] in _RENDERERS:
            raise _NotCovered
        literal[path] = None
        return
    for child in node.iter_child_nodes():
        _visit(child, printed, literal, files, output=output)


def _printed_whole(
    item: nodes.Node,
    printed: dict[Path, None],
    literal: dict[Path, None],
    files: list[str],
) -> bool:
    """Record ``item`` as printed when it is a path, through print filters at most."""
    while isinstance(item, nodes.Filter) and item.name in PRINT_FILTERS:
        for arg in (*item.args, *(kw.value for kw in item.kwargs)):
            _visit(arg, printed, literal, files, output=False)
        inner = item.node
        if inner is None or item.dyn_args is not None or item.dyn_kwargs is not None:
            raise _NotCovered
        item = inner
    if isinstance(item, nodes.Call):
        # {{ super() }} or {{ self.title() }}: a block printed as it renders.
        callee: nodes.Node = item.node
        if item.args or item.kwargs or item.dyn_args or item.dyn_kwargs:
            return False
        if isinstance(callee, nodes.Name):
            return callee.name == "super"
        return (
            isinstance(callee, nodes.Getattr)
            and isinstance(callee.node, nodes.Name)
            and callee.node.name == "self"
        )
    path = _chain(item)
    if path is None:
        return False
    if path[0] in _RENDERERS:
        raise _NotCovered
    printed[path] = None
    return True
