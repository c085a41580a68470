"""A deterministic synthetic CTP v1 dataset, for machines without the archived data.

It has the schema of the 2020-09-02 archive: the 56 jurisdictions (50 states, DC, AS, GU, MP,
PR, VI) with their real codes, names and FIPS codes; US records with the archive's 25 fields,
state records with its 54 fields and states/info records with its 11 fields, each in the
archive's key order; and the same files (``us_current``, ``us_daily``, ``states_current``,
``states_daily``, ``states_info`` as ``.json`` and ``.csv``, plus ``status.json``).

The figures are invented but keep the upstream's invariants: cumulative counts never decrease,
``*Increase`` fields are the day-over-day differences (0 on a jurisdiction's first day, as in the
archive), ``posNeg = positive + negative``, ``total = posNeg + pending``, ``totalTestResults =
posNeg`` (``totalTestResultsSource`` is ``"posNeg"``), and each US field is the sum of the
matching state fields (``null`` only when no state reports it).

Output depends only on the arguments: noise comes from SHA-256 of (seed, names), and the
arithmetic uses only +, -, *, / on floats, which IEEE 754 rounds the same everywhere.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from itertools import accumulate
from pathlib import Path

from replay_upstream.dataset import (
    STATES_CURRENT,
    STATES_DAILY,
    STATES_INFO,
    US_CURRENT,
    US_DAILY,
    Dataset,
    dataset_from_files,
)
from replay_upstream.formats import Record, Scalar, dump_csv, dump_json_array

DEFAULT_START = date(2020, 3, 1)
DEFAULT_END = date(2020, 9, 1)
DEFAULT_SEED = 2020

JURISDICTIONS: tuple[tuple[str, str, str], ...] = (
    ("AK", "Alaska", "02"),
    ("AL", "Alabama", "01"),
    ("AR", "Arkansas", "05"),
    ("AS", "American Samoa", "60"),
    ("AZ", "Arizona", "04"),
    ("CA", "California", "06"),
    ("CO", "Colorado", "08"),
    ("CT", "Connecticut", "09"),
    ("DC", "District of Columbia", "11"),
    ("DE", "Delaware", "10"),
    ("FL", "Florida", "12"),
    ("GA", "Georgia", "13"),
    ("GU", "Guam", "66"),
    ("HI", "Hawaii", "15"),
    ("IA", "Iowa", "19"),
    ("ID", "Idaho", "16"),
    ("IL", "Illinois", "17"),
    ("IN", "Indiana", "18"),
    ("KS", "Kansas", "20"),
    ("KY", "Kentucky", "21"),
    ("LA", "Louisiana", "22"),
    ("MA", "Massachusetts", "25"),
    ("MD", "Maryland", "24"),
    ("ME", "Maine", "23"),
    ("MI", "Michigan", "26"),
    ("MN", "Minnesota", "27"),
    ("MO", "Missouri", "29"),
    ("MP", "Northern Mariana Islands", "69"),
    ("MS", "Mississippi", "28"),
    ("MT", "Montana", "30"),
    ("NC", "North Carolina", "37"),
    ("ND", "North Dakota", "38"),
    ("NE", "Nebraska", "31"),
    ("NH", "New Hampshire", "33"),
    ("NJ", "New Jersey", "34"),
    ("NM", "New Mexico", "35"),
    ("NV", "Nevada", "32"),
    ("NY", "New York", "36"),
    ("OH", "Ohio", "39"),
    ("OK", "Oklahoma", "40"),
    ("OR", "Oregon", "41"),
    ("PA", "Pennsylvania", "42"),
    ("PR", "Puerto Rico", "72"),
    ("RI", "Rhode Island", "44"),
    ("SC", "South Carolina", "45"),
    ("SD", "South Dakota", "46"),
    ("TN", "Tennessee", "47"),
    ("TX", "Texas", "48"),
    ("UT", "Utah", "49"),
    ("VA", "Virginia", "51"),
    ("VI", "US Virgin Islands", "78"),
    ("VT", "Vermont", "50"),
    ("WA", "Washington", "53"),
    ("WI", "Wisconsin", "55"),
    ("WV", "West Virginia", "54"),
    ("WY", "Wyoming", "56"),
)
"""(code, name, FIPS) of the 56 jurisdictions, ordered by code as the upstream lists them."""

US_FIELDS = (
    "date",
    "states",
    "positive",
    "negative",
    "pending",
    "hospitalizedCurrently",
    "hospitalizedCumulative",
    "inIcuCurrently",
    "inIcuCumulative",
    "onVentilatorCurrently",
    "onVentilatorCumulative",
    "recovered",
    "dateChecked",
    "death",
    "hospitalized",
    "lastModified",
    "total",
    "totalTestResults",
    "posNeg",
    "deathIncrease",
    "hospitalizedIncrease",
    "negativeIncrease",
    "positiveIncrease",
    "totalTestResultsIncrease",
    "hash",
)
STATE_FIELDS = (
    "date",
    "state",
    "positive",
    "negative",
    "pending",
    "hospitalizedCurrently",
    "hospitalizedCumulative",
    "inIcuCurrently",
    "inIcuCumulative",
    "onVentilatorCurrently",
    "onVentilatorCumulative",
    "recovered",
    "dataQualityGrade",
    "lastUpdateEt",
    "dateModified",
    "checkTimeEt",
    "death",
    "hospitalized",
    "dateChecked",
    "totalTestsViral",
    "positiveTestsViral",
    "negativeTestsViral",
    "positiveCasesViral",
    "deathConfirmed",
    "deathProbable",
    "totalTestEncountersViral",
    "totalTestsPeopleViral",
    "totalTestsAntibody",
    "positiveTestsAntibody",
    "negativeTestsAntibody",
    "totalTestsPeopleAntibody",
    "positiveTestsPeopleAntibody",
    "negativeTestsPeopleAntibody",
    "totalTestsPeopleAntigen",
    "positiveTestsPeopleAntigen",
    "totalTestsAntigen",
    "positiveTestsAntigen",
    "fips",
    "positiveIncrease",
    "negativeIncrease",
    "total",
    "totalTestResultsSource",
    "totalTestResults",
    "totalTestResultsIncrease",
    "posNeg",
    "deathIncrease",
    "hospitalizedIncrease",
    "hash",
    "commercialScore",
    "negativeRegularScore",
    "negativeScore",
    "positiveScore",
    "score",
    "grade",
)
INFO_FIELDS = (
    "state",
    "notes",
    "covid19Site",
    "covid19SiteSecondary",
    "covid19SiteTertiary",
    "twitter",
    "covid19SiteOld",
    "name",
    "fips",
    "pui",
    "pum",
)
US_SUMMED = tuple(
    f for f in US_FIELDS if f not in ("date", "states", "dateChecked", "lastModified", "hash")
)
"""US fields that are sums of the state fields of the same name."""

CUMULATIVE_FIELDS = (
    "positive",
    "negative",
    "posNeg",
    "totalTestResults",
    "death",
    "hospitalizedCumulative",
    "hospitalized",
    "inIcuCumulative",
    "onVentilatorCumulative",
    "recovered",
)
"""Fields that never decrease over time (``null`` counts as 0), in states and the US."""

INCREASES = {
    "positiveIncrease": "positive",
    "negativeIncrease": "negative",
    "deathIncrease": "death",
    "hospitalizedIncrease": "hospitalized",
    "totalTestResultsIncrease": "totalTestResults",
}
"""``*Increase`` field -> the cumulative field it is the day-over-day difference of."""

_GRADES = ("A+", "A", "A", "B", "B", "C", "D")


@dataclass(frozen=True)
class _Profile:
    """What is fixed about one jurisdiction over the whole history."""

    population: float
    waves: tuple[tuple[float, float, float], ...]  # (peak day, width in days, cases/person/day)
    positivity: float
    hospital_rate: float
    icu_share: float
    fatality: float
    grade: str
    update_hour: int
    flags: frozenset[str]
    hospital_start: int
    recovered_start: int


def _unit(seed: int, *parts: object) -> float:
    """A number in [0, 1) fixed by ``seed`` and ``parts``."""
    text = repr((seed, *parts)).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "big") / 2.0**64


def _profile(seed: int, code: str, days: int) -> _Profile:
    def u(name: str) -> float:
        return _unit(seed, code, name)

    optional = {
        "pending": 0.2,
        "hospitalizedCumulative": 0.65,
        "inIcuCurrently": 0.6,
        "inIcuCumulative": 0.25,
        "onVentilatorCurrently": 0.5,
        "onVentilatorCumulative": 0.1,
        "recovered": 0.85,
        "deathBreakdown": 0.5,
        "viral": 0.7,
        "testsByResult": 0.25,
        "encounters": 0.1,
        "people": 0.45,
        "antibody": 0.3,
        "antigen": 0.05,
    }
    return _Profile(
        population=300_000.0 + 30_000_000.0 * u("population") * u("population") * u("population"),
        waves=(
            (
                days * (0.1 + 0.25 * u("peak1")),
                8.0 + 20.0 * u("width1"),
                0.00002 + 0.0002 * u("a1"),
            ),
            (
                days * (0.55 + 0.4 * u("peak2")),
                10.0 + 30.0 * u("width2"),
                0.00003 + 0.0003 * u("a2"),
            ),
        ),
        positivity=0.04 + 0.16 * u("positivity"),
        hospital_rate=0.03 + 0.07 * u("hospital"),
        icu_share=0.15 + 0.15 * u("icu"),
        fatality=0.01 + 0.03 * u("fatality"),
        grade=_GRADES[int(u("grade") * len(_GRADES))],
        update_hour=int(u("hour") * 12),
        flags=frozenset(name for name, share in optional.items() if u(name) < share),
        hospital_start=int(5 + 30 * u("hospitalStart")),
        recovered_start=int(20 + 30 * u("recoveredStart")),
    )


def _daily_cases(seed: int, code: str, profile: _Profile, day: int) -> int:
    """New positive cases of one day: a sum of bell-shaped waves with day-to-day noise."""
    rate = 0.000002
    for peak, width, height in profile.waves:
        x = (day - peak) / width
        rate += height / ((1.0 + x * x) * (1.0 + x * x))
    noise = 0.8 + 0.4 * _unit(seed, code, "cases", day)
    return int(profile.population * rate * noise)


def _daily_negatives(seed: int, code: str, profile: _Profile, day: int, cases: int) -> int:
    ramp = min(1.0, (day + 1) / 60.0)
    baseline = profile.population * 0.0008 * ramp * (0.8 + 0.4 * _unit(seed, code, "tests", day))
    return int(cases * (1.0 / profile.positivity - 1.0) + baseline)


def _sha1(record: Mapping[str, Scalar]) -> str:
    text = json.dumps(record, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha1(text, usedforsecurity=False).hexdigest()


def _times(day: date, profile: _Profile) -> dict[str, Scalar]:
    """The upstream's four time fields for a record (lastUpdateEt shows the UTC clock)."""
    moment = datetime.combine(day, time(16, 59), UTC) - timedelta(days=1)
    moment += timedelta(hours=profile.update_hour)
    return {
        "lastUpdateEt": f"{moment.month}/{moment.day}/{moment.year} {moment:%H:%M}",
        "dateModified": f"{moment:%Y-%m-%dT%H:%M:%SZ}",
        "checkTimeEt": f"{moment - timedelta(hours=4):%m/%d %H:%M}",
        "dateChecked": f"{moment:%Y-%m-%dT%H:%M:%SZ}",
    }


def _state_history(seed: int, code: str, fips: str, days: Sequence[date]) -> list[Record]:
    """The records of one jurisdiction, oldest first."""
    profile = _profile(seed, code, len(days))
    flags = profile.flags
    cases = [_daily_cases(seed, code, profile, d) for d in range(len(days))]
    records: list[Record] = []
    cumulative = list(accumulate(cases))
    negative = 0
    for d, day in enumerate(days):
        positive = cumulative[d]
        negative += _daily_negatives(seed, code, profile, d, cases[d])
        deaths = int(_at(cumulative, d - 14) * profile.fatality)
        hosp_cum = int(_at(cumulative, d - 3) * profile.hospital_rate * 0.8)
        icu_cum = int(hosp_cum * profile.icu_share)
        vent_cum = icu_cum // 3
        hospitalized_now = int(sum(cases[max(0, d - 13) : d + 1]) * profile.hospital_rate)
        in_icu_now = int(hospitalized_now * profile.icu_share)
        hospital = d >= profile.hospital_start
        pos_neg = positive + negative
        pending = int(cases[d] * 0.05) if "pending" in flags else None
        death = deaths or None
        previous = records[-1] if records else None
        viral = "viral" in flags
        record: Record = {
            "date": int(f"{day:%Y%m%d}"),
            "state": code,
            "positive": positive,
            "negative": negative,
            "pending": pending,
            "hospitalizedCurrently": hospitalized_now if hospital else None,
            "hospitalizedCumulative": hosp_cum
            if hospital and "hospitalizedCumulative" in flags
            else None,
            "inIcuCurrently": in_icu_now if hospital and "inIcuCurrently" in flags else None,
            "inIcuCumulative": icu_cum if hospital and "inIcuCumulative" in flags else None,
            "onVentilatorCurrently": (
                in_icu_now // 3 if hospital and "onVentilatorCurrently" in flags else None
            ),
            "onVentilatorCumulative": (
                vent_cum if hospital and "onVentilatorCumulative" in flags else None
            ),
            "recovered": (
                int(_at(cumulative, d - 21) * 0.97)
                if d >= profile.recovered_start and "recovered" in flags
                else None
            ),
            "dataQualityGrade": profile.grade if d >= 14 else "",
            **_times(day, profile),
            "death": death,
            "hospitalized": None,
            "totalTestsViral": pos_neg if viral else None,
            "positiveTestsViral": positive if viral and "testsByResult" in flags else None,
            "negativeTestsViral": negative if viral and "testsByResult" in flags else None,
            "positiveCasesViral": positive if viral else None,
            "deathConfirmed": (
                deaths - deaths // 20 if death and "deathBreakdown" in flags else None
            ),
            "deathProbable": deaths // 20 if death and "deathBreakdown" in flags else None,
            "totalTestEncountersViral": pos_neg * 11 // 10 if "encounters" in flags else None,
            "totalTestsPeopleViral": pos_neg * 4 // 5 if "people" in flags else None,
            "totalTestsAntibody": pos_neg // 12 if "antibody" in flags else None,
            "positiveTestsAntibody": pos_neg // 12 // 25 if "antibody" in flags else None,
            "negativeTestsAntibody": (
                pos_neg // 12 - pos_neg // 12 // 25 if "antibody" in flags else None
            ),
            "totalTestsPeopleAntibody": None,
            "positiveTestsPeopleAntibody": None,
            "negativeTestsPeopleAntibody": None,
            "totalTestsPeopleAntigen": None,
            "positiveTestsPeopleAntigen": None,
            "totalTestsAntigen": pos_neg // 30 if "antigen" in flags else None,
            "positiveTestsAntigen": pos_neg // 30 // 40 if "antigen" in flags else None,
            "fips": fips,
            "positiveIncrease": 0,
            "negativeIncrease": 0,
            "total": pos_neg + (pending or 0),
            "totalTestResultsSource": "posNeg",
            "totalTestResults": pos_neg,
            "totalTestResultsIncrease": 0,
            "posNeg": pos_neg,
            "deathIncrease": 0,
            "hospitalizedIncrease": 0,
            "hash": "",
            "commercialScore": 0,
            "negativeRegularScore": 0,
            "negativeScore": 0,
            "positiveScore": 0,
            "score": 0,
            "grade": "",
        }
        record["hospitalized"] = record["hospitalizedCumulative"]
        record = {field: record[field] for field in STATE_FIELDS}
        if previous is not None:
            for increase, base in INCREASES.items():
                record[increase] = _int(record[base]) - _int(previous[base])
        record["hash"] = _sha1(record)
        records.append(record)
    return records


def _at(values: Sequence[int], index: int) -> int:
    """``values[index]``, or 0 before the first day."""
    return values[index] if index >= 0 else 0


def _int(value: Scalar) -> int:
    """An integer field's value, ``null`` as 0."""
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _us_record(day: date, states: Sequence[Record]) -> Record:
    stamp = f"{day:%Y-%m-%d}T00:00:00Z"
    record: Record = {"date": int(f"{day:%Y%m%d}"), "states": len(states)}
    for field in US_SUMMED:
        values = [v for v in (s[field] for s in states) if isinstance(v, int)]
        record[field] = sum(values) if values else None
    record.update(dateChecked=stamp, lastModified=stamp, hash="")
    record = {field: record[field] for field in US_FIELDS}
    record["hash"] = _sha1(record)
    return record


def _info_record(seed: int, code: str, name: str, fips: str) -> Record:
    def u(part: str) -> float:
        return _unit(seed, code, "info", part)

    site = f"https://covid19.example.org/{code.lower()}"
    note = f"Synthetic figures for {name}, generated by covid-stats replay-upstream; not real data."
    record: Record = {
        "state": code,
        "notes": None if u("notes") < 0.05 else note,
        "covid19Site": site,
        "covid19SiteSecondary": f"{site}/dashboard" if u("secondary") < 0.75 else "",
        "covid19SiteTertiary": f"{site}/testing" if u("tertiary") < 0.4 else "",
        "twitter": f"@{code}Health",
        "covid19SiteOld": f"{site}/archive",
        "name": name,
        "fips": fips,
        "pui": "",
        "pum": False,
    }
    return {field: record[field] for field in INFO_FIELDS}


def synthetic_records(
    *, start: date = DEFAULT_START, end: date = DEFAULT_END, seed: int = DEFAULT_SEED
) -> dict[str, list[Record]]:
    """The record lists of the synthetic dataset, by kind, in the upstream's order."""
    if end < start:
        raise ValueError(f"end {end} is before start {start}")
    days = [start + timedelta(days=n) for n in range((end - start).days + 1)]
    histories = [_state_history(seed, code, fips, days) for code, _, fips in JURISDICTIONS]
    by_day = [[history[d] for history in histories] for d in range(len(days))]
    states_daily = [record for d in reversed(range(len(days))) for record in by_day[d]]
    us_daily = [_us_record(days[d], by_day[d]) for d in reversed(range(len(days)))]
    return {
        US_CURRENT: us_daily[:1],
        US_DAILY: us_daily,
        STATES_CURRENT: by_day[-1],
        STATES_DAILY: states_daily,
        STATES_INFO: [_info_record(seed, code, name, fips) for code, name, fips in JURISDICTIONS],
    }


def _build_time(end: date) -> datetime:
    return datetime.combine(end + timedelta(days=1), time(4, 0), UTC)


def synthetic_files(
    *, start: date = DEFAULT_START, end: date = DEFAULT_END, seed: int = DEFAULT_SEED
) -> dict[str, bytes]:
    """File name -> bytes of the synthetic dataset, named and formatted like the archive."""
    files: dict[str, bytes] = {}
    for kind, records in synthetic_records(start=start, end=end, seed=seed).items():
        files[f"{kind}.json"] = dump_json_array(records)
        files[f"{kind}.csv"] = dump_csv(records)
    status = {
        "buildTime": f"{_build_time(end):%Y-%m-%dT%H:%M:%S}.000Z",
        "production": False,
        "runNumber": str(seed),
    }
    files["status.json"] = (json.dumps(status, separators=(",", ":")) + "\n").encode()
    return files


def write_synthetic_dataset(
    directory: Path | str,
    *,
    start: date = DEFAULT_START,
    end: date = DEFAULT_END,
    seed: int = DEFAULT_SEED,
) -> list[Path]:
    """Write the synthetic dataset's files into ``directory`` (created if missing)."""
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    written = []
    for name, data in synthetic_files(start=start, end=end, seed=seed).items():
        path = target / name
        path.write_bytes(data)
        written.append(path)
    return written


def synthetic_dataset(
    *, start: date = DEFAULT_START, end: date = DEFAULT_END, seed: int = DEFAULT_SEED
) -> Dataset:
    """The synthetic dataset in memory, as :func:`load_dataset` would read it once written."""
    return dataset_from_files(
        synthetic_files(start=start, end=end, seed=seed),
        source=f"synthetic (seed {seed}, {start:%Y-%m-%d}..{end:%Y-%m-%d})",
        fallback_time=_build_time(end),
    )
