"""Argv templates: the only way a task's text reaches an agent's command line.

A template is a list of strings; each element is formatted on its own with the
placeholders below, so a prompt full of quotes, ``$(...)`` or newlines becomes exactly
one argv element and no shell ever sees it.  ``{{`` and ``}}`` stand for literal braces.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

#: The placeholders an argv template may use.
PLACEHOLDERS: frozenset[str] = frozenset(
    {"prompt", "title", "task_id", "workspace", "feedback", "attempt"}
)

_FORMATTER = string.Formatter()


def template_problems(argv: object) -> list[str]:
    """Every problem with ``argv`` as an argv template (empty list: it is fine)."""
    if isinstance(argv, str) or not isinstance(argv, Sequence):
        return [f"must be a list of strings (an argv, never a shell string), got {argv!r}"]
    if not argv:
        return ["must not be empty"]
    problems = []
    for index, element in enumerate(argv):
        if not isinstance(element, str):
            problems.append(f"element {index} must be a string, got {element!r}")
            continue
        try:
            fields = [field for _, field, _, _ in _FORMATTER.parse(element) if field is not None]
        except ValueError as exc:
            problems.append(f"element {index} {element!r}: {exc}")
            continue
        for field in fields:
            if field not in PLACEHOLDERS:
                problems.append(
                    f"element {index} {element!r} uses unknown placeholder {{{field}}}; "
                    f"known: {', '.join(sorted(PLACEHOLDERS))}"
                )
    return problems


def render_argv(argv: Sequence[str], values: Mapping[str, object]) -> list[str]:
    """Fill ``argv``'s placeholders from ``values``: one output element per template element."""
    rendered = []
    for element in argv:
        parts = []
        for literal, field, spec, conversion in _FORMATTER.parse(element):
            parts.append(literal)
            if field is not None:
                value = values[field]
                value = "" if value is None else value
                if conversion:
                    value = _FORMATTER.convert_field(value, conversion)
                parts.append(format(value, spec or ""))
        rendered.append("".join(parts))
    return rendered
