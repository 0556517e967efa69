"""Automation declared on the assets, where the UI shows it and Dagster's automation sensor evaluates it.

* ``DAY`` — day-partitioned warehouse assets: a day is (re)built once every day it reads is in, for every day,
  not only the newest one (Dagster's ``eager`` without its latest-window clause). A re-landed day flows down,
  and a changed day rebuilds the days whose lookback read it (the partition mappings say which).
* ``FOLLOW`` — current-state assets (the online store, the backtest, the champion): refreshed after any of
  their inputs changed, once, never while an input is still being written.

None of them runs on an input whose blocking check failed (for a day asset: on that day): a faulty day stops
where it entered, in the automation as in the run that loaded it.
* ``CODE`` — the Feast registry: applied when missing or when its code (the repository's files) changed.
* ``RETRAIN`` — the candidate: one retrain after new data, at most one per cooldown (a cron tick must have
  passed since the last request), never while an input is in progress and never while a blocking check of an
  input fails (a day whose checks fail must be fixed or re-landed first).

What Dagster cannot see — files arriving in the landing zone — stays a sensor (`pulse_assets/sensors.py`).
Every run writes the DuckDB warehouse under the tag ``pulse/warehouse``, which `dagster.yaml` limits to one
run at a time.
"""

import dagster as dg

from pulse.settings import PulseSettings

AC = dg.AutomationCondition


def cooldown_cron(minutes: float) -> str:
    """A cron schedule whose ticks are about ``minutes`` apart (rounded to a divisor of an hour or a day)."""
    if minutes <= 1:
        return "* * * * *"
    if minutes < 60:
        step = max(m for m in (1, 2, 3, 4, 5, 6, 10, 12, 15, 20, 30) if m <= minutes)
        return f"*/{step} * * * *"
    hours = max(h for h in (1, 2, 3, 4, 6, 8, 12) if h <= minutes / 60) if minutes < 1440 else 24
    return "0 0 * * *" if hours == 24 else f"0 */{hours} * * *"


def _checks_fail_upstream() -> dg.AutomationCondition:
    return AC.any_deps_match(AC.any_checks_match(AC.check_failed(), blocking_only=True)).with_label(
        "a blocking check of an input fails"
    )


DAY = AC.eager().without(AC.in_latest_time_window()).with_label("eager, every day")

FOLLOW = (AC.any_deps_updated().since_last_handled() & ~AC.any_deps_in_progress() & ~AC.in_progress()).with_label(
    "after its inputs change"
)


CODE = (AC.on_missing() | AC.code_version_changed()).with_label("when missing or its code changed")


def retrain(cooldown_minutes: float) -> dg.AutomationCondition:
    cron = cooldown_cron(cooldown_minutes)
    # Handled when a candidate is made, not when one is requested: a retrain that failed is tried again after
    # the cooldown, and data landing while a retrain is queued is not taken for trained on.
    new_data = (
        AC.any_deps_updated()
        .since(AC.newly_updated() | AC.initial_evaluation())
        .with_label("new data since the last candidate")
    )
    cooled = AC.cron_tick_passed(cron, "UTC").since(AC.newly_requested()).with_label(f"cooldown ({cron})")
    return (new_data & cooled & ~AC.any_deps_in_progress() & ~AC.in_progress() & ~_checks_fail_upstream()).with_label(
        "retrain"
    )


RETRAIN = retrain(PulseSettings().promotion.retrain_cooldown_minutes)
