"""The event message schema: one JSON object per event, one event per message.

::

    {"schema_version": 1, "table": "ride_requests", "id": "r-00012345",
     "row": {"request_id": "r-00012345", "requested_at": "2026-12-07T08:15:02.123456+00:00",
             "pickup_lat": 40.75, "pickup_lng": -73.98, "service_type": 1, ...}}

* ``schema_version``: 1. A consumer refuses a version it does not know (the producer must not guess).
* ``table``: the event table, one of the landing zone's (:data:`pulse.data.simulator.SCHEMAS`); it must match the
  subject the message came on, ``pulse.events.<table>``.
* ``id``: the producer's own id of the event, also sent as the ``Nats-Msg-Id`` header, so JetStream drops a
  re-sent copy inside its duplicate window and ingest drops one after it (de-duplication by id). Tables with an
  id column use it (``request_id``, ``quote_id``, ``event_id``); the others use their natural key
  (``driver_pings``: ``<driver_id>@<pinged_at>``, ``weather``: ``<city>@<observed_at>``).
* ``row``: the row's columns, named as in the landing zone and the ingest contract
  (:data:`pulse.data.ingest.CONTRACTS`). Times are ISO 8601 strings with an offset (converted to UTC; a time
  without an offset is taken as UTC), numbers are JSON numbers, booleans JSON booleans; a missing column or a
  ``null`` is a NULL. Unknown columns are ignored (a producer may send more than the contract asks for).

**Malformed** (quarantined at intake with the reason, and acknowledged): not JSON, not an object, an unknown
``schema_version``, a ``table`` other than the subject's, no ``id``, no ``row`` object, a value of the wrong JSON
type for its column (a string where a number belongs), a time that does not parse, or no event time (the landing
day is the UTC day of the table's time column). Everything else lands; values that break the contract (a
required column NULL, coordinates outside the city, an unknown status, a duplicate id) are ingest's to
quarantine, with its reasons, as for files.

Decoding is column-wise: a batch's payloads, joined by newlines, go through Arrow's JSON reader against the
explicit schema (C++, no Python object per value). A batch that fails is halved until each refused message is
alone (a few reads per bad message), and the refused ones get their reason from :func:`message_problem`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from datetime import datetime

import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pj

from pulse.data.ingest import CONTRACTS
from pulse.data.simulator import SCHEMAS

SCHEMA_VERSION = 1
SUBJECT_PREFIX = "pulse.events."
TABLES: tuple[str, ...] = tuple(SCHEMAS)


def subject(table: str) -> str:
    return f"{SUBJECT_PREFIX}{table}"


def stream_name(table: str) -> str:
    """One JetStream stream per table: ``PULSE_EVENTS_RIDE_REQUESTS`` holds ``pulse.events.ride_requests``."""
    return f"PULSE_EVENTS_{table.upper()}"


def time_column(table: str) -> str:
    return CONTRACTS[table].ts_col


def _envelope_schema(table: str) -> pa.Schema:
    return pa.schema(
        [
            ("schema_version", pa.int64()),
            ("table", pa.string()),
            ("id", pa.string()),
            ("row", pa.struct(list(SCHEMAS[table]))),
        ]
    )


_ENVELOPES = {t: _envelope_schema(t) for t in TABLES}
_PARSE = {
    t: pj.ParseOptions(explicit_schema=s, unexpected_field_behavior="ignore", newlines_in_values=False)
    for t, s in _ENVELOPES.items()
}
_READ = pj.ReadOptions(use_threads=True, block_size=8 << 20)


# -- encoding (producers) ----------------------------------------------------------------------------------------
def _key(table: str, row: dict) -> str:
    c = CONTRACTS[table]
    if c.id_col:
        return str(row[c.id_col])
    ts = row[c.ts_col]
    ts_text = ts.isoformat() if isinstance(ts, datetime) else str(ts)
    other = row.get("driver_id") if table == "driver_pings" else row.get("city")
    return f"{other or ''}@{ts_text}"


def encode_rows(table: str, rows: pa.Table) -> list[tuple[str, bytes]]:
    """``(message id, payload)`` for every row of an Arrow table of ``table`` (the landing schema)."""
    out = []
    for row in rows.to_pylist():
        key = _key(table, row)
        out.append((key, orjson.dumps({"schema_version": SCHEMA_VERSION, "table": table, "id": key, "row": row})))
    return out


# -- decoding (the consumer) -------------------------------------------------------------------------------------
@dataclass
class Decoded:
    """A batch's rows (the landing schema, in message order) and its malformed messages."""

    rows: pa.Table
    positions: list[int]  # the message index of each row
    malformed: list[tuple[int, str]]  # (message index, reason)


# What Arrow's JSON reader raises for messages it cannot turn into the table's rows (not a bug of ours).
UNREADABLE = (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError, ValueError)


def decode(table: str, payloads: list[bytes]) -> Decoded:
    """Decode one table's message payloads; never raises for a bad message (it is reported as malformed)."""
    if not payloads:
        return Decoded(SCHEMAS[table].empty_table(), [], [])
    try:
        envelopes = _read(table, payloads)
        reason = _batch_problem(table, envelopes)
    except UNREADABLE as err:
        reason = str(err)
    if reason is None:
        return Decoded(_rows(table, envelopes), list(range(len(payloads))), [])
    # Slow path: halve the batch until each message Arrow's reader refuses (it is the judge of what lands) is
    # alone: a few reads for a bad message among thousands, all in C++. The reason is the Python judge's.
    malformed: list[tuple[int, str]] = []
    tables: list[pa.Table] = []
    kept: list[int] = []
    _read_halving(table, payloads, list(range(len(payloads))), tables, kept, malformed)
    rows = pa.concat_tables(tables) if tables else SCHEMAS[table].empty_table()
    return Decoded(rows, kept, sorted(malformed))


def _read_halving(
    table: str, payloads: list[bytes], idx: list[int], tables: list, kept: list[int], malformed: list
) -> None:
    if not idx:
        return
    try:
        env = _read(table, [payloads[i] for i in idx])
        problem = _batch_problem(table, env)
    except UNREADABLE as err:
        problem = f"unreadable: {err}"
    if problem is None:
        tables.append(_rows(table, env))
        kept.extend(idx)
    elif len(idx) == 1:
        malformed.append((idx[0], message_problem(table, payloads[idx[0]]) or problem))
    else:
        half = len(idx) // 2
        _read_halving(table, payloads, idx[:half], tables, kept, malformed)
        _read_halving(table, payloads, idx[half:], tables, kept, malformed)


def _read(table: str, payloads: list[bytes]) -> pa.Table:
    # A payload with a raw newline would split in two: JSON never needs one outside strings, and one inside a
    # string is invalid JSON anyway, so such a message is malformed (the per-message path says why).
    if any(b"\n" in p for p in payloads):
        raise ValueError("a payload holds a raw newline")
    return pj.read_json(io.BytesIO(b"\n".join(payloads)), read_options=_READ, parse_options=_PARSE[table])


def _batch_problem(table: str, env: pa.Table) -> str | None:
    if env.num_rows == 0:
        return "empty payload"
    if pc.any(pc.invert(pc.fill_null(pc.equal(env["schema_version"], SCHEMA_VERSION), False))).as_py():
        return f"schema_version is not {SCHEMA_VERSION}"
    if pc.any(pc.invert(pc.fill_null(pc.equal(env["table"], table), False))).as_py():
        return f"table is not {table}"
    if env["id"].null_count:
        return "no id"
    if env["row"].null_count:
        return "no row object"
    if _ts(table, env).null_count:
        return f"no event time ({time_column(table)})"
    return None


def _ts(table: str, env: pa.Table) -> pa.ChunkedArray:
    names = [f.name for f in SCHEMAS[table]]
    index = names.index(time_column(table))
    return pa.chunked_array([chunk.field(index) for chunk in env["row"].chunks], SCHEMAS[table].field(index).type)


def _rows(table: str, env: pa.Table) -> pa.Table:
    schema = SCHEMAS[table]
    row = env["row"]
    columns = [pa.chunked_array([chunk.field(i) for chunk in row.chunks], f.type) for i, f in enumerate(schema)]
    return pa.Table.from_arrays(columns, schema=schema).combine_chunks()


_KINDS = {
    pa.string(): (str,),
    pa.float64(): (int, float),
    pa.int64(): (int,),
    pa.bool_(): (bool,),
}


def message_problem(table: str, payload: bytes) -> str | None:
    """Why one message is malformed, or None (the slow path's judge; the rules of the module's docstring)."""
    try:
        body = orjson.loads(payload)
    except orjson.JSONDecodeError as err:
        return f"not JSON: {err}"
    if not isinstance(body, dict):
        return "not a JSON object"
    if body.get("schema_version") != SCHEMA_VERSION:
        return f"unknown schema_version {body.get('schema_version')!r} (this consumer reads {SCHEMA_VERSION})"
    if body.get("table") != table:
        return f"table {body.get('table')!r} on the {table} subject"
    if not isinstance(body.get("id"), str) or not body["id"]:
        return "no id"
    row = body.get("row")
    if not isinstance(row, dict):
        return "no row object"
    for field in SCHEMAS[table]:
        value = row.get(field.name)
        if value is None:
            if field.name == time_column(table):
                return f"no event time ({field.name})"
            continue
        if pa.types.is_timestamp(field.type):
            if not isinstance(value, str):
                return f"{field.name}: a time must be an ISO 8601 string, got {type(value).__name__}"
            try:
                datetime.fromisoformat(value)
            except ValueError:
                return f"{field.name}: unparsable time {value[:40]!r}"
            continue
        kinds = _KINDS[field.type]
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            return f"{field.name}: expected {field.type}, got {type(value).__name__}"
    return None
