import sys

from benchmarks.stage_pool import Stage, run_stages


def _append(path, text):
    return [sys.executable, "-c", f"open({str(path)!r}, 'a').write({text!r} + '\\n')"]


def test_stages_run_after_what_they_need_highest_rank_first(tmp_path):
    order = tmp_path / "order.txt"
    stages = [Stage("small", _append(order, "small"), cost=1),
              Stage("big", _append(order, "big"), cost=5),
              Stage("base", _append(order, "base"), cost=2),
              Stage("after-base", _append(order, "after-base"), cost=9, needs=["base"])]
    assert run_stages(stages, jobs=1, logdir=str(tmp_path / "logs")) == []
    # base (2 + the 9 waiting for it) outranks big (5), big outranks small; after-base waits for base
    assert order.read_text().split() == ["base", "after-base", "big", "small"]


def test_a_failed_stage_skips_what_needs_it_and_nothing_else(tmp_path, capsys):
    order = tmp_path / "order.txt"
    stages = [Stage("bad", [sys.executable, "-c", "raise SystemExit('boom')"], cost=3),
              Stage("needs-bad", _append(order, "needs-bad"), cost=1, needs=["bad"]),
              Stage("fine", _append(order, "fine"), cost=1)]
    failed = run_stages(stages, jobs=2, logdir=str(tmp_path / "logs"))
    assert sorted(failed) == ["bad", "needs-bad"]
    assert order.read_text().split() == ["fine"]
    assert "boom" in capsys.readouterr().err  # the failed stage's log tail is shown
