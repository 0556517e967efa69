"""The landing zone's layout: ``landing/<table>/date=YYYY-MM-DD/part-*.parquet``, append-only.

A whole day written at once is ``part-0.parquet`` (the simulator, ``pulse import-trips``). A running day gets
micro-batches: one more part file per batch, named by its arrival so names sort in arrival order. Every part is
written under a temporary name and renamed, so a reader never sees half a file; readers list ``part-*.parquet``
only. A day's rows are the union of its parts.
"""

from __future__ import annotations

import itertools
import os
from datetime import date, datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pulse.settings import PulseSettings

WHOLE_DAY_PART = "part-0.parquet"
_sequence = itertools.count()


def day_folder(settings: PulseSettings, table: str, day: date) -> Path:
    return settings.landing_dir / table / f"date={day.isoformat()}"


def part_files(settings: PulseSettings, table: str, day: date) -> list[Path]:
    """Every part of a landing day, in name (= arrival) order."""
    return sorted(day_folder(settings, table, day).glob("part-*.parquet"))


def write_atomic(table: pa.Table, path: Path, durable: bool = False) -> Path:
    """Write ``table`` to ``path`` through a temporary name in the same folder, then rename it in place.

    ``durable``: the file is fsynced before the rename and its folder after it, so once this returns the part
    survives a crash of the machine, not only of the process (what an acknowledgement to a broker needs)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    if not durable:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
        return path
    with open(tmp, "wb") as f:
        pq.write_table(table, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return path


def write_part(
    settings: PulseSettings, table: str, day: date, rows: pa.Table, sent_at: datetime, durable: bool = False
) -> Path:
    """Land one micro-batch of ``table`` for ``day``: ``part-<sent_at>-<n>.parquet``, never overwriting one."""
    name = f"part-{sent_at:%Y%m%dT%H%M%S%f}-{os.getpid()}-{next(_sequence):06d}.parquet"
    return write_atomic(rows, day_folder(settings, table, day) / name, durable=durable)
