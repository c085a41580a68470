"""The value types of the CTP v1 fields: a fact of the upstream, listed here once.

CSV files do not say which columns are text, so reading them back as the upstream's JSON needs
this table: the string fields of each kind of record (``fips`` is ``"02"``, ``hash`` may look
like a number, ``totalTestResultsSource`` is a string although the upstream's openapi.json says
integer), the string fields whose empty cells were ``""`` rather than ``null`` in the JSON
(``grade``, ``dataQualityGrade``, ``lastUpdateEt``; the text fields of ``states/info``) and the
boolean ones (``pum``). Every other field is a number: integer-looking cells become integers,
empty cells ``null`` (see :meth:`~replay_upstream.formats.FieldTypes.cell`).

The table reproduces the JSON files of the 2020-09-02 API snapshot from their CSV twins exactly
and covers the fields added later (``probableCases``, ``hospitalizedDischarged``, the extra
``states/info`` sites and test-unit fields are numbers or listed here).
"""

from __future__ import annotations

from replay_upstream.formats import FieldTypes

US_TYPES = FieldTypes(strings=frozenset({"dateChecked", "lastModified", "hash"}))
"""``us/current`` and ``us/daily`` records."""

STATE_TYPES = FieldTypes(
    strings=frozenset(
        {
            "state",
            "fips",
            "dataQualityGrade",
            "lastUpdateEt",
            "dateModified",
            "checkTimeEt",
            "dateChecked",
            "totalTestResultsSource",
            "hash",
            "grade",
        }
    ),
    empty_strings=frozenset({"grade", "dataQualityGrade", "lastUpdateEt"}),
)
"""``states/current`` and ``states/daily`` records (and the website's states history)."""

_INFO_TEXT = frozenset(
    {
        "state",
        "covid19Site",
        "covid19SiteSecondary",
        "covid19SiteTertiary",
        "covid19SiteQuaternary",
        "covid19SiteQuinary",
        "twitter",
        "covid19SiteOld",
        "covidTrackingProjectPreferredTotalTestUnits",
        "covidTrackingProjectPreferredTotalTestField",
        "totalTestResultsField",
        "pui",
        "name",
        "fips",
    }
)
INFO_TYPES = FieldTypes(
    strings=_INFO_TEXT | {"notes"}, empty_strings=_INFO_TEXT, booleans=frozenset({"pum"})
)
"""``states/info`` records: text fields are ``""`` when empty, ``notes`` is ``null``."""
