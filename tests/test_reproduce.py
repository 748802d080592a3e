"""`tlstm reproduce` without training: the reference numbers of the tables (the contract), folds as mean ± sd,
the report and the README's generated results section, and the refusal of tLSTM norm=cn on next-step tasks."""

from __future__ import annotations

import json
import math

import pytest
from conftest import ROOT
from omegaconf import OmegaConf

from tensorlstm.cli import compose, main
from tensorlstm.errors import UserError
from tensorlstm.reproduce import table as rt


def rows_of(name: str) -> dict:
    table = OmegaConf.to_container(OmegaConf.load(ROOT / "configs" / "table" / f"{name}.yaml"))
    return {r["name"]: r for r in table["rows"]}


def _project(tmp_path):
    """A source tree to publish into: a README and docs/results.md with empty generated sections."""
    project = tmp_path / "project"
    (project / "docs").mkdir(parents=True)
    (project / "README.md").write_text(f"# x\n\n{rt.README_BEGIN}\n{rt.README_END}\n")
    (project / "docs" / "results.md").write_text(f"# r\n\n{rt.INDEX_BEGIN}\n{rt.INDEX_END}\n")
    return project


def test_reference_numbers_are_the_papers():
    yang = rows_of("yang2017_ucf11")  # arXiv 1707.01786v1 Table 2: mean ± sd over 5 folds, s/epoch
    got = {n: (r["paper"]["accuracy"], r["paper"]["accuracy_sd"], r["paper"]["sec_per_epoch"]) for n, r in yang.items()}
    assert got == {"LSTM": (0.492, 0.026, 8892), "GRU": (0.488, 0.033, 7056),
                   "TT-LSTM (ranks 1-4-4-4-1)": (0.796, 0.035, 2160), "TT-GRU (ranks 1-4-4-4-1)": (0.813, 0.011, 1872)}
    draw = {r["experiment"]: r["paper"]["nll_bound"] for r in rows_of("ye2018_draw").values()}
    assert draw["ye2018_draw_lstm"] == 80.97 and draw["ye2018_draw_lstm_noattn"] == 87.40  # Gregor 2015 Table 2
    ye = rows_of("ye2018_ucf11")
    assert ye["LSTM"]["paper"]["accuracy"] == 0.697 and ye["BT-LSTM (d=4, R=4, N=2)"]["paper"]["accuracy"] == 0.853
    assert "poster" in ye["LSTM"]["note"] and "Yang 2017" in ye["TT-LSTM (d=4, ranks 1-4-4-4-1)"]["note"]
    assert {"LSTM", "TT-LSTM"} <= set(rows_of("addition_cells"))
    hollywood = {r["paper"]["params"] for r in rows_of("yang2017_hollywood2").values()}
    youtube = {r["paper"]["params"] for r in rows_of("yang2017_youtube_celebrities").values()}
    assert {3104, 2944} <= hollywood and {3392, 3328} <= youtube  # tlstm info checks them (test_experiments)


def test_polyphonic_scores_every_frame_by_default():
    assert compose(["task=polyphonic"]).task.predict_first is True


def fake_run(run, value, steps=4, metric="accuracy"):
    """A finished run dir as tlstm train leaves it: config, metrics.jsonl and summary.json."""
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text(
        "trainer: {max_steps: 4, eval_every: 2}\ntask: {batch_size: 16}\n")
    records = [{"step": 2, "split": "valid", metric: value / 2}, {"step": 4, "split": "valid", metric: value}]
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records) + '{"step": 5, "spl')
    (run / "summary.json").write_text(json.dumps({metric: value, "steps": steps, "params_input_map": 3360,
                                                  "seconds_per_step": 0.5, "device": "cpu", "best_valid": value}))


def test_folds_collect_to_mean_and_sd_and_publish_regenerates_the_readme(tmp_path, capsys):
    out = tmp_path / "outputs" / "reproduce" / "yang2017_ucf11"
    for k, v in enumerate((0.7, 0.8, 0.9)):
        fake_run(out / "TT-LSTM_ranks_1-4-4-4-1" / f"fold{k}", v)
    project = tmp_path / "project"
    (project / "docs").mkdir(parents=True)
    (project / "README.md").write_text(f"# x\n\n{rt.README_BEGIN}\nstale\n{rt.README_END}\n\n## After\n")
    code = rt.reproduce("yang2017_ucf11", ROOT / "configs", [], collect_only=True, out_root=out.parent,
                        publish_to=project)
    assert code == 0
    row = rt.collect_row(rows_of("yang2017_ucf11")["TT-LSTM (ranks 1-4-4-4-1)"], rt.load_table(
        "yang2017_ucf11", ROOT / "configs"), out / "TT-LSTM_ranks_1-4-4-4-1")
    assert row["ours"] == pytest.approx(0.8) and row["ours_sd"] == pytest.approx(0.1) and row["folds"] == 3
    assert row["diff"] == pytest.approx(0.8 - 0.796)
    table = {**rt.load_table("yang2017_ucf11", ROOT / "configs"), "also": ["seconds_per_step"]}  # extra columns
    assert rt.collect_row(rows_of("yang2017_ucf11")["LSTM"], table, out / "LSTM")["ours_seconds_per_step"] is None
    assert rt.collect_row(rows_of("yang2017_ucf11")["TT-LSTM (ranks 1-4-4-4-1)"], table,
                          out / "TT-LSTM_ranks_1-4-4-4-1")["ours_seconds_per_step"] == 0.5
    assert "| ours seconds_per_step |" in rt.markdown_table(table, [row | {"ours_seconds_per_step": 0.5}])[0]
    report = (out / "report.md").read_text()
    assert "0.8 ± 0.1 (3 folds)" in report and "0.796 ± 0.035" in report
    assert "| TT-LSTM (ranks 1-4-4-4-1) (fold2) | finished | 4 / 4 | 2 | 16 |" in report
    for f in rt.REPORT_FILES:
        assert (project / "docs" / "results" / "yang2017_ucf11" / f).is_file(), f
    readme = (project / "README.md").read_text()
    assert "stale" not in readme and readme.endswith("## After\n") and readme.count(rt.README_BEGIN) == 1
    assert "| TT-LSTM (ranks 1-4-4-4-1) | 0.796 ± 0.035 | 0.8 ± 0.1 | 3,360 |" in readme
    assert "1 of 4 rows finished" in readme and "(docs/results/yang2017_ucf11/report.md)" in readme


def test_folds_and_unrunnable_tables_are_one_line_errors(tmp_path):
    cfgs = ROOT / "configs"
    with pytest.raises(UserError, match="folds run from 0 to 4"):
        rt.reproduce("yang2017_ucf11", cfgs, [], folds="5")
    with pytest.raises(UserError, match="has no folds"):
        rt.reproduce("addition_cells", cfgs, [], folds="all")
    (tmp_path / "table").mkdir()  # a table whose rows only pin counts says why it cannot run
    (tmp_path / "table" / "pinned.yaml").write_text((cfgs / "table" / "addition_cells.yaml").read_text()
                                                    + 'runnable: "no loader for this set"\n')
    with pytest.raises(UserError, match="cannot run here: no loader for this set"):
        rt.reproduce("pinned", tmp_path, [])
    assert rt.parse_folds("all", rt.load_table("yang2017_ucf11", cfgs)) == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("task", ["char_lm", "polyphonic"])
def test_tlstm_cn_is_refused_on_next_step_tasks_unless_opted_in(task, capsys):
    args = ["info", f"task={task}", "cell=tlstm", "cell.norm=cn", "cell.M=8"]
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err
    assert e.value.code == 2 and len(err.strip().splitlines()) == 1 and "cell.allow_lookahead=true" in err
    assert main([*args, "cell.allow_lookahead=true"]) == 0  # opted in: builds
    assert main(["info", f"task={task}", "cell=tlstm", "cell.norm=ln", "cell.M=8"]) == 0  # causal LN: fine
    capsys.readouterr()
    assert main(["info", "task=addition", "cell=tlstm", "cell.norm=cn", "cell.M=8"]) == 0  # no next-step score
    assert json.loads(capsys.readouterr().out)["params_total"] > 0


def test_committed_results_sections_are_what_the_generator_makes(tmp_path):
    """README's results section and docs/results.md's index are generated from docs/results/: a hand edit of
    either (or a report published without regenerating them) fails here; `tlstm reproduce --publish` fixes it."""
    generated = rt.generated_files(ROOT)
    assert set(generated) == {ROOT / "README.md", ROOT / "docs" / "results.md"}
    for path, text in generated.items():
        assert rt.README_BEGIN in text or rt.INDEX_BEGIN in text
        assert path.read_text() == text, f"{path} differs from the generator: run `tlstm reproduce --publish`"
    # the same check on a copy whose README results were edited by hand: the generator puts the reports' back
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "results.md").write_text((ROOT / "docs" / "results.md").read_text())
    import shutil
    shutil.copytree(ROOT / "docs" / "results", tmp_path / "docs" / "results")
    readme = (ROOT / "README.md").read_text()
    edited = readme.replace(rt.README_END, "| a row typed by hand | - | 1.23 | 4 |\n" + rt.README_END)
    assert edited != readme
    (tmp_path / "README.md").write_text(edited)
    assert rt.generated_files(tmp_path)[tmp_path / "README.md"] == readme
    assert rt.publish_index(tmp_path) == [tmp_path / "README.md"] and (tmp_path / "README.md").read_text() == readme


def test_curve_trend_is_the_log_step_line_of_the_last_half():
    points = [(s, 100.0 - 3.0 * math.log2(s)) for s in (25, 50, 100, 200, 400, 800)]
    t = rt.curve_trend(points)
    assert t["per_doubling"] == pytest.approx(-3.0) and t["at_twice"] == pytest.approx(100.0 - 3.0 * math.log2(1600))
    assert t["fit_from"] == 200 and t["points"] == 6 and t["last"] == (800, points[-1][1])
    assert rt.curve_trend(points[:3]) is None


def test_an_unfinished_row_is_shown_as_partial_with_its_trend(tmp_path):
    """A run stopped part-way (last.pt, metrics, no summary): its latest validation value is labelled unfinished
    in the table and the README, never as a test result; its params come from train.log; the report fits its curve."""
    out = tmp_path / "outputs" / "reproduce" / "ye2018_draw"
    run = out / "no_attention_TT-LSTM_encoder_ranks_1-4-4-4-1"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "last.pt").write_bytes(b"")
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text(
        "trainer: {max_steps: 100000, eval_every: 25}\ntask: {batch_size: 100}\n")
    values = [(25, 200.0), (50, 170.0), (75, 160.0), (100, 150.0), (125, 146.0), (150, 141.0)]
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": "valid", "nll_bound": v}) + "\n"
                                               for s, v in values))
    (run / "train.log").write_text(
        '[t][tensorlstm][INFO] - model: {"params_total": 884568, "params_input_map": 1920}\n')
    project = _project(tmp_path)
    assert rt.reproduce("ye2018_draw", ROOT / "configs", [], collect_only=True, out_root=out.parent,
                        publish_to=project) == 0
    row = rt.collect_row(rows_of("ye2018_draw")["no attention TT-LSTM encoder (ranks 1-4-4-4-1)"],
                         rt.load_table("ye2018_draw", ROOT / "configs"), run)
    assert row["ours"] is None and (row["partial_step"], row["partial_valid"], row["params"]) == (150, 141.0, 1920)
    report = (out / "report.md").read_text()
    assert "| no attention TT-LSTM encoder (ranks 1-4-4-4-1) | - | unfinished (valid 141 at step 150) |" in report
    assert "running or interrupted at step 150 (resumable) | - / 100,000 | 25 | 100 |" in report
    t = rt.curve_trend(values)
    trend = f"{t['per_doubling']:+.3g} per doubling (steps 100-150) | {t['at_twice']:.4g} at step 300 |"
    assert f"| 6 | 200 at 25 | 141 at 150 | 141 at 150 | {trend}" in report
    readme = (project / "README.md").read_text()
    assert "0 of 6 rows finished, 1 stopped part-way" in readme
    name = "no attention TT-LSTM encoder (ranks 1-4-4-4-1)"
    assert f"| {name} | - | unfinished: valid nll_bound 141 at step 150 | 1,920 |" in readme
    index = (project / "docs" / "results.md").read_text()
    assert "### Ye 2018" in index and "(results/ye2018_draw/report.md)" in index and "unfinished (valid 141" in index


def test_every_table_states_its_budget_and_expected_time():
    """Whatever cannot run here stays one command away: each table says what a full run is and how long it takes
    (measured on the CPU, or estimated for a GPU with the estimate's basis), and report.md prints both."""
    for path in sorted((ROOT / "configs" / "table").glob("*.yaml")):
        table = OmegaConf.to_container(OmegaConf.load(path))
        assert str(table.get("budget") or "").strip(), f"{path.name}: no budget"
        expected = str(table.get("expected_time") or "")
        assert "CPU" in expected or "GPU" in expected, f"{path.name}: expected_time says neither CPU nor GPU time"


def test_rows_are_matched_whole_first_then_split_at_commas():
    from tensorlstm.reproduce.table import select_rows

    known = ["LSTM", "TT-LSTM", "BT, R=2", "BT"]
    assert select_rows("t", known, ["BT, R=2"]) == ["BT, R=2"]  # a name with a comma, whole
    assert select_rows("t", known, ["LSTM,TT-LSTM", "BT"]) == ["LSTM", "TT-LSTM", "BT"]  # split, and repeated
    with pytest.raises(UserError, match=r"^table t has no row 'GRU'; choose from: 'LSTM', 'TT-LSTM', 'BT, R=2', 'BT'$"):
        select_rows("t", known, ["LSTM,GRU"])


def test_the_trend_of_a_bounded_curve_is_capped_at_its_range(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    points = [(100 * k, 0.2 * k) for k in range(1, 6)]  # accuracy rising 0.2 per 100 steps: the line passes 1
    (run / "metrics.jsonl").write_text("".join(json.dumps({"step": s, "split": "valid", "accuracy": v}) + "\n"
                                               for s, v in points))
    table = {"metric": "samples_to_99", "higher_is_better": False,
             "curve": {"metric": "accuracy", "higher_is_better": True, "range": [0, 1]}}
    line = rt.curve_lines(table, [{"row": "r", "run_dir": str(run)}])[-2]
    assert line.startswith("| r | 5 | 0.2 at 100 | 1 at 500 | 1 at 500 |")
    assert "| 1 (the line leaves the metric's range) at step 1,000 |" in line
    assert rt.curve_of(table) == ("accuracy", True)
    assert rt.curve_of({**table, "curve": None}) == ("samples_to_99", False)


@pytest.mark.parametrize("args", [["--publish"], ["addition_cells", "--collect", "--publish"]])
def test_publish_outside_a_source_checkout_is_one_line(args, tmp_path, monkeypatch, capsys):
    import tensorlstm.cli as cli

    monkeypatch.setattr(cli, "source_root", lambda: tmp_path / "site-packages")  # a wheel install
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)
    with pytest.raises(SystemExit) as exit_:
        main(["reproduce", *args])
    assert exit_.value.code == 2
    assert "run it from a git clone of tensorlstm" in capsys.readouterr().err


def test_a_finished_row_without_the_metric_says_so_and_counts_as_finished(tmp_path):
    """samples_to_99 is null when 99% was never reached: the row finished, and the table, report and README say
    '99% not reached in <steps> steps' (the table's `missing`), never 'null' or 'unfinished'."""
    table = rt.load_table("he2017_small", ROOT / "configs")
    reached, never = table["rows"][0]["name"], table["rows"][1]["name"]
    out = tmp_path / "outputs" / "reproduce" / "he2017_small"
    for name, samples in ((reached, 41600), (never, None)):
        run = out / rt.slug(name)
        run.mkdir(parents=True)
        (run / "summary.json").write_text(json.dumps({"samples_to_99": samples, "steps": 3000,
                                                      table["params_key"]: 8704, "best_valid": 0.9}))
        (run / "metrics.jsonl").write_text(json.dumps({"step": 3000, "split": "valid", "seq_accuracy": 0.9}) + "\n")
    project = _project(tmp_path)
    assert rt.reproduce("he2017_small", ROOT / "configs", [], collect_only=True, out_root=out.parent,
                        publish_to=project) == 0
    n = len(table["rows"])
    for text in ((out / "table.md").read_text(), (out / "report.md").read_text()):
        assert f"| {reached} | - | 41,600 |" in text and f"| {never} | - | 99% not reached in 3,000 steps |" in text
        assert "null" not in text
    assert f"2 of {n} rows finished" in (out / "report.md").read_text()
    readme = (project / "README.md").read_text()
    assert f"2 of {n} rows finished)" in readme
    assert f"| {never} | - | 99% not reached in 3,000 steps | 8,704 |" in readme
    assert f"2 of {n} rows finished" in (project / "docs" / "results.md").read_text()
