"""The Hogsend app object: the one composition root of a user's project.

Every process (API, worker, CLI) loads the same object by dotted path, so the journeys,
buckets and lists they know can never drift apart.
"""

from __future__ import annotations

import ast
import importlib
import inspect
import sys
import textwrap
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from hogsend.core.conditions import CONDITION_TYPES
from hogsend.core.definitions import (
    BucketDefinition,
    JourneyDefinition,
    ListDefinition,
    bucket_cycle,
    check_conditions,
)
from hogsend.core.identifiers import duplicates
from hogsend.core.reactions import reaction_journeys
from hogsend.errors import (
    AppLoadError,
    ConfigurationError,
    DefinitionError,
    RegistrationClosedError,
)

if TYPE_CHECKING:
    from hogsend.channels.templates import TemplateRegistry
    from hogsend.settings import Settings


@dataclass(frozen=True, slots=True, kw_only=True)
class Problem:
    """One thing ``hogsend check`` found wrong with an app."""

    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


class Hogsend:
    """Compose journeys, buckets, lists and templates into one app.

    Args:
        journeys: journey definitions (from ``@define_journey``).
        buckets: bucket definitions (from ``define_bucket``).
        lists: list definitions (from ``define_list``).
        templates: the email templates: a directory (``<key>.html`` or ``<key>.mjml``,
            optional ``<key>.txt``; see docs/email.md) or a ``TemplateRegistry`` from
            :mod:`hogsend.channels.templates` (for props models and preview examples).
        settings: explicit settings; by default each process builds them from the environment.
        name: a label for logs and Studio.

    Raises:
        DefinitionError: duplicate ids, an object of the wrong kind in a list, or a
            bucket / journey holding criteria, a trigger or an exit that is not a valid
            condition (the message names the definition).
    """

    def __init__(
        self,
        *,
        journeys: Sequence[JourneyDefinition] = (),
        buckets: Sequence[BucketDefinition] = (),
        lists: Sequence[ListDefinition] = (),
        templates: str | Path | TemplateRegistry | None = None,
        settings: Settings | None = None,
        name: str = "hogsend",
    ) -> None:
        self.name = name
        self.settings = settings
        self.templates: TemplateRegistry | None = None
        if templates is not None:
            # Imported here so `import hogsend` stays free of the template machinery.
            from hogsend.channels.templates import TemplateRegistry

            self.templates = (
                templates
                if isinstance(templates, TemplateRegistry)
                else TemplateRegistry(templates)
            )
        self._journeys: list[JourneyDefinition] = []
        self._buckets: list[BucketDefinition] = []
        self._lists: list[ListDefinition] = []
        self._launched = False
        for journey in journeys:
            self.add_journey(journey)
        for bucket in buckets:
            self.add_bucket(bucket)
        for item in lists:
            self.add_list(item)

    # -- registration (closed after launch) --------------------------------------------

    def add_journey(self, journey: JourneyDefinition) -> None:
        """Register a journey; raises once the app is launched or on a duplicate id."""
        self._register(journey, JourneyDefinition, self._journeys, "journey")

    def add_bucket(self, bucket: BucketDefinition) -> None:
        """Register a bucket; raises once the app is launched or on a duplicate id."""
        self._register(bucket, BucketDefinition, self._buckets, "bucket")

    def add_list(self, item: ListDefinition) -> None:
        """Register a list; raises once the app is launched or on a duplicate id."""
        self._register(item, ListDefinition, self._lists, "list")

    def _register(
        self,
        item: JourneyDefinition | BucketDefinition | ListDefinition,
        kind: type,
        into: list[JourneyDefinition] | list[BucketDefinition] | list[ListDefinition],
        label: str,
    ) -> None:
        if self._launched:
            raise RegistrationClosedError(
                f"cannot register {label} {getattr(item, 'id', item)!r}: the app is launched; "
                "register everything before the app starts"
            )
        if not isinstance(item, kind):
            hint = f"define_{label}" if label != "journey" else "@define_journey"
            raise DefinitionError(f"expected a {label} definition from {hint}, got {item!r}")
        if any(existing.id == item.id for existing in into):
            raise DefinitionError(f"duplicate {label} id {item.id!r}")
        check_conditions(item)
        into.append(item)  # type: ignore[arg-type]

    def launch(self) -> None:
        """Close registration; called by the runtime when a process starts serving.

        Raises:
            ConfigurationError: a template does not compile, or a journey sends a
                template that does not exist (``hogsend check`` lists the same).
            DefinitionError: buckets read each other's transitions in a cycle, or a
                bucket reaction's journey id is a journey's id.
        """
        if not self._launched:
            problems = self._template_problems()
            if problems:
                raise ConfigurationError(
                    "the app's templates are not ready:\n"
                    + "\n".join(f"  {problem}" for problem in problems)
                )
            if cycle := bucket_cycle(self._buckets):
                raise DefinitionError(
                    "buckets read each other's transition events in a cycle: " + " -> ".join(cycle)
                )
            if clashes := self._journey_id_clashes():
                raise DefinitionError(
                    "journey ids used by both a journey and a bucket reaction: "
                    + ", ".join(clashes)
                )
            for bucket in self._buckets:
                bucket.close()
        self._launched = True

    @property
    def launched(self) -> bool:
        """Whether registration is closed."""
        return self._launched

    # -- read access -------------------------------------------------------------------

    @property
    def journeys(self) -> tuple[JourneyDefinition, ...]:
        """Registered journeys, in registration order."""
        return tuple(self._journeys)

    @property
    def buckets(self) -> tuple[BucketDefinition, ...]:
        """Registered buckets, in registration order."""
        return tuple(self._buckets)

    @property
    def lists(self) -> tuple[ListDefinition, ...]:
        """Registered lists, in registration order."""
        return tuple(self._lists)

    @property
    def template_dir(self) -> Path | None:
        """The template directory, if the app has templates."""
        return self.templates.directory if self.templates is not None else None

    def template_keys(self) -> frozenset[str]:
        """Keys of the app's templates (``<key>.html`` / ``<key>.mjml`` files)."""
        return self.templates.keys() if self.templates is not None else frozenset()

    # -- validation --------------------------------------------------------------------

    def _template_problems(self) -> list[Problem]:
        problems: list[Problem] = []
        if self.templates is not None:
            problems += [Problem(where=p.where, message=p.message) for p in self.templates.check()]
        known = self.template_keys()
        for journey in (*self._journeys, *reaction_journeys(self._buckets)):
            for key in sorted(_literal_template_keys(journey)):
                if key not in known:
                    problems.append(
                        Problem(
                            where=f"journey {journey.id}",
                            message=f"sends unknown template {key!r} "
                            f"(no {key}.html or {key}.mjml in "
                            f"{self.template_dir or 'the template directory'})",
                        )
                    )
        return problems

    def _journey_id_clashes(self) -> list[str]:
        """Ids a user journey shares with a bucket reaction (both run as journeys)."""
        reactions = [r.journey_id for b in self._buckets for r in b.reactions]
        return duplicates([j.id for j in self._journeys] + reactions)

    def check(self) -> list[Problem]:
        """Validate the whole app; an empty list means it is ready to launch."""
        problems: list[Problem] = []
        for label, ids in (
            ("journey", [j.id for j in self._journeys]),
            ("bucket", [b.id for b in self._buckets]),
            ("list", [x.id for x in self._lists]),
        ):
            problems += [
                Problem(where=f"{label} {i}", message="duplicate id") for i in duplicates(ids)
            ]
        problems += self._template_problems()
        bucket_ids = {b.id for b in self._buckets}
        for journey in self._journeys:
            trigger = journey.trigger if isinstance(journey.trigger, str) else journey.trigger.event
            if trigger.startswith("bucket:"):
                parts = trigger.split(":")
                if len(parts) < 3 or parts[2] not in bucket_ids:
                    problems.append(
                        Problem(
                            where=f"journey {journey.id}",
                            message=f"trigger {trigger!r} names no registered bucket",
                        )
                    )
        if cycle := bucket_cycle(self._buckets):
            problems.append(
                Problem(
                    where=f"bucket {cycle[0]}",
                    message="criteria read transition events in a cycle: " + " -> ".join(cycle),
                )
            )
        problems += [
            Problem(where=f"journey {i}", message="id also used by a bucket reaction")
            for i in self._journey_id_clashes()
        ]
        for bucket in self._buckets:
            if bucket.kind == "criteria" and not _is_condition(bucket.criteria):
                problems.append(
                    Problem(
                        where=f"bucket {bucket.id}",
                        message=f"criteria {bucket.criteria!r} is not a condition built with where",
                    )
                )
        return problems

    def warnings(self) -> list[Problem]:
        """What ``hogsend check`` points out without failing (the templates whose
        non-transactional messages get the standard preference footer)."""
        if self.templates is None or not self.templates.directory.is_dir():
            return []
        return [Problem(where=p.where, message=p.message) for p in self.templates.warnings()]


def _is_condition(value: object) -> bool:
    return isinstance(value, CONDITION_TYPES)


def _literal_template_keys(journey: JourneyDefinition) -> set[str]:
    """Template keys passed as string literals to ``send_email(template=...)`` in a body."""
    try:
        source = textwrap.dedent(inspect.getsource(journey.body))
    except (OSError, TypeError):
        return set()
    keys: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if name != "send_email":
            continue
        for kw in node.keywords:
            value = kw.value
            if (
                kw.arg == "template"
                and isinstance(value, ast.Constant)
                and isinstance(value.value, str)
            ):
                keys.add(value.value)
    return keys


def load_app(path: str, *, search: Iterable[str | Path] = (".",)) -> Hogsend:
    """Import ``package.module:attribute`` and return the Hogsend object it names.

    Raises:
        AppLoadError: with a message saying what is wrong and how to fix it.
    """
    module_name, sep, attr = path.partition(":")
    if not sep or not module_name or not attr:
        raise AppLoadError(
            f"--app {path!r} must look like 'package.module:attribute', e.g. 'myapp.hogsend:app'"
        )
    for entry in search:
        entry_str = str(Path(entry).resolve())
        if entry_str not in sys.path:
            sys.path.insert(0, entry_str)
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as exc:
        if exc.name is not None and module_name.startswith(exc.name):
            raise AppLoadError(
                f"cannot import module {module_name!r} named by --app {path!r}: {exc}. "
                "Run from your project's root or install your package."
            ) from exc
        raise AppLoadError(f"importing {module_name!r} failed: {exc}") from exc
    except DefinitionError as exc:
        raise AppLoadError(f"{module_name!r} defines something invalid: {exc}") from exc
    try:
        obj = getattr(module, attr)
    except AttributeError:
        raise AppLoadError(
            f"module {module_name!r} has no attribute {attr!r} (named by --app {path!r})"
        ) from None
    if not isinstance(obj, Hogsend):
        raise AppLoadError(
            f"{path!r} is a {type(obj).__name__}, not a Hogsend app; "
            "point --app at the object created with Hogsend(...)"
        )
    return obj
