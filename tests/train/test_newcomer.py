"""What a newcomer meets first: option typos, values the run would ignore, the help text, what
the header and the summary say, the comparison's table and plot."""

import json

import pytest

from samx import cli, train
from samx.train import loop
from samx.train.compare import parse_optimizer_spec

SMALL = ["data.options.train_size=512", "data.options.test_size=256", "epochs=2",
         "eval_batch_size=256"]


def small(*extra):
  return train.override(train.preset("quickstart"), [*SMALL, *extra])


def test_a_typo_in_a_methods_option_lists_that_methods_options():
  with pytest.raises(train.ConfigError) as error:
    parse_optimizer_spec("saner+alpah=0.2")
  message = str(error.value)
  assert "unknown option 'alpah' in --optimizers entry 'saner+alpah=0.2'" in message
  assert "saner's own options (the saner section): alpha, warmup_epochs" in message
  assert "the optimizer section): rho," in message
  with pytest.raises(train.ConfigError, match="unknown option 'rhoo'.*optimizer section"):
    parse_optimizer_spec("sam+rhoo=0.1")
  # the keys of earlier versions still work
  assert parse_optimizer_spec("saner+feature_coef=0.1")[1][-1] == (
      "optimizer.feature_coef=0.1")


def test_values_of_unused_sections_are_checked_and_a_set_into_them_is_warned(tmp_path, capsys):
  with pytest.raises(train.ConfigError, match=r"looksam.k must be an integer >= 1; got 0\. "
                     r"\(in the looksam section, which optimizer.name=sam does not use\)"):
    train.validate(small("optimizer.name=sam", "looksam.k=0"))
  args = ["train", "--no-progress", "--run-dir", str(tmp_path / "run"),
          *[item for s in (*SMALL, "epochs=1", "optimizer.name=sam", "looksam.k=3")
            for item in ("--set", s)]]
  assert cli.main(args) == 0
  err = capsys.readouterr().err
  assert "warning: looksam.k=3 is ignored: optimizer.name=sam does not use the looksam " \
         "section" in err


def test_the_help_is_plain_text_and_every_option_says_what_it_does(capsys):
  with pytest.raises(SystemExit):
    cli.main(["--help"])
  top = capsys.readouterr().out
  assert "``" not in top and "Exit status: 0 done" in top and "75 stopped by SIGTERM" in top
  with pytest.raises(SystemExit):
    cli.main(["train", "--help"])
  text = capsys.readouterr().out
  for option in ("--coordinator-address HOST:PORT", "--num-processes N", "--process-id I"):
    assert option in text
  assert "where process 0 listens" in text and "this process, from 0" in text


def test_the_header_and_the_summary_name_the_compute_dtype(tmp_path):
  messages = []
  result = train.run(small("epochs=1", "model.dtype=bfloat16"), tmp_path / "run",
                     log=messages.append)
  assert any("computing in bfloat16" in m for m in messages), messages
  assert result.summary["dtype"] == "bfloat16"
  assert json.loads((tmp_path / "run" / "summary.json").read_text())["dtype"] == "bfloat16"


def test_divergence_advice_knows_skip_nonfinite():
  divergence = loop.Divergence(step=5, loss=float("nan"), last_finite_step=4,
                               last_finite_loss=2.0)
  unset = loop._divergence_message(small(), divergence, 1)
  assert "optimizer.skip_nonfinite=N to skip up to N" in unset
  already = loop._divergence_message(small("optimizer.skip_nonfinite=3"), divergence, 1)
  assert "skip_nonfinite=N" not in already
  assert "a larger optimizer.skip_nonfinite (now 3" in already


def test_a_comparison_with_other_entries_says_what_its_table_listed(tmp_path):
  out = tmp_path / "cmp"
  train.compare(small("epochs=1"), ["sgd", "sam"], out, log=None)
  messages = []
  train.compare(small("epochs=1"), ["sgd"], out, log=messages.append)
  assert any("the table and plot listed sgd, sam; they now list sgd (the runs of sam stay"
             in m for m in messages), messages
  assert list(json.loads((out / "compare.json").read_text())) == ["sgd"]


def test_the_plot_of_two_epochs_has_whole_epoch_ticks(tmp_path):
  matplotlib = pytest.importorskip("matplotlib")
  matplotlib.use("Agg")
  history = [{"epoch": 1, "test_accuracy": 0.5, "noisy_memorization": 0.1},
             {"epoch": 2, "test_accuracy": 0.6, "noisy_memorization": 0.2}]
  seen = []
  original = matplotlib.figure.Figure.savefig

  def record(figure, *args, **kwargs):
    figure.canvas.draw()
    seen.extend(tick for axis in figure.axes for tick in axis.get_xticks())
    return original(figure, *args, **kwargs)

  matplotlib.figure.Figure.savefig = record
  try:
    train.plot_comparison({"sgd": history}, tmp_path / "plot.png")
  finally:
    matplotlib.figure.Figure.savefig = original
  assert seen and all(float(tick).is_integer() for tick in seen), seen
