"""Alerts to people, without Dagster: what an alert says, how repeats of one condition are grouped, and the POST
to a Slack-compatible webhook. The Dagster side (which events raise which alert) is ``pulse_assets/alerts.py``.

**An alert** names what happened, the asset or run, the reason and a link into the Dagster UI. Its payload is
Slack's incoming-webhook JSON, ``{"text": ..., "blocks": [...]}``; ``text`` alone carries all four (what a
receiver that ignores blocks shows, and Slack's notification line).

**Grouping** (:class:`AlertBook`). Each alert belongs to a *condition* (``key``: its kind plus the asset, check or
job, e.g. ``check_failed:raw/ride_requests:great_expectations``) and names its *occurrence* (the day, run,
candidate version or bucket). The first occurrence of a condition is sent at once and opens a window of
``repeat_minutes``. Later occurrences in the window are counted, not sent (an occurrence already counted, such as
the same day reported twice, is ignored). The count goes out as one grouped message ("3 more since …"), at most
once per window: when the condition clears (a passing result, a day without severe drift, a bucket within its
budget, a successful run of the job), or when the window ends. A window that ends with repeats starts the next
one; a window that ends without repeats closes the condition, and its next occurrence is sent again at once. A
condition that flaps (late, on time, late …) therefore sends the first alert and at most two grouped messages a
window.

**Delivery.** Messages go to an outbox (persisted with the groups) before any POST; :func:`deliver` sends the
outbox in order, each POST with a timeout and retried a few times with backoff. A webhook that keeps failing
leaves the message and those after it in the outbox for the next call: nothing is counted as sent that was not
accepted (2xx). A 4xx other than 408/429 is a refusal of that payload that no retry can fix: it is logged and
dropped, so one bad message cannot hold the others back. The outbox keeps the newest :data:`OUTBOX_LIMIT`
messages; older ones are dropped and counted (``dropped``), and the next delivered message says so.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from typing import Any

import httpx
from tenacity import Retrying, retry_if_exception, stop_after_attempt, wait_exponential

log = logging.getLogger("pulse.alerts")

OUTBOX_LIMIT = 200
OCCURRENCES_KEPT = 50  # per condition and window: enough to dedupe repeats, small enough for a cursor
TEXT_LIMIT = 2900  # Slack: a section's text is at most 3000 characters
HEADER_LIMIT = 150  # Slack: a header block's text


@dataclass(frozen=True)
class Alert:
    """One occurrence of a condition worth telling a person about."""

    kind: str  # run_failed, check_failed, drift_severe, promotion_refused, live_late, live_failed
    key: str  # the condition: kind plus the asset, check or job
    what: str  # "Run failed", "Blocking check failed", …
    subject: str  # the asset or run, as a person reads it
    reason: str
    link: str  # into the Dagster UI
    at: float  # when it happened (epoch seconds)
    occurrence: str  # what makes it a new occurrence of its condition: day, run id, version, bucket


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M UTC")


def _clip(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _blocks(header: str, fields: list[tuple[str, str]], link: str, context: str) -> list[dict[str, Any]]:
    body = "\n".join(f"*{name}:* {value}" for name, value in fields)
    return [
        {"type": "header", "text": {"type": "plain_text", "text": _clip(header, HEADER_LIMIT)}},
        {"type": "section", "text": {"type": "mrkdwn", "text": _clip(body, TEXT_LIMIT)}},
        {
            "type": "actions",
            "elements": [{"type": "button", "text": {"type": "plain_text", "text": "Open in Dagster"}, "url": link}],
        },
        {"type": "context", "elements": [{"type": "mrkdwn", "text": _clip(context, TEXT_LIMIT)}]},
    ]


def alert_payload(alert: Alert, city: str = "") -> dict[str, Any]:
    """The Slack-compatible message of a first occurrence."""
    where = f"[{city}] " if city else ""
    text = f"{where}{alert.what}: {alert.subject}\nReason: {alert.reason}\n{alert.link}"
    fields = [("What", alert.what), ("Where", alert.subject), ("Reason", alert.reason)]
    context = f"{_when(alert.at)} · condition `{alert.key}` · repeats are grouped"
    return {
        "text": _clip(text, TEXT_LIMIT),
        "blocks": _blocks(f"{where}{alert.what}", fields, alert.link, context),
    }


@dataclass
class Group:
    """The open window of one condition."""

    kind: str
    what: str
    subject: str
    link: str
    first_at: float  # first occurrence of this episode (sent)
    window_start: float
    last_at: float
    last_reason: str
    repeats: int = 0  # counted in this window, not sent yet
    total: int = 1  # occurrences of the episode, the first one included
    summarised: bool = False  # this window's grouped message went out (at a clear)
    cleared_at: float | None = None
    occurrences: list[str] = field(default_factory=list)  # this window's, newest last
    repeat_subjects: list[str] = field(default_factory=list)  # the repeats' subjects, for the grouped message


def summary_payload(key: str, group: Group, cleared: bool, city: str = "") -> dict[str, Any]:
    """The grouped message of a window's repeats."""
    where = f"[{city}] " if city else ""
    n = group.repeats
    state = f"cleared at {_when(group.cleared_at)}" if cleared and group.cleared_at else "still occurring"
    subjects = ", ".join(dict.fromkeys(group.repeat_subjects))
    what = f"{group.what}: {n} more since {_when(group.window_start)} ({state})"
    text = f"{where}{what}\nLast: {group.subject}\nReason: {group.last_reason}\n{group.link}"
    fields = [
        ("What", f"{group.what}, {n} more time{'s' if n != 1 else ''} ({group.total} since {_when(group.first_at)})"),
        ("Where", subjects or group.subject),
        ("Last reason", group.last_reason),
        ("State", state),
    ]
    return {
        "text": _clip(text, TEXT_LIMIT),
        "blocks": _blocks(f"{where}{group.what}: {n} more", fields, group.link, f"condition `{key}` · grouped"),
    }


class AlertBook:
    """Open conditions and the outbox, as one JSON-able document (see the module for the rules)."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        data = data or {}
        self.groups: dict[str, Group] = {k: Group(**v) for k, v in data.get("groups", {}).items()}
        self.outbox: list[dict[str, Any]] = list(data.get("outbox", []))
        self.dropped: int = int(data.get("dropped", 0))
        self.cursors: dict[str, Any] = dict(data.get("cursors", {}))

    def to_json(self) -> str:
        return json.dumps(
            {
                "groups": {k: asdict(g) for k, g in self.groups.items()},
                "outbox": self.outbox,
                "dropped": self.dropped,
                "cursors": self.cursors,
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str | None) -> AlertBook:
        return cls(json.loads(text) if text else None)

    def _queue(self, payload: dict[str, Any]) -> None:
        self.outbox.append(payload)
        if len(self.outbox) > OUTBOX_LIMIT:
            over = len(self.outbox) - OUTBOX_LIMIT
            self.outbox = self.outbox[over:]
            self.dropped += over
            log.error("alert outbox full: %d oldest message(s) dropped", over)

    def record(self, alert: Alert, city: str = "") -> bool:
        """An occurrence: queued at once when its condition is not open (returns True), else counted."""
        group = self.groups.get(alert.key)
        if group is None:
            self.groups[alert.key] = Group(
                kind=alert.kind,
                what=alert.what,
                subject=alert.subject,
                link=alert.link,
                first_at=alert.at,
                window_start=alert.at,
                last_at=alert.at,
                last_reason=alert.reason,
                occurrences=[alert.occurrence],
            )
            self._queue(alert_payload(alert, city))
            return True
        if alert.occurrence in group.occurrences:
            return False
        group.occurrences = [*group.occurrences, alert.occurrence][-OCCURRENCES_KEPT:]
        group.repeat_subjects = [*group.repeat_subjects, alert.subject][-OCCURRENCES_KEPT:]
        group.repeats += 1
        group.total += 1
        group.subject, group.link, group.last_reason = alert.subject, alert.link, alert.reason
        group.last_at = max(group.last_at, alert.at)
        group.cleared_at = None
        return False

    def clear(self, key: str, at: float, city: str = "") -> bool:
        """The condition is no longer true: its repeats go out now unless this window already summarised."""
        group = self.groups.get(key)
        if group is None or at < group.last_at:
            return False
        group.cleared_at = at
        if group.repeats and not group.summarised:
            self._queue(summary_payload(key, group, cleared=True, city=city))
            group.repeats, group.summarised, group.repeat_subjects = 0, True, []
            return True
        return False

    def due(self, now: float, window_seconds: float, city: str = "") -> int:
        """Close the windows that ended by ``now``: repeats go out as one message and open the next window; a
        window without repeats closes its condition. Returns the number of messages queued."""
        queued = 0
        for key, group in list(self.groups.items()):
            if now < group.window_start + window_seconds:
                continue
            if group.repeats:
                self._queue(summary_payload(key, group, cleared=group.cleared_at is not None, city=city))
                queued += 1
                group.window_start, group.repeats, group.summarised = now, 0, False
                group.repeat_subjects, group.occurrences = [], group.occurrences[-1:]
            else:
                del self.groups[key]
        return queued

    def open_keys(self, kind: str) -> list[str]:
        return [k for k, g in self.groups.items() if g.kind == kind]


class WebhookError(RuntimeError):
    """The webhook did not accept a message (after retries)."""


class WebhookRefused(WebhookError):
    """A 4xx (not 408/429): the receiver refuses this payload; retrying cannot help."""


def _retryable(err: BaseException) -> bool:
    return isinstance(err, WebhookError) and not isinstance(err, WebhookRefused)


def post(url: str, payload: dict[str, Any], timeout: float = 5.0, attempts: int = 3, backoff: float = 0.5) -> None:
    """POST one message; retried on connection errors, timeouts, 408, 429 and 5xx. Raises :class:`WebhookError`
    (the URL, which carries the webhook's token, is never in its message)."""

    def once() -> None:
        try:
            response = httpx.post(url, json=payload, timeout=timeout)
        except httpx.HTTPError as err:
            raise WebhookError(f"{type(err).__name__}: no answer from the webhook") from None
        if response.is_success:
            return
        detail = f"HTTP {response.status_code}: {response.text[:200]}"
        if 400 <= response.status_code < 500 and response.status_code not in (408, 429):
            raise WebhookRefused(detail)
        raise WebhookError(detail)

    for attempt in Retrying(
        stop=stop_after_attempt(attempts),
        wait=wait_exponential(multiplier=backoff, max=4 * backoff),
        retry=retry_if_exception(_retryable),
        reraise=True,
    ):
        with attempt:
            once()


@dataclass
class Delivery:
    sent: int = 0
    refused: int = 0
    waiting: int = 0
    error: str | None = None


def deliver(book: AlertBook, url: str, timeout: float = 5.0, attempts: int = 3, backoff: float = 0.5) -> Delivery:
    """Send the outbox in order. A refused payload is dropped; any other failure stops the delivery and keeps
    that message and the ones after it for the next call."""
    result = Delivery()
    while book.outbox:
        payload = book.outbox[0]
        if book.dropped:
            note = f"({book.dropped} earlier alert message(s) were dropped: the webhook failed for too long)"
            payload = {**payload, "text": f"{payload['text']}\n{note}"}
        try:
            post(url, payload, timeout=timeout, attempts=attempts, backoff=backoff)
        except WebhookRefused as err:
            log.error("the webhook refused an alert message, dropped: %s", err)
            result.refused += 1
        except WebhookError as err:
            result.error = str(err)
            break
        else:
            result.sent += 1
            book.dropped = 0
        book.outbox.pop(0)
    result.waiting = len(book.outbox)
    return result
