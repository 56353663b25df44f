"""Each reproduction script of benchmarks/ runs at a tiny size and writes its table, results
and plot (the full runs, with their numbers, are in benchmarks/README.md)."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow  # each script trains several small models (CI runs them)
DATA_DIR = os.environ.get("SAMX_DATA_DIR")
needs_data = pytest.mark.skipif(
    not DATA_DIR or not (pathlib.Path(DATA_DIR) / "fashion-mnist").is_dir(),
    reason="needs SAMX_DATA_DIR with fashion-mnist/ and mnist/")


def run_script(name, *args):
  result = subprocess.run([sys.executable, str(ROOT / "benchmarks" / name), *args],
                          capture_output=True, text=True, timeout=900, check=False)
  assert result.returncode == 0, result.stderr[-3000:]
  return result.stdout


def test_reweighting(tmp_path):
  out = run_script("reweighting.py", "--steps", "20", "--record-every", "10",
                   "--group-epochs", "1", "--output-dir", str(tmp_path))
  results = json.loads((tmp_path / "results.json").read_text())
  assert [r["step"] for r in results["reweighting"]["1-sam"]] == [0, 10, 20]
  last = results["reweighting"]["1-sam"][-1]
  assert last["weight_clean"] > last["weight_noisy"]  # Baek et al.'s Lemma 3.1, early on
  assert len(results["saner_groups"]["curve"]) == 2
  assert "mean weight, clean" in out and (tmp_path / "reweighting.png").exists()


def test_benign_overfitting(tmp_path):
  run_script("benign_overfitting.py", "--signal-norms", "1.0,2.0", "--dims", "50",
             "--epochs", "4", "--curve-dim", "50", "--curve-every", "2",
             "--output-dir", str(tmp_path))
  results = json.loads((tmp_path / "results.json").read_text())
  assert len(results["grid"]) == 4  # 2 signal norms x 1 dimension x (SGD, SAM)
  assert [r["epoch"] for r in results["curves"]["sam"]] == [0, 2, 4]
  assert "Test error, SAM" in (tmp_path / "table.md").read_text()
  assert (tmp_path / "benign_overfitting.png").exists()


@needs_data
def test_label_noise(tmp_path):
  run_script("label_noise.py", "--settings", "fmnist-sym50-mlp", "--seeds", "0,1",
             "--small-model-optimizers", "sgd,sam+group_size=1", "--headline-optimizers",
             "sgd", "--epochs", "1", "--output-dir", str(tmp_path))
  results = json.loads((tmp_path / "results.json").read_text())
  stats = results["fmnist-sym50-mlp"]["optimizers"]
  assert stats["sgd"]["best_test_accuracy"]["n"] == 2  # headline: every seed
  assert stats["sam+group_size=1"]["best_test_accuracy"]["n"] == 1
  assert "| fmnist-sym50-mlp | sgd | 2 |" in (tmp_path / "table.md").read_text()
  assert (tmp_path / "fmnist-sym50-mlp" / "seed0" / "compare.png").exists()
  assert (tmp_path / "fmnist-sym50-mlp" / "figure1.png").exists()  # SANER's Figure 1


@needs_data
def test_feature_balance(tmp_path):
  args = ("--kinds", "fmnist_mnist", "--rhos", "0,0.05", "--seeds", "0", "--epochs", "2",
          "--train-examples", "1000", "--output-dir", str(tmp_path))
  run_script("feature_balance.py", *args)
  entry = json.loads((tmp_path / "results.json").read_text())["fmnist_mnist"]
  runs = entry["runs"]
  assert [(r["rho"], len(r["history"])) for r in runs] == [(0.0, 2), (0.05, 2)]
  assert [p["seed"] for p in entry["initial"]] == [0]  # the untrained network's probes
  assert 0.4 <= entry["initial"][0]["hard_probe"] <= 1.0
  for run in runs:
    for record in run["history"]:  # probes after every epoch
      assert 0.4 <= record["hard_probe"] <= 1.0 and 0.4 <= record["val_hard_probe"] <= 1.0
    assert run["history"][-1]["easy_probe"] > 0.9  # MNIST 0 vs 1 is decodable after training
  table = (tmp_path / "table.md").read_text()
  assert "sam rho=0.05 (selected)" in table and (tmp_path / "feature_balance.png").exists()
  again = run_script("feature_balance.py", *args)  # reuses both finished runs
  assert json.loads(again.splitlines()[0])["seconds"] < 60


def test_feature_balance_toy(tmp_path):
  run_script("feature_balance_toy.py", "--optimizers", "sgd,1-sam+rho=1", "--seeds", "0",
             "--steps", "40", "--evaluate-every", "20", "--output-dir", str(tmp_path))
  runs = json.loads((tmp_path / "results.json").read_text())["runs"]
  assert [[row["step"] for row in r["curve"]] for r in runs] == [[0, 20, 40]] * 2
  for run in runs:
    assert abs(sum(run["weights_phantom"]) - 1) < 1e-4 and len(run["weights_real"]) == 512
    assert 0 <= run["curve"][-1]["gini_real"] <= 1
  assert "Gini at w+eps" in (tmp_path / "table.md").read_text()
  assert (tmp_path / "feature_balance_toy.png").exists()


def test_rate_tables_group_symmetric_settings_by_family():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  try:
    import label_noise
  finally:
    sys.path.pop(0)

  def stats(best, final):
    return {"best_test_accuracy": {"mean": best, "std": 0.0, "n": 1},
            "final_test_accuracy": {"mean": final, "std": 0.0, "n": 1}}

  results = {f"cifar10-sym{rate}-cnn10k": {"optimizers": {"sgd": stats(0.5, 0.3 - rate / 1000),
                                                          "sam": stats(0.6, 0.5)}}
             for rate in (80, 20)}
  results["cifar10-asym40-cnn10k"] = {"optimizers": {"sgd": stats(0.1, 0.1)}}
  results["fmnist-sym25"] = {"optimizers": {"sgd": stats(0.8, 0.7)}}  # one rate: no table
  tables = label_noise.format_rate_tables(results)
  assert list(tables) == ["cifar10-cnn10k"]
  lines = tables["cifar10-cnn10k"].splitlines()
  assert lines[0] == "| noise | sgd best | sgd final | sam best | sam final |"
  assert lines[2] == "| 20% | 0.500 | 0.280 | 0.600 | 0.500 |"
  assert lines[3].startswith("| 80% | 0.500 | 0.220 |")


def test_halfway_memorization_and_the_table_without_it():
  sys.path.insert(0, str(ROOT / "benchmarks"))
  try:
    import label_noise
  finally:
    sys.path.pop(0)
  history = [{"epoch": e, "noisy_memorization": e / 10} for e in range(1, 21)]
  assert label_noise.halfway_memorization(history) == 1.0  # epoch 10 of 20
  assert label_noise.halfway_memorization(history[:3]) == 0.1  # epoch 1 of 3
  assert label_noise.halfway_memorization(history[:1]) is None
  one = {"mean": 0.5, "std": 0.0, "n": 1}
  old_entry = {key: one for key in ("best_test_accuracy", "best_epoch", "final_test_accuracy",
                                    "final_noisy_memorization", "train_seconds")}
  table = label_noise.format_table({"fmnist-sym25": {"optimizers": {"sgd": old_entry}}})
  assert table.splitlines()[2] == ("| fmnist-sym25 | sgd | 1 | 0.500 | 0 | 0.500 | - | 0.500 | - "
                                   "| 0 |")
