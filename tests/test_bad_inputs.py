"""The bad-input catalogue: every config group, every task's data formats, every command and flag, resume /
eval / sample / reproduce misuse and sweeps. Each input must end with exit code 2 and exactly one line on
stderr that names the key or file and says what to do, no traceback, and no run directory left behind.

Most cases call the CLI's main() in this process (fast); a handful run as real subprocesses to pin the
process-level behaviour (exit status, nothing on stderr but the line)."""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sys
from pathlib import Path

import pytest
from conftest import TINY, TINY_RUN

sys.path.insert(0, str(Path(__file__).parent))
from tiny import char_lm, polyphonic, smnist, ucf11  # noqa: E402

# a line that says what to do uses one of these
ACTION = re.compile(r"\b(choose|expected|set|use|give|pass|lower|did you mean|write|delete|unset|re-run|run|"
                    r"needs?|must|should|add|expects|check|keys are|try|see|re-download|create)\b", re.I)


@pytest.fixture(scope="module")
def data(train_run, tmp_path_factory) -> dict:
    """Real tiny datasets and broken variants of each format, written once."""
    root = tmp_path_factory.mktemp("data")
    d = {"root": str(root)}
    mnist = smnist.write_mnist(root / "mnist", n_train=60, n_test=20)
    d["mnist"] = str(mnist)
    d["file"] = str(root / "a_file")
    (root / "a_file").write_text("not a folder\n")
    # MNIST: a missing file, garbage in an IDX file, a truncated one, labels that do not match the images
    for name, breaker in {
        "mnist_missing": lambda f: (f / "t10k-labels-idx1-ubyte.gz").unlink(),
        "mnist_garbage": lambda f: (f / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"garbage" * 9)),
        "mnist_truncated": lambda f: (f / "train-images-idx3-ubyte.gz").write_bytes(
            gzip.compress(gzip.decompress((f / "train-images-idx3-ubyte.gz").read_bytes())[:5000])),
        "mnist_not_gzip": lambda f: (f / "train-labels-idx1-ubyte.gz").write_bytes(b"plain bytes, no gzip"),
        "mnist_mismatch": lambda f: shutil.copy(f / "t10k-labels-idx1-ubyte.gz", f / "train-labels-idx1-ubyte.gz"),
    }.items():
        shutil.copytree(mnist, root / name)
        breaker(root / name)
        d[name] = str(root / name)
    # text corpora
    d["text"] = str(char_lm.write_text(root / "text").parent)
    (root / "text" / "empty.txt").write_text("")
    (root / "text" / "short.txt").write_text("abc")
    d["ptb"] = str(char_lm.write_ptb_char(root / "ptb"))
    (root / "ptb" / "ptb.char.valid.txt").unlink()
    # polyphonic pickles: garbage, wrong structure, a pitch off the piano
    poly = polyphonic.write_pickle(root / "poly")
    d["poly"] = str(poly)
    (poly / "Nottingham.pickle").write_bytes(b"not a pickle")
    import pickle

    (poly / "MuseData.pickle").write_bytes(pickle.dumps([1, 2, 3]))
    (poly / "Piano-midi.de.pickle").write_bytes(pickle.dumps({"train": [[(200,)]] * 4, "valid": [[(60,)]] * 2,
                                                             "test": [[(60,)]] * 2}))
    # UCF11 caches: none, a broken index, truncated frames
    cache = root / "ucf11"
    ucf11.make(root)  # writes root/ucf11_cache from tiny clips
    shutil.move(root / "ucf11_cache", cache)
    d["ucf11"] = str(cache)
    for name in ("ucf11_badindex", "ucf11_truncated"):
        shutil.copytree(cache, root / name)
        d[name] = str(root / name)
    (root / "ucf11_badindex" / "index.json").write_text("{not json")
    frames = root / "ucf11_truncated" / "frames.npy"
    frames.write_bytes(frames.read_bytes()[:2000])
    # a trained run (for eval, sample and resume misuse), a copy with a corrupt checkpoint, a fake checkpoint
    run = root / "run"
    train_run(run, "trainer.max_steps=4", "trainer.eval_every=2", "cell=tt", "rank=2")
    d["run"] = str(run)
    corrupt = root / "corrupt_run"
    shutil.copytree(run, corrupt)
    blob = (corrupt / "checkpoints" / "best.pt").read_bytes()
    (corrupt / "checkpoints" / "best.pt").write_bytes(blob[: len(blob) // 3])
    (corrupt / "checkpoints" / "last.pt").write_bytes(blob[: len(blob) // 3])
    (corrupt / "summary.json").unlink()
    d["corrupt_run"] = str(corrupt)
    (root / "fake.pt").write_text("a text file named .pt")
    d["fake_pt"] = str(root / "fake.pt")
    (root / "empty_run").mkdir()
    d["empty_run"] = str(root / "empty_run")
    return d


M = ["task=smnist", "task.valid_size=10"]
T = "train"  # prefix: the case is `tlstm train <tiny base> <args> hydra.run.dir=<tmp run>`
# (command, arguments, what the one line must contain); {name} is filled from the data fixture
CASES = [
    # --- top level ------------------------------------------------------------------------------------
    ("trian", [], "unknown command 'trian'"),
    ("fit", ["task=addition"], "unknown command 'fit'"),
    # --- config groups and keys -----------------------------------------------------------------------
    (T, ["task=nope"], "unknown task 'nope'"),
    (T, ["cell=nope"], "unknown cell 'nope'"),
    (T, ["optim=sgd"], "unknown optim 'sgd'"),
    (T, ["trainer=fast"], "unknown trainer 'fast'"),
    (T, ["logger=tensorboard"], "unknown logger 'tensorboard'"),
    (T, ["experiment=nope"], "unknown experiment 'nope'"),
    (T, ["+trainer.maxsteps=5"], "did you mean trainer.max_steps"),
    (T, ["trainer.max_stepz=5"], "did you mean trainer.max_steps"),
    (T, ["++optim.learning_rate=0.1"], "optim.learning_rate"),
    (T, ["+cell.ranks=3"], "did you mean cell.rank"),
    (T, ["+task.hiden_size=8"], "did you mean task.hidden_size"),
    (T, ["+newkey=1"], "unknown config key newkey"),
    (T, ["~trainer.clip_norm"], "trainer.clip_norm=null"),
    (T, ["trainer.max_steps"], "is not an override"),
    (T, ["trainer.max_steps=abc"], "trainer.max_steps='abc' has the wrong type"),
    (T, ["trainer.max_steps=2.5"], "trainer.max_steps"),
    (T, ["cell.reset_after=maybe"], "cell.reset_after"),
    (T, ["optim.betas=0.9"], "optim.betas"),
    (T, ["seed=abc"], "seed="),
    (T, ["task.digits=${{nope}}"], "nope"),
    (T, ["task.digits=[1,2"], "task.digits=[1,2"),
    # --- top-level values -----------------------------------------------------------------------------
    (T, ["rank=0"], "rank=0"),
    (T, ["rank=abc"], "rank=abc"),
    (T, ["rank=-2"], "rank=-2"),
    (T, ["threads=0"], "threads=0"),
    (T, ["threads=-1"], "threads=-1"),
    (T, ["device=tpu"], "device=tpu"),
    (T, ["device=cuda:x"], "device=cuda:x"),
    (T, ["seed=-1"], "seed=-1"),
    # --- trainer --------------------------------------------------------------------------------------
    (T, ["trainer.max_steps=0"], "trainer.max_steps=0"),
    (T, ["trainer.eval_every=0"], "trainer.eval_every=0"),
    (T, ["trainer.log_every=0"], "trainer.log_every=0"),
    (T, ["trainer.nonfinite=maybe"], "trainer.nonfinite=maybe"),
    (T, ["trainer.clip_norm=-1"], "trainer.clip_norm=-1"),
    (T, ["trainer.clip_value=0"], "trainer.clip_value=0"),
    (T, ["trainer.checkpoint_every_s=-5"], "trainer.checkpoint_every_s=-5"),
    (T, ["trainer.progress_every_s=0"], "trainer.progress_every_s=0"),
    (T, ["trainer.stop_at=nan"], "trainer.stop_at=nan"),
    # --- optim ----------------------------------------------------------------------------------------
    (T, ["optim.lr=-1"], "optim.lr=-1"),
    (T, ["optim.lr=0"], "optim.lr=0"),
    (T, ["optim.lr=inf"], "optim.lr=inf"),
    (T, ["optim.lr=nan"], "optim.lr=nan"),
    (T, ["optim.name=lion"], "optim.name=lion"),
    (T, ["optim.schedule=warmup"], "optim.schedule=warmup"),
    (T, ["optim.decay_params=biases"], "optim.decay_params=biases"),
    (T, ["optim.weight_decay=-0.1"], "optim.weight_decay=-0.1"),
    (T, ["optim.momentum=1.5"], "optim.momentum=1.5"),
    (T, ["optim.betas=[0.9,1.0]"], "optim.betas"),
    (T, ["optim.warmup_steps=-3"], "optim.warmup_steps=-3"),
    (T, ["optim.gamma=0"], "optim.gamma=0"),
    # --- logger ---------------------------------------------------------------------------------------
    (T, ["logger.mode=garbage"], "logger.mode=garbage"),
    # --- cells ----------------------------------------------------------------------------------------
    (T, ["cell.dropout=1.5"], "cell.dropout=1.5"),
    (T, ["cell.dropout=-0.1"], "cell.dropout=-0.1"),
    (T, ["cell.recurrent_dropout=1.0"], "cell.recurrent_dropout=1.0"),
    (T, ["cell.gate_mode=middle"], "cell.gate_mode=middle"),
    (T, ["cell.base=rnn"], "cell.base"),
    (T, ["cell.gate_activation=relu"], "gate_activation"),
    (T, ["cell.gates=fast"], "cell.gates 'fast'"),
    (T, ["cell=tlstm", "cell.gates=fast"], "cell.gates 'fast'"),
    (T, ["cell.denormals=sometimes"], "cell.denormals 'sometimes'"),
    (T, ["cell.layers=0"], "cell.layers=0"),
    (T, ["cell.hidden_size=0"], "cell.hidden_size=0"),
    (T, ["cell=tt", "cell.forward=fast"], "fast"),
    (T, ["cell=tt", "cell.mode=reconstruct"], "cell.mode was renamed cell.forward"),
    (T, ["cell=tt", "cell.in_modes=[3,5]"], "multiply to 15"),
    (T, ["cell=tt", "cell.d=0"], "cell.d=0"),
    (T, ["cell=bt", "cell.blocks=0"], "cell.blocks=0"),
    (T, ["cell=cp", "rank=[2,x]"], "rank="),
    (T, ["cell=tlstm", "cell.norm=bn"], "cell.norm"),
    (T, ["cell=tlstm", "cell.P=abc"], "cell.P"),
    (T, ["cell=tlstm", "cell.K=1"], "cell.K"),
    (T, ["cell=slstm", "cell.layers=-1"], "cell.layers=-1"),
    # --- algorithmic tasks ----------------------------------------------------------------------------
    (T, ["task.batch_size=0"], "task.batch_size=0"),
    (T, ["task.hidden_size=0"], "task.hidden_size=0"),
    (T, ["task.hidden_size=100000"], "task.hidden_size"),
    (T, ["task.digits=0"], "task.digits=0"),
    (T, ["task.valid_size=0"], "task.valid_size=0"),
    ("train0", ["task=memorization", "task.symbols=1"], "task.symbols"),
    (T, ["task.solved_threshold=2"], "task.solved_threshold=2"),
    ("info", ["task=smnist", "task.split_seed=abc"], "task.split_seed=abc"),
    ("info", ["task=draw_mnist", "task.binarize_seed=-1"], "task.binarize_seed=-1"),
    ("info", ["task=draw_mnist", "task.decoder_rank=0"], "task.decoder_rank=0"),
    ("info", ["task=char_lm", "task.sample_prime=-1"], "task.sample_prime=-1"),
    ("info", ["task=ucf11", "task.fps=-1"], "task.fps=-1"),
    ("info", ["task=ucf11", "task.num_classes=0"], "task.num_classes=0"),
    ("info", ["task=ucf11", "task.l2_classifier=-1"], "task.l2_classifier=-1"),
    ("info", ["cell=tlstm", "cell.M=0"], "cell.M=0"),
    ("info", ["cell=tlstm", "cell.forget_bias=nan"], "cell.forget_bias=nan"),
    # --- MNIST (smnist, pmnist, draw_mnist): IDX files ------------------------------------------------
    ("train0", [*M, "task.data_dir=/nonexistent/mnist"], "/nonexistent/mnist does not exist"),
    ("train0", [*M, "task.data_dir={file}"], "is a file, not a folder"),
    ("train0", [*M, "task.data_dir={mnist_missing}"], "t10k-labels-idx1-ubyte"),
    ("train0", [*M, "task.data_dir={mnist_garbage}"], "train-images-idx3-ubyte"),
    ("train0", [*M, "task.data_dir={mnist_truncated}"], "train-images-idx3-ubyte"),
    ("train0", [*M, "task.data_dir={mnist_not_gzip}"], "train-labels-idx1-ubyte"),
    ("train0", [*M, "task.data_dir={mnist_mismatch}"], "differ in count"),
    ("train0", [*M, "task.data_dir={mnist}", "task.chunk=5"], "task.chunk=5"),
    ("train0", [*M, "task.data_dir={mnist}", "task.valid_size=100000"], "task.valid_size"),
    ("train0", ["task=pmnist", "task.valid_size=10", "task.data_dir={file}"], "is a file, not a folder"),
    ("train0", ["task=draw_mnist", "task.data_dir=/nonexistent/mnist", "task.cache_dir={root}/c"], "/nonexistent"),
    ("train0", ["task=draw_mnist", "task.binarization=larochelle", "task.data_dir={mnist}"], ".amat"),
    ("train0", ["task=draw_mnist", "task.binarization=otsu"], "task.binarization"),
    ("train0", ["task=draw_mnist", "task.glimpses=0"], "task.glimpses"),
    ("train0", ["task=draw_mnist", "task.decoder_cell=nope"], "nope"),
    # --- char_lm: text files ----------------------------------------------------------------------------
    ("train0", ["task=char_lm", "task.data_dir=/nonexistent/text"], "/nonexistent/text does not exist"),
    ("train0", ["task=char_lm", "task.data_dir={file}"], "is a file, not a folder"),
    ("train0", ["task=char_lm", "task.data_dir={text}", "task.dataset=missing.txt"], "missing.txt"),
    ("train0", ["task=char_lm", "task.data_dir={text}", "task.dataset=empty.txt"], "empty.txt"),
    ("train0", ["task=char_lm", "task.data_dir={text}", "task.dataset=short.txt"], "short.txt"),
    ("train0", ["task=char_lm", "task.data_dir={ptb}", "task.dataset=ptb_char"], "ptb.char.valid.txt"),
    ("train0", ["task=char_lm", "task.level=word"], "task.level=word"),
    ("train0", ["task=char_lm", "task.split=[0.5,0.5]"], "task.split"),
    ("train0", ["task=char_lm", "task.bptt=0"], "task.bptt=0"),
    # --- polyphonic: pickles ----------------------------------------------------------------------------
    ("train0", ["task=polyphonic", "task.data_dir=/nonexistent/poly"], "/nonexistent/poly"),
    ("train0", ["task=polyphonic", "task.data_dir={poly}", "task.dataset=Nottingham"], "Nottingham.pickle"),
    ("train0", ["task=polyphonic", "task.data_dir={poly}", "task.dataset=MuseData"], "MuseData.pickle"),
    ("train0", ["task=polyphonic", "task.data_dir={poly}", "task.dataset=Piano-midi.de"], "Piano-midi.de"),
    ("train0", ["task=polyphonic", "task.data_dir={poly}", "task.dataset=Bach"], "Bach"),
    ("train0", ["task=polyphonic", "task.dropout=1"], "task.dropout=1"),
    # --- ucf11: the frame cache -------------------------------------------------------------------------
    ("train0", ["task=ucf11", "task.data_dir=/nonexistent/ucf"], "/nonexistent/ucf"),
    ("train0", ["task=ucf11", "task.data_dir={ucf11_badindex}", "task.frame_size=[16,12]",
                "task.input_size=576", "task.in_modes=null"], "index.json"),
    ("train0", ["task=ucf11", "task.data_dir={ucf11_truncated}", "task.frame_size=[16,12]",
                "task.input_size=576", "task.in_modes=null"], "frames.npy"),
    ("train0", ["task=ucf11", "task.protocol=kfold"], "task.protocol"),
    ("train0", ["task=ucf11", "task.fold=7"], "task.fold=7"),
    ("train0", ["task=ucf11", "task.normalize=zscore"], "task.normalize"),
    ("train0", ["task=ucf11", "task.frames=-2"], "task.frames"),
    ("train0", ["task=ucf11", "task.valid_fraction=1.5"], "task.valid_fraction=1.5"),
    # --- run directory, Hydra flags ---------------------------------------------------------------------
    ("trainX", ["hydra.run.dir=/proc/nope/run"], "hydra.run.dir=/proc/nope/run"),
    ("trainX", ["hydra.run.dir={file}/run"], "hydra.run.dir="),
    (T, ["--frobnicate"], "unrecognized arguments: --frobnicate"),
    (T, ["--cfg"], "argument -c/--cfg"),
    (T, ["--cfg", "everything"], "invalid choice: 'everything'"),
    ("cfg", ["+trainer.maxsteps=5"], "did you mean trainer.max_steps"),
    ("cfg", ["optim.lr=-1"], "optim.lr=-1"),
    # --- sweeps: every point validated before the first job -------------------------------------------------
    ("sweep", ["cell=lstm,tt", "rank=2,abc"], "sweep job 1 of 4 (cell=lstm rank=abc)"),
    ("sweep", ["cell=lstm,nope"], "unknown cell 'nope'"),
    ("sweep", ["optim.lr=0.01,-1"], "optim.lr=-1"),
    ("sweep", ["+trainer.maxsteps=1,2"], "did you mean trainer.max_steps"),
    ("sweep", ["trainer.max_steps=2,abc"], "trainer.max_steps='abc'"),
    ("sweep", ["cell=lstm,tt", "cell.in_modes=[3,5]"], "multiply to 15"),
    ("sweep", ["rank=range(0,2)"], "rank=0"),
    # --- resume ---------------------------------------------------------------------------------------
    ("trainX", ["resume=/nonexistent/run"], "/nonexistent/run"),
    ("trainX", ["resume={empty_run}"], "no checkpoints/last.pt"),
    ("trainX", ["resume={root}/missing.pt"], "missing.pt"),
    ("trainX", ["resume={corrupt_run}", "hydra.run.dir={corrupt_run}"], "corrupt or truncated"),
    ("trainX", ["resume={fake_pt}"], "fake.pt"),
    ("trainX", ["resume={run}", "rank=3"], "another config"),
    ("trainX", ["resume={run}", "task.hidden_size=24"], "another config"),
    # --- info -----------------------------------------------------------------------------------------
    ("info", ["rank=abc"], "rank=abc"),
    ("info", ["+cell.rnak=2"], "did you mean cell.rank"),
    ("info", ["cell=tt", "cell.in_modes=[3,5]"], "multiply to 15"),
    ("info", ["--json"], "tlstm info: unrecognized arguments: --json"),
    # --- eval -----------------------------------------------------------------------------------------
    ("eval", [], "tlstm eval needs a run directory"),
    ("eval", ["/nonexistent/run"], "/nonexistent/run"),
    ("eval", ["{empty_run}"], "no checkpoint"),
    ("eval", ["{corrupt_run}"], "corrupt or truncated"),
    ("eval", ["{fake_pt}"], "fake.pt"),
    ("eval", ["{run}", "task.nope=1"], "task.nope"),
    ("eval", ["{run}", "task.batch_size=abc"], "task.batch_size"),
    ("eval", ["{run}", "task.eval_batch_size=0"], "task.eval_batch_size=0"),
    # --- sample ---------------------------------------------------------------------------------------
    ("sample", [], "tlstm sample needs a run directory"),
    ("sample", ["{run}"], "cannot sample"),
    ("sample", ["{run}", "--n", "0"], "--n 0"),
    ("sample", ["{run}", "--n", "lots"], "--n lots"),
    ("sample", ["{run}", "--n"], "argument --n: expected one argument"),
    ("sample", ["/nonexistent/run"], "/nonexistent/run"),
    # --- reproduce ------------------------------------------------------------------------------------
    ("reproduce", [], "needs a table name"),
    ("reproduce", ["nope"], "unknown table 'nope'"),
    ("reproduce", ["addition_cells", "--rows", "LSTM,XYZ"], "XYZ"),
    ("reproduce", ["addition_cells", "--rows"], "argument --rows: expected one argument"),
    ("reproduce", ["addition_cells", "--row", "LSTM"], "unrecognized arguments: --row"),
    ("reproduce", ["addition_cells", "rank=abc"], "rank=abc"),
    ("reproduce", ["addition_cells", "+trainer.maxsteps=3"], "did you mean trainer.max_steps"),
    # --- bench ----------------------------------------------------------------------------------------
    ("bench", ["--quik"], "--quik"),
    ("bench", ["--threads", "0"], "--threads 0"),
    ("bench", ["--repeats", "x"], "--repeats"),
    ("bench", ["--shapes", "huge"], "huge"),
    ("bench", ["--sections", "gpus"], "gpus"),
    ("bench", ["--timer", "sundial"], "--timer"),
    ("bench", ["--out", "/nonexistent/dir/b.json"], "/nonexistent/dir"),
]
# run as real processes (the rest in-process): exit status and stderr of the process itself
SUBPROCESS = {("trian", ()), (T, ("task=nope",)), ("sweep", ("cell=lstm,tt", "rank=2,abc")),
              ("train0", ("task=char_lm", "task.data_dir=/nonexistent/text")), ("eval", ("{corrupt_run}",))}


def _argv(command: str, args: list[str], data: dict, run: Path) -> list[str]:
    args = [a.format(**data) for a in args]
    if command == T:
        return ["train", *TINY, "trainer.max_steps=2", *args, f"hydra.run.dir={run}"]
    if command == "train0":  # a data task: its own sizes, the tiny run settings
        return ["train", *TINY_RUN, "trainer.max_steps=2", *args, f"hydra.run.dir={run}"]
    if command == "trainX":  # the case sets hydra.run.dir or resume itself
        return ["train", *TINY_RUN, *args]
    if command == "cfg":
        return ["train", "--cfg", "job", *args]
    if command == "sweep":
        return ["train", "-m", *TINY, "trainer.max_steps=2", *args, f"hydra.sweep.dir={run}"]
    if command in ("info", "eval", "sample", "reproduce", "bench"):
        return [command, *args]
    return [command, *args]


def _run_inprocess(argv: list[str], capsys) -> tuple[int, str]:
    from tensorlstm.cli import main

    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as e:
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("index", range(len(CASES)), ids=[f"{c[0]}:{' '.join(c[1])[:40]}" for c in CASES])
def test_bad_input_gets_one_line_and_exit_2(tlstm, index, data, tmp_path, capsys, monkeypatch):
    command, args, needle = CASES[index]
    monkeypatch.chdir(tmp_path)  # anything a case writes by default (outputs/, bench.json) would land here
    run = tmp_path / "run"
    argv = _argv(command, args, data, run)
    before = {p: p.stat().st_mtime_ns for p in Path(data["root"]).rglob("*")}
    if (command, tuple(args)) in SUBPROCESS:
        r = tlstm(*argv, cwd=tmp_path)
        code, err = r.returncode, r.stderr
    else:
        code, err = _run_inprocess(argv, capsys)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert code == 2, f"exit {code}: {err}"
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), lines[0]
    assert needle.format(**data) in lines[0], lines[0]
    assert ACTION.search(lines[0]), f"does not say what to do: {lines[0]}"
    assert not run.exists(), f"left a run directory behind: {sorted(p.name for p in run.rglob('*'))}"
    assert not (tmp_path / "outputs").exists() and not (tmp_path / "multirun").exists()
    after = {p: p.stat().st_mtime_ns for p in Path(data["root"]).rglob("*")}
    assert after == before, "a refused input modified an existing run or dataset"


def test_the_catalogue_is_large_and_distinct():
    keys = [(c[0], tuple(c[1])) for c in CASES]
    assert len(set(keys)) == len(keys) >= 80
    assert SUBPROCESS <= set(keys) and len(SUBPROCESS) == 5


def test_wandb_mode_env_is_named_as_the_culprit(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "garbage")
    code, err = _run_inprocess(["train", *TINY, "trainer.max_steps=2", f"hydra.run.dir={tmp_path / 'run'}"],
                               capsys)
    assert code == 2 and "environment variable WANDB_MODE='garbage'" in err and "logger.mode" not in err
    assert not (tmp_path / "run").exists()


def test_good_inputs_still_run(train_run, tmp_path):
    """Edge values the rules must not refuse (every experiment passes them too: tests/test_experiments.py)."""
    summary = train_run(tmp_path / "ok", "trainer.max_steps=2", "trainer.eval_every=2", "optim.lr=1",
                              "cell.dropout=0.5", "threads=1")
    assert summary["steps"] == 2
    assert json.loads((tmp_path / "ok" / "summary.json").read_text())["steps"] == 2
    assert os.stat(tmp_path / "ok" / "checkpoints" / "last.pt").st_mode & 0o777 == \
        os.stat(tmp_path / "ok" / "summary.json").st_mode & 0o777
