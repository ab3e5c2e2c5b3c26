"""Conditions: the one language of criteria, triggers, exits and audiences.

A condition is a tree of frozen nodes (:mod:`.model`) built with ``where``
(:mod:`.builder`), stored as JSON (:mod:`.codec`), evaluated in memory for one contact
(:mod:`.evaluation`) or compiled to SQL for many (``hogsend.db.conditions``), and
analysed for what can change it (:mod:`.analysis`). Pure: no I/O anywhere here.
"""

from hogsend.core.conditions.analysis import EMAIL_EVENTS as EMAIL_EVENTS
from hogsend.core.conditions.analysis import Dependencies as Dependencies
from hogsend.core.conditions.analysis import dependencies as dependencies
from hogsend.core.conditions.analysis import is_time_based as is_time_based
from hogsend.core.conditions.analysis import leaves as leaves
from hogsend.core.conditions.analysis import relevant_events as relevant_events
from hogsend.core.conditions.builder import ConditionBuilder as ConditionBuilder
from hogsend.core.conditions.builder import EmailMatcher as EmailMatcher
from hogsend.core.conditions.builder import EventMatcher as EventMatcher
from hogsend.core.conditions.builder import PropertyMatcher as PropertyMatcher
from hogsend.core.conditions.builder import where as where
from hogsend.core.conditions.codec import canonical_json as canonical_json
from hogsend.core.conditions.codec import condition_from_dict as condition_from_dict
from hogsend.core.conditions.codec import condition_to_dict as condition_to_dict
from hogsend.core.conditions.codec import fingerprint as fingerprint
from hogsend.core.conditions.codec import format_duration as format_duration
from hogsend.core.conditions.codec import parse_duration as parse_duration
from hogsend.core.conditions.evaluation import ContactFacts as ContactFacts
from hogsend.core.conditions.evaluation import EmailFact as EmailFact
from hogsend.core.conditions.evaluation import EmailRecord as EmailRecord
from hogsend.core.conditions.evaluation import EventFact as EventFact
from hogsend.core.conditions.evaluation import EventRecord as EventRecord
from hogsend.core.conditions.evaluation import evaluate as evaluate
from hogsend.core.conditions.evaluation import event_matches as event_matches
from hogsend.core.conditions.evaluation import matches_properties as matches_properties
from hogsend.core.conditions.evaluation import strict_equals as strict_equals
from hogsend.core.conditions.model import CONDITION_TYPES as CONDITION_TYPES
from hogsend.core.conditions.model import AllCondition as AllCondition
from hogsend.core.conditions.model import AnyCondition as AnyCondition
from hogsend.core.conditions.model import Condition as Condition
from hogsend.core.conditions.model import CountCheck as CountCheck
from hogsend.core.conditions.model import EmailAction as EmailAction
from hogsend.core.conditions.model import EmailCondition as EmailCondition
from hogsend.core.conditions.model import EventCondition as EventCondition
from hogsend.core.conditions.model import InvalidCondition as InvalidCondition
from hogsend.core.conditions.model import NotCondition as NotCondition
from hogsend.core.conditions.model import PropertyCondition as PropertyCondition
from hogsend.core.conditions.model import PropertyOp as PropertyOp
from hogsend.core.conditions.model import Scalar as Scalar
from hogsend.core.conditions.model import check_property_filter as check_property_filter
from hogsend.core.conditions.model import format_path as format_path
from hogsend.core.conditions.model import walk as walk

__all__ = [
    "CONDITION_TYPES",
    "EMAIL_EVENTS",
    "AllCondition",
    "AnyCondition",
    "Condition",
    "ConditionBuilder",
    "ContactFacts",
    "CountCheck",
    "Dependencies",
    "EmailAction",
    "EmailCondition",
    "EmailFact",
    "EmailMatcher",
    "EmailRecord",
    "EventCondition",
    "EventFact",
    "EventMatcher",
    "EventRecord",
    "InvalidCondition",
    "NotCondition",
    "PropertyCondition",
    "PropertyMatcher",
    "PropertyOp",
    "Scalar",
    "canonical_json",
    "check_property_filter",
    "condition_from_dict",
    "condition_to_dict",
    "dependencies",
    "evaluate",
    "event_matches",
    "fingerprint",
    "format_duration",
    "format_path",
    "is_time_based",
    "leaves",
    "matches_properties",
    "parse_duration",
    "relevant_events",
    "strict_equals",
    "walk",
    "where",
]
