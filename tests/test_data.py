"""Reading tables into float32 matrices: numbers in any column type, empty cells as NaN, text refused."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from privboost.data import DataError, feature_matrix, read_table, write_table


def test_feature_matrix_takes_numeric_and_numeric_text_columns_and_refuses_other_text(tmp_path):
    table = pd.DataFrame({"f32": np.array([1.5, np.nan, -2.0], np.float32), "ints": pd.array([1, None, 3], "Int64"),
                          "flags": [True, False, True], "text": ["4", None, "6.5"], "label": [0, 1, 0]})
    got = feature_matrix(table, ["text", "f32", "ints", "flags"])
    want = np.array([[4, 1.5, 1, 1], [np.nan, np.nan, np.nan, 0], [6.5, -2, 3, 1]], np.float32)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == np.float32 and got.flags.c_contiguous
    with pytest.raises(DataError, match="non-numeric values \\(first: 'x'\\)"):
        feature_matrix(pd.DataFrame({"a": ["1", "x"]}), ["a"])
    with pytest.raises(DataError, match="lacks 1"):
        feature_matrix(table, ["f32", "missing"])
    path = tmp_path / "t.parquet"
    write_table(table.drop(columns="ints"), path)
    np.testing.assert_array_equal(feature_matrix(read_table(path), ["f32", "flags"]), want[:, [1, 3]])
