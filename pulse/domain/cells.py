"""Small H3 helpers shared by the simulator and ingest (h3-py 4.x, string cell ids)."""

from __future__ import annotations

import h3
import numpy as np
from h3.api import basic_int


def cells_for_points(lat: np.ndarray, lng: np.ndarray, res: int) -> np.ndarray:
    """H3 cell id (str) of every point; ``None`` where a coordinate is missing or out of range."""
    ints = cell_ints_for_points(lat, lng, res)
    out = np.full(ints.shape, None, dtype=object)
    found = ints != 0
    out[found] = [h3.int_to_str(c) for c in ints[found].tolist()]
    return out


def cell_ints_for_points(lat: np.ndarray, lng: np.ndarray, res: int) -> np.ndarray:
    """H3 cell of every point as its 64-bit integer (uint64), 0 where a coordinate is missing or out of range.

    h3-py 4.x has no vectorised ``latlng_to_cell`` (``h3.api.numpy_int`` only vectorises cell inputs), so
    this is a loop over plain floats, ~1 µs per point. Out-of-range latitudes are refused here because h3
    silently wraps them onto a real cell. The string id is the integer in lower-case hex (DuckDB writes it as
    ``lower(hex(cell))``); a numpy array of integers keeps millions of Python strings out of ingest, which cost
    as much as the H3 calls.
    """
    lat = np.asarray(lat, dtype=np.float64)
    lng = np.asarray(lng, dtype=np.float64)
    if lat.shape != lng.shape:
        raise ValueError(f"lat and lng differ in shape: {lat.shape} vs {lng.shape}")
    ok = np.isfinite(lat) & np.isfinite(lng) & (np.abs(lat) <= 90.0) & (np.abs(lng) <= 180.0)
    out = np.zeros(lat.shape, dtype=np.uint64)
    to_cell = basic_int.latlng_to_cell
    pairs = zip(lat[ok].tolist(), lng[ok].tolist(), strict=True)
    out[ok] = np.fromiter((to_cell(a, b, res) for a, b in pairs), dtype=np.uint64, count=int(ok.sum()))
    return out


def is_valid_cell(hex_id: object) -> bool:
    """True for a valid H3 cell id string; False for anything else (None, ints, garbage)."""
    return isinstance(hex_id, str) and h3.is_valid_cell(hex_id)


def neighbours(hex_id: str, k: int) -> list[str]:
    """Cells exactly ``k`` grid steps from ``hex_id`` (the hollow ring; ``k=0`` gives the cell), sorted.

    Built as a difference of disks rather than ``h3.grid_ring`` so it also works next to pentagons.
    """
    if k < 0:
        raise ValueError(f"k must be >= 0, got {k}")
    if k == 0:
        return [hex_id]
    return sorted(set(h3.grid_disk(hex_id, k)) - set(h3.grid_disk(hex_id, k - 1)))


def disk(hex_id: str, k: int) -> list[str]:
    """All cells within ``k`` grid steps of ``hex_id``, the cell itself included, sorted."""
    return sorted(h3.grid_disk(hex_id, k))
