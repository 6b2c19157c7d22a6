"""Reading tables (CSV/Parquet) and turning them into the float32 matrices the models read."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import numpy as np
import pandas as pd


class DataError(ValueError):
    """An input table is missing, unreadable or does not fit the model."""


def warm_up_readers() -> None:
    """Import the Parquet reader now: pandas imports some twenty pyarrow modules on the first read (~0.15 s), so a
    process that forks readers calls this once rather than every fork paying it."""
    for module in ("pyarrow.parquet", "pyarrow.dataset", "pyarrow.pandas_compat"):
        try:
            importlib.import_module(module)
        except ImportError:  # no pyarrow: reading Parquet fails later with its own message
            return


def read_table(path: str | os.PathLike) -> pd.DataFrame:
    """Read a CSV or Parquet file (by extension; anything else is read as CSV)."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input file not found: {p}")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            return pd.read_parquet(p)
        return pd.read_csv(p)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {p}: {exc}") from exc


def table_columns(path: str | os.PathLike) -> list[str]:
    """Column names of a CSV or Parquet file, read from its header or schema only."""
    p = Path(path)
    if not p.is_file():
        raise DataError(f"input file not found: {p}")
    try:
        if p.suffix.lower() in (".parquet", ".pq"):
            import pyarrow.parquet as pq

            return list(pq.read_schema(p).names)
        return list(pd.read_csv(p, nrows=0).columns)
    except (ValueError, OSError, pd.errors.ParserError) as exc:
        raise DataError(f"cannot read {p}: {exc}") from exc


def feature_matrix(table: pd.DataFrame, feature_names: list[str]) -> np.ndarray:
    """Columns ``feature_names`` of ``table`` as float32 (empty cells become NaN = missing); other columns ignored."""
    absent = [name for name in feature_names if name not in table.columns]
    if absent:
        shown = ", ".join(absent[:10]) + (" ..." if len(absent) > 10 else "")
        raise DataError(f"input lacks {len(absent)} of the model's feature columns: {shown}")
    out = np.empty((len(table), len(feature_names)), np.float32, order="F")  # column by column, then one transpose
    for j, name in enumerate(feature_names):
        column = table[name]
        if isinstance(column, pd.DataFrame):
            raise DataError(f"input has more than one column named {name!r}")
        if not (pd.api.types.is_numeric_dtype(column.dtype) and not pd.api.types.is_complex_dtype(column.dtype)):
            numeric = pd.to_numeric(column, errors="coerce")  # text: numbers in it, anything else refused
            bad = numeric.isna() & column.notna()
            if bad.any():
                raise DataError(f"column {name!r} has non-numeric values (first: {column[bad].iloc[0]!r})")
            column = numeric
        out[:, j] = column.to_numpy(dtype=np.float32, na_value=np.nan)
    return np.ascontiguousarray(out)


def write_table(table: pd.DataFrame, path: str | os.PathLike) -> None:
    """Write CSV or Parquet (by extension) atomically: a failure leaves no partial file."""
    target = Path(path)
    tmp = target.with_name(f".{target.name}.tmp-{os.getpid()}")
    try:
        if target.suffix.lower() in (".parquet", ".pq"):
            table.to_parquet(tmp, index=False)
        else:
            table.to_csv(tmp, index=False)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)
