"""Run a Great Expectations suite (GX Core 1.x) over a pandas DataFrame.

Suites are JSON files in ``expectations/suites/`` (``ExpectationSuite.to_json_dict()`` format). Values that
depend on the partition or on the city (the day's time window, city bounds, trailing null rates, expected
grid size, ...) are suite parameters, ``{"$PARAMETER": "name"}``, supplied at validation time.

One ephemeral data context per process: a pandas data source, one dataframe asset per suite with a
whole-dataframe batch definition, and one ``ValidationDefinition`` linking it to the suite.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

SUITES_DIR = Path(__file__).resolve().parent / "suites"
SAMPLE_ROWS = 5


@dataclass
class FailedExpectation:
    suite: str
    expectation: str  # GX type, e.g. expect_column_values_to_be_between
    kwargs: dict[str, Any]
    observed: dict[str, Any]  # unexpected_count / unexpected_percent / observed_value / error
    sample_index: list[Any] = field(default_factory=list)

    def describe(self) -> str:
        target = self.kwargs.get("column") or self.kwargs.get("column_list") or self.kwargs.get("column_A") or "table"
        if "column_A" in self.kwargs:
            target = f"{self.kwargs['column_A']} vs {self.kwargs['column_B']}"
        return f"{self.suite}: {self.expectation}({target}) {_brief(self.observed)}"


@dataclass
class SuiteOutcome:
    suite: str
    rows: int
    evaluated: int
    failed: list[FailedExpectation]
    sample_rows: pd.DataFrame

    @property
    def success(self) -> bool:
        return not self.failed


def _brief(observed: dict[str, Any]) -> str:
    parts = [f"{k}={v}" for k, v in observed.items() if k != "partial_unexpected_list"]
    if observed.get("partial_unexpected_list"):
        parts.append(f"e.g. {observed['partial_unexpected_list'][:3]}")
    return ", ".join(parts)


def suite_names() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.json"))


def load_suite_json(name: str) -> dict:
    return json.loads((SUITES_DIR / f"{name}.json").read_text())


@cache
def _context():
    import great_expectations as gx
    from great_expectations.data_context.types.base import ProgressBarsConfig

    context = gx.get_context(mode="ephemeral")
    context.variables.progress_bars = ProgressBarsConfig(globally=False)
    context.data_sources.add_pandas("pulse")
    return context


@cache
def _validation_definition(name: str):
    import great_expectations as gx

    context = _context()
    suite = context.suites.add(gx.ExpectationSuite(**load_suite_json(name)))
    batch_definition = (
        context.data_sources.get("pulse").add_dataframe_asset(name).add_batch_definition_whole_dataframe("whole")
    )
    return context.validation_definitions.add(gx.ValidationDefinition(name=name, data=batch_definition, suite=suite))


def prepare(names: list[str]) -> None:
    """Build the GX context and the suites' validation definitions now (about 4 s here, once per process), so a
    process that validates on a deadline does not pay for it on its first validation."""
    for name in names:
        _validation_definition(name)


def _plain(value: Any) -> Any:
    """JSON-friendly copy of a GX result value (numpy scalars, timestamps)."""
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, pd.Timestamp | np.datetime64):
        return str(value)
    return value


def validate(
    name: str, frame: pd.DataFrame, parameters: dict[str, Any] | None = None, batch: str | None = None
) -> SuiteOutcome:
    """Validate ``frame`` against suite ``name``; failed expectations carry up to 5 sample row indices.
    ``batch`` names the slice validated (a day) in the outcome: ``name[batch]``.

    A first pass asks GX for pass/fail only (about 4× faster on a million rows: no unexpected-value lists);
    only a suite that fails is run again for its failing values and sample rows."""
    frame = frame.reset_index(drop=True)
    definition = _validation_definition(name)
    parameters = parameters or {}
    result = definition.run(
        batch_parameters={"dataframe": frame},
        expectation_parameters=parameters,
        result_format={"result_format": "BOOLEAN_ONLY"},
    )
    if not result.success:
        result = definition.run(
            batch_parameters={"dataframe": frame},
            expectation_parameters=parameters,
            result_format={"result_format": "SUMMARY", "partial_unexpected_count": 20},
        )
    shown = f"{name}[{batch}]" if batch else name
    failed: list[FailedExpectation] = []
    sample: list[int] = []
    for r in result.results:
        if r.success:
            continue
        cfg = r.expectation_config
        kwargs = {k: _plain(v) for k, v in cfg.kwargs.items() if k != "batch_id"}
        res = dict(r.result or {})
        observed = {
            k: _plain(res[k])
            for k in ("observed_value", "unexpected_count", "unexpected_percent", "partial_unexpected_list")
            if k in res
        }
        if "unexpected_percent" in observed and observed["unexpected_percent"] is not None:
            observed["unexpected_percent"] = round(float(observed["unexpected_percent"]), 3)
        if "partial_unexpected_list" in observed:
            observed["partial_unexpected_list"] = observed["partial_unexpected_list"][:5]
        info = r.exception_info or {}
        errors = [info] if "exception_message" in info else list(info.values())
        messages = [e.get("exception_message") for e in errors if isinstance(e, dict) and e.get("raised_exception")]
        if messages:
            observed["error"] = messages[0]
        index = [i for i in res.get("partial_unexpected_index_list") or [] if isinstance(i, int | np.integer)]
        failed.append(FailedExpectation(shown, cfg.type, kwargs, observed, index[:SAMPLE_ROWS]))
        sample += [i for i in index[:SAMPLE_ROWS] if i not in sample]
    rows = frame.loc[sample[: 4 * SAMPLE_ROWS]] if sample else frame.iloc[:0]
    return SuiteOutcome(shown, len(frame), int(result.statistics["evaluated_expectations"]), failed, rows)


@dataclass
class Validation:
    """Outcomes of one or more suites guarding one asset, for one run's partitions."""

    outcomes: list[SuiteOutcome]
    partitions: list[str]
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None  # why there was nothing to validate, when that is right (a feed the city lacks)

    @property
    def success(self) -> bool:
        """Every suite passed; nothing validated is a failure unless the validation was skipped for a reason."""
        if self.skipped:
            return True
        return bool(self.outcomes) and all(o.success for o in self.outcomes)

    @property
    def failed(self) -> list[FailedExpectation]:
        return [f for o in self.outcomes for f in o.failed]

    def metadata(self) -> dict[str, Any]:
        """Plain metadata: the failing expectations, sample rows (markdown), counts, the partitions."""
        meta: dict[str, Any] = {
            "partitions": self.partitions,
            "suites": {
                o.suite: {"rows": o.rows, "evaluated": o.evaluated, "failed": len(o.failed)} for o in self.outcomes
            },
            "failed_expectations": [f.describe() for f in self.failed],
        }
        if self.skipped:
            meta["skipped"] = self.skipped
        samples = [o.sample_rows.assign(_suite=o.suite) for o in self.outcomes if len(o.sample_rows)]
        if samples:
            meta["sample_rows"] = markdown_table(pd.concat(samples).head(4 * SAMPLE_ROWS))
        if self.notes:
            meta["notes"] = self.notes
        return meta


def markdown_table(frame: pd.DataFrame) -> str:
    """A small frame as a markdown table (Dagster renders it in the check's metadata)."""
    cols = [str(c) for c in frame.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for row in frame.itertuples(index=False):
        lines.append("| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |")
    return "\n".join(lines)
