"""Every notebook runs top to bottom in its CPU-sized mode (nbclient), and the stored notebooks
are the ones notebooks/make_notebooks.py writes."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "notebooks"))

nbformat = pytest.importorskip("nbformat")
make_notebooks = pytest.importorskip("make_notebooks")
NEEDS_DATA = {"02_label_noise.ipynb", "04_feature_balance.ipynb"}


def stored_sources(name):
  notebook = json.loads((ROOT / "notebooks" / name).read_text())
  return [("".join(c["source"]) if isinstance(c["source"], list) else c["source"])
          for c in notebook["cells"]]


@pytest.mark.parametrize("name", list(make_notebooks.NOTEBOOKS))
def test_stored_notebook_matches_its_builder(name):
  assert stored_sources(name) == [cell.source for cell in make_notebooks.build(name).cells]


@pytest.mark.slow
@pytest.mark.parametrize("name", list(make_notebooks.NOTEBOOKS))
def test_notebook_runs_top_to_bottom_in_cpu_mode(name, tmp_path, monkeypatch):
  pytest.importorskip("nbclient")
  if name in NEEDS_DATA and not os.environ.get("SAMX_DATA_DIR"):
    pytest.skip("needs SAMX_DATA_DIR (on Colab it downloads instead)")
  notebook = make_notebooks.build(name)
  assert 'SCALE = "cpu"' in notebook.cells[2].source
  monkeypatch.chdir(tmp_path)  # runs/ and other outputs go to a temporary folder
  from nbclient import NotebookClient

  NotebookClient(notebook, timeout=1200, kernel_name="python3",
                 resources={"metadata": {"path": str(tmp_path)}}).execute()
  errors = [output for cell in notebook.cells if cell.cell_type == "code"
            for output in cell.get("outputs", []) if output.get("output_type") == "error"]
  assert not errors
  if name == "02_label_noise.ipynb":
    check_label_noise_story(notebook, tmp_path / "runs" / "notebook-label-noise")


def check_label_noise_story(notebook, out):
  """The CPU setting shows what the text around it says: SGD's accuracy falls from its peak as
  it memorizes, SAM and SANER memorize fewer noisy labels; the story cell says so too."""
  summaries = json.loads((out / "compare.json").read_text())
  sgd, sam, saner = (summaries[k] for k in ("sgd", "sam", "saner"))
  assert sgd["best_test_accuracy"] - sgd["final_test_accuracy"] >= 0.01
  assert sam["final_noisy_memorization"] < sgd["final_noisy_memorization"]
  assert saner["final_noisy_memorization"] < sam["final_noisy_memorization"]
  texts = ["".join(output["data"]["text/markdown"]) for cell in notebook.cells
           if cell.cell_type == "code" for output in cell.get("outputs", [])
           if "text/markdown" in output.get("data", {})]
  story = next(text for text in texts if text.startswith("SGD's test accuracy peaks"))
  assert "falls to" in story and "no fewer" not in story


@pytest.mark.slow
def test_jupyter_nbconvert_runs_a_notebook_into_a_copy(tmp_path):
  """The usual way to run a notebook works with the notebooks extra, and leaves the stored
  notebook as it is."""
  stored = ROOT / "notebooks" / "06_scaling.ipynb"
  before = stored.read_bytes()
  result = subprocess.run(
      [sys.executable, "-m", "jupyter", "nbconvert", "--to", "notebook", "--execute",
       str(stored), "--output-dir", str(tmp_path)], capture_output=True, text=True,
      timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert (tmp_path / "06_scaling.ipynb").exists()
  assert stored.read_bytes() == before
