"""The method x model x grouping x dtype matrix (benchmarks/matrix.py): a one-step slice here,
every cell (a few steps each, untimed) in the slow suite, one test per model and dtype."""

import importlib.util
import pathlib

import pytest

_PATH = pathlib.Path(__file__).parents[2] / "benchmarks" / "matrix.py"
_spec = importlib.util.spec_from_file_location("matrix", _PATH)
matrix = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(matrix)

# SAM-ON perturbs normalization layers only; these models have none.
WITHOUT_NORMALIZATION = ("mlp", "small_cnn")


def _check(rows):
  for row in rows:
    where = f"{row['model']} {row['dtype']} {row['grouping']} {row['method']}"
    if row["method"] == "sam_on" and row["model"] in WITHOUT_NORMALIZATION:
      assert row["status"] == "refused" and "normalization" in row["reason"], where
    elif row["method"] == "penalty" and row["grouping"] != "whole batch":
      assert row["status"] == "n/a", where
    else:
      assert row["status"] == "trains", (where, row["status"], row["losses"])
      assert row["peak_bytes"] > 0, where


def test_one_step_slice():
  """1-SAM on the ViT in bfloat16 and SAM-ON refused on the MLP: one step each."""
  rows = matrix.run_matrix(["vit"], ["sam"], ["group_size=1"], ["bfloat16"], steps=2,
                           rounds=0, log=lambda *_: None)
  rows += matrix.run_matrix(["mlp"], ["sam_on"], ["whole batch"], ["float32"], steps=1,
                            rounds=0, log=lambda *_: None)
  _check(rows)
  assert {row["method"] for row in rows} == {"sam", "sam_on"}


@pytest.mark.slow
@pytest.mark.parametrize("dtype", matrix.DTYPES)
@pytest.mark.parametrize("model", list(matrix.MODELS))
def test_every_method_trains_on_every_model(model, dtype):
  rows = matrix.run_matrix([model], list(matrix.METHOD_NAMES), list(matrix.GROUPINGS), [dtype],
                           steps=6, rounds=0, log=lambda *_: None)
  _check(rows)
  assert len(rows) == len(matrix.METHOD_NAMES) * len(matrix.GROUPINGS)
