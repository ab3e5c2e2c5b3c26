"""A faster ``__init__`` for the frozen, slotted dataclasses built per event or per message.

A frozen dataclass's generated ``__init__`` writes each field through
``object.__setattr__`` (a global, an attribute lookup and a call per field): for
:class:`~hogsend.core.ingest.EventInput` (nine fields) about 1 µs more than a plain
dataclass. A batch event builds five such objects (its input, identity, contact, plan
and result), and their constructors were about a fifth of the API's CPU per event of
``POST /segment/v1/batch`` (sampled in process, bench/ingest.py's bodies).
The mailer builds about a dozen per message (its request, facts, gate result, message,
provider result and outcome), so they use it too.

:func:`slot_init` gives such a class an ``__init__`` with the same keyword-only
signature, defaults, default factories and ``__post_init__`` call, that writes each
slot through its member descriptor's ``__set__`` (bound once, when the class is
defined). Instances stay frozen: assigning an attribute still raises.
"""

from __future__ import annotations

from dataclasses import MISSING, fields, is_dataclass
from typing import Any, TypeVar

T = TypeVar("T")


def slot_init(cls: type[T]) -> type[T]:
    """Replace the generated ``__init__`` of a frozen, slotted, keyword-only dataclass.

    Apply it above ``@dataclass(frozen=True, slots=True, kw_only=True)``. Fields with
    ``init=False`` get their default (or factory) as the dataclass would; ``InitVar``
    pseudo-fields are not supported (none of the classes using this has one).

    Raises:
        TypeError: ``cls`` is not such a dataclass.
    """
    params = getattr(cls, "__dataclass_params__", None)
    if not is_dataclass(cls) or params is None or not params.frozen:
        raise TypeError(f"{cls.__name__} is not a frozen dataclass")
    if "__slots__" not in cls.__dict__:
        raise TypeError(f"{cls.__name__} has no slots")
    namespace: dict[str, Any] = {"_MISSING": MISSING}
    signature: list[str] = []
    body: list[str] = []
    for field in fields(cls):
        if not field.kw_only:
            raise TypeError(f"{cls.__name__}.{field.name} is not keyword-only")
        name = field.name
        namespace[f"_set_{name}"] = cls.__dict__[name].__set__
        if field.default is not MISSING:
            namespace[f"_default_{name}"] = field.default
            value = f"_default_{name}"
            if field.init:
                signature.append(f"{name}=_default_{name}")
                value = name
        elif field.default_factory is not MISSING:
            namespace[f"_factory_{name}"] = field.default_factory
            value = f"_factory_{name}()"
            if field.init:
                signature.append(f"{name}=_MISSING")
                value = f"_factory_{name}() if {name} is _MISSING else {name}"
        elif field.init:
            signature.append(name)
            value = name
        else:
            continue  # no init and no default: left unset, as the dataclass leaves it
        body.append(f"    _set_{name}(self, {value})")
    if hasattr(cls, "__post_init__"):
        body.append("    self.__post_init__()")
    star = "*, " if signature else ""
    source = f"def __init__(self, {star}{', '.join(signature)}):\n" + (
        "\n".join(body) or "    pass"
    )
    # Generated code, as dataclasses generate theirs: a loop over the fields at call time
    # would cost what this saves. Only the class's own field names go into the source.
    exec(source, namespace)
    init = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__module__ = cls.__module__
    init.__doc__ = cls.__init__.__doc__
    cls.__init__ = init  # type: ignore[method-assign]
    return cls
