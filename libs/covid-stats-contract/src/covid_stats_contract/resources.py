"""The upstream resources the fetcher stores and publishes, and where each one lives.

Each resource is one list path of the COVID Tracking Project v1 API, one PostgreSQL table
(its records keyed on date and/or state) and a family of documents: the list as JSON and CSV,
and, for state resources, one document per state (``v1/states/{st}/daily.json`` ...).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Format = Literal["json", "csv"]
FORMATS: tuple[Format, ...] = ("json", "csv")

# A state's (or territory's) code: two ASCII letters.
STATE_CODE_LETTERS = 2
_STATE_CODE_CASES = {"any": "A-Za-z", "upper": "A-Z", "lower": "a-z"}


def state_code_pattern(case: Literal["any", "upper", "lower"] = "any") -> str:
    """The regular expression of a state's code, unanchored: ``upper`` as the records and
    tables hold it, ``lower`` as document names carry it, ``any`` as a request may give it.
    The one definition (the migrations' CHECK constraints spell it too, and stay as run)."""
    return f"[{_STATE_CODE_CASES[case]}]{{{STATE_CODE_LETTERS}}}"


@dataclass(frozen=True, slots=True)
class Resource:
    key: str  # the upstream path without "/v1/" and the extension: "states/daily"
    table: str  # the PostgreSQL table of its records
    key_columns: tuple[str, ...]  # the record fields that identify a record
    order_by: str  # SQL ORDER BY of the list, as the upstream ordered it
    per_state: str | None = None  # "daily": also one v1/states/{st}/daily.* per state
    per_state_is_list: bool = False  # per-state documents are arrays (else objects)

    @property
    def by_state(self) -> bool:
        return "state" in self.key_columns

    def document(self, fmt: Format = "json") -> str:
        """Name of the list document (also its api path without the leading "/")."""
        return f"v1/{self.key}.{fmt}"

    def upstream_path(self, fmt: Format = "json") -> str:
        return f"/v1/{self.key}.{fmt}"

    def state_document(self, state: str, fmt: Format = "json") -> str:
        if self.per_state is None:
            raise ValueError(f"{self.key} has no per-state documents")
        return f"v1/states/{state.lower()}/{self.per_state}.{fmt}"


US_CURRENT = Resource("us/current", "us_current", ("date",), "date DESC")
US_DAILY = Resource("us/daily", "us_daily", ("date",), "date DESC")
STATES_CURRENT = Resource(
    "states/current", "states_current", ("state", "date"), "state, date DESC", "current"
)
STATES_DAILY = Resource(
    "states/daily", "states_daily", ("state", "date"), "date DESC, state", "daily", True
)
STATES_INFO = Resource("states/info", "states_info", ("state",), "state", "info")

RESOURCES: tuple[Resource, ...] = (US_CURRENT, US_DAILY, STATES_CURRENT, STATES_DAILY, STATES_INFO)
BY_KEY = {resource.key: resource for resource in RESOURCES}
