#!/usr/bin/env bash
# GPU check, under 5 minutes on one GPU; everything goes to $OUT/gpu_check.json (OUT defaults to gpu_check_out).
#   1. environment (torch, CUDA, devices)
#   2. the CUDA tests (tests/test_cuda.py, marker `cuda`): maps and cells CPU vs CUDA, AMP bf16/fp16, AMP training
#      and resume on CUDA
#   3. 200 training steps of addition per cell on the GPU with AMP off and bf16 (fp16 for five of them): loss
#      falls, finite, s/step, skipped steps
#   4. DDP with 2 processes (NCCL) when 2 GPUs are visible: parameters vs one process on the same global batch
#   5. `tlstm bench --quick --device cuda`: the speed ratios to cuDNN nn.LSTM/GRU and nn.Linear
#   6. scripts/ops_per_step.py --device "$DEVICE" --compile: CUDA kernels per time step, torch.compile of the step math
# Needs only torch + a GPU. Missing Python packages are installed from $WHEELS (default gpu_check/wheels, filled by
# `scripts/gpu_check.sh --download-wheels` on a machine with PyPI), else from the index.
#   bash scripts/gpu_check.sh                    # run it (from the repository root)
#   bash scripts/gpu_check.sh --download-wheels  # fetch the wheels for a Python 3.12 GPU machine without them
#   DEVICE=cpu STEPS=5 bash scripts/gpu_check.sh # dry run of the script itself on a CPU machine
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
WHEELS=${WHEELS:-gpu_check/wheels}
PKGS="hydra-core omegaconf antlr4-python3-runtime==4.9.3 opt-einsum tqdm pyyaml numpy matplotlib pytest"

if [ "${1:-}" = "--download-wheels" ]; then
  mkdir -p "$WHEELS"
  # shellcheck disable=SC2086
  exec $PY -m pip download --only-binary=:all: --python-version "${PYVER:-3.12}" --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux_2_28_x86_64 \
    --platform any -d "$WHEELS" $PKGS
fi

OUT=${OUT:-gpu_check_out}
mkdir -p "$OUT"
export DEVICE=${DEVICE:-cuda} STEPS=${STEPS:-200}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" WANDB_MODE=disabled OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
T0=$(date +%s)
section() { echo "== $1 ($(( $(date +%s) - T0 )) s)"; }

section deps
if ! $PY -c "import hydra, omegaconf, opt_einsum, tqdm, yaml, numpy, matplotlib, pytest" 2>/dev/null; then
  # shellcheck disable=SC2086
  $PY -m pip install -q --no-index --find-links "$WHEELS" $PKGS 2>"$OUT/pip.log" \
    || $PY -m pip install -q $PKGS 2>>"$OUT/pip.log" || echo "pip install failed, see $OUT/pip.log"
fi

section environment
$PY - "$OUT/env.json" <<'EOF'
import json, platform, sys, torch
info = {"python": platform.python_version(), "torch": torch.__version__, "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version(), "devices": [torch.cuda.get_device_name(i)
        for i in range(torch.cuda.device_count())]}
json.dump(info, open(sys.argv[1], "w"), indent=2)
print(info)
EOF

section "cuda tests"
timeout 80 $PY -m pytest tests/test_cuda.py -m cuda -q -x -p no:cacheprovider --junitxml="$OUT/cuda_tests.xml" \
  >"$OUT/cuda_tests.log" 2>&1
echo $? >"$OUT/cuda_tests.rc"
tail -3 "$OUT/cuda_tests.log"

section "training per cell, AMP off / bf16 / fp16"
timeout 100 $PY - "$OUT" <<'EOF' >"$OUT/train.log" 2>&1
import json, math, os, sys, time, traceback
from pathlib import Path
from tensorlstm.cli import main
top = Path(sys.argv[1])  # read now: the CLI rewrites sys.argv
out = top / "runs"
base = ["task=addition", "task.digits=3", "task.hidden_size=64", "task.batch_size=32", "task.valid_size=200",
        "task.test_size=200", f"trainer.max_steps={os.environ['STEPS']}", f"trainer.eval_every={os.environ['STEPS']}",
        "trainer.log_every=5", "logger.mode=disabled", "trainer.progress=false", f"device={os.environ['DEVICE']}"]
cells = {"lstm": [], "gru": ["cell=gru"], "gru_cho": ["cell=gru", "cell.reset_after=false"], "tt": ["cell=tt"],
         "bt": ["cell=bt"], "cp": ["cell=cp"], "tucker": ["cell=tucker"], "tt_gru": ["cell=tt", "cell.base=gru"],
         "tlstm": ["cell=tlstm", "cell.M=32"], "slstm": ["cell=slstm"]}
amps = {"fp32": ["trainer.amp=false"], "bf16": ["trainer.amp=true", "trainer.amp_dtype=bf16"],
        "fp16": ["trainer.amp=true", "trainer.amp_dtype=fp16"]}
rows = []
FP16 = {"lstm", "gru_cho", "tt", "bt", "tlstm"}
for cell, extra in cells.items():
    for amp, flags in amps.items():
        if amp == "fp16" and cell not in FP16:
            continue
        run = out / f"{cell}_{amp}"
        t0 = time.time()
        row = {"cell": cell, "amp": amp}
        try:
            main(["train", *base, *(extra or ["cell=lstm"]), *flags, f"hydra.run.dir={run}"])
            s = json.loads((run / "summary.json").read_text())
            train = [json.loads(l) for l in (run / "metrics.jsonl").read_text().splitlines()]
            losses = [r["loss"] for r in train if r["split"] == "train"]
            row |= {"ok": True, "first_loss": losses[0], "last_loss": losses[-1],
                    "loss_fell": losses[-1] < losses[0], "finite": all(math.isfinite(v) for v in losses),
                    "seconds_per_step": s["seconds_per_step"], "skipped": s["nonfinite_skipped"],
                    "test_accuracy": s["test"].get("accuracy")}
        except BaseException as e:  # noqa: BLE001 - one failing case must not hide the others
            row |= {"ok": False, "error": f"{type(e).__name__}: {e}"[:300], "trace": traceback.format_exc()[-800:]}
        row["wall_s"] = round(time.time() - t0, 1)
        rows.append(row)
        print(json.dumps(row), flush=True)
        (top / "train.json").write_text(json.dumps(rows, indent=2))
EOF
echo $? >"$OUT/train.rc"
tail -2 "$OUT/train.log"

section "ddp"
NGPU=$($PY -c "import torch; print(torch.cuda.device_count())")
if [ "$NGPU" -ge 2 ]; then
  DDP="task=addition task.digits=2 task.hidden_size=48 task.batch_size=32 task.valid_size=100 task.test_size=100
       cell=tt rank=3 trainer.max_steps=100 trainer.eval_every=50 logger.mode=disabled trainer.progress=false device=cuda"
  # shellcheck disable=SC2086
  timeout 60 $PY -m torch.distributed.run --standalone --nproc_per_node=2 -m tensorlstm train $DDP \
    hydra.run.dir="$OUT/ddp2" >"$OUT/ddp.log" 2>&1
  # shellcheck disable=SC2086
  timeout 40 $PY -m tensorlstm train $DDP hydra.run.dir="$OUT/ddp1" >>"$OUT/ddp.log" 2>&1
  $PY - "$OUT" <<'EOF' >>"$OUT/ddp.log" 2>&1
import json, sys, torch
from pathlib import Path
out = Path(sys.argv[1])
try:
    a = torch.load(out / "ddp2/checkpoints/last.pt", weights_only=False, map_location="cpu")["model"]
    b = torch.load(out / "ddp1/checkpoints/last.pt", weights_only=False, map_location="cpu")["model"]
    diff = max(float((a[k] - b[k]).abs().max()) for k in b)
    res = {"ok": diff < 1e-4, "max_abs_param_diff": diff,
           "world_size": json.loads((out / "ddp2/summary.json").read_text())["world_size"]}
except Exception as e:  # noqa: BLE001
    res = {"ok": False, "error": f"{type(e).__name__}: {e}"}
(out / "ddp.json").write_text(json.dumps(res, indent=2))
print(res)
EOF
else
  echo '{"skipped": "fewer than 2 GPUs (NCCL needs one GPU per rank; the CPU/gloo DDP tests cover the logic)"}' \
    >"$OUT/ddp.json"
fi
cat "$OUT/ddp.json"

section bench
timeout 50 $PY -m tensorlstm bench --quick --device "$DEVICE" --out "$OUT/bench.json" >"$OUT/bench.log" 2>&1
echo $? >"$OUT/bench.rc"
tail -5 "$OUT/bench.log"

section "ops per step"
timeout 40 $PY scripts/ops_per_step.py --device "$DEVICE" --compile --out "$OUT/ops_per_step.json" >"$OUT/ops.log" 2>&1
echo $? >"$OUT/ops.rc"
tail -3 "$OUT/ops.log"

section report
$PY - "$OUT" "$(( $(date +%s) - T0 ))" <<'EOF'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
def load(name):
    p = out / name
    try:
        return json.loads(p.read_text())
    except Exception:  # noqa: BLE001
        return None
def rc(name):
    p = out / name
    return int(p.read_text()) if p.exists() else None
report = {"seconds": int(sys.argv[2]), "environment": load("env.json"),
          "cuda_tests": {"rc": rc("cuda_tests.rc"), "tail": (out / "cuda_tests.log").read_text()[-1500:]
                         if (out / "cuda_tests.log").exists() else None},
          "training": {"rc": rc("train.rc"), "runs": load("train.json")},
          "ddp": load("ddp.json"), "bench": {"rc": rc("bench.rc"), "results": load("bench.json")},
          "ops_per_step": {"rc": rc("ops.rc"), "rows": load("ops_per_step.json")}}
(out / "gpu_check.json").write_text(json.dumps(report, indent=2))
runs = report["training"]["runs"] or []
print(f"gpu_check.json written ({report['seconds']} s): cuda tests rc={report['cuda_tests']['rc']}, "
      f"{sum(r.get('ok', False) for r in runs)}/{len(runs)} training runs ok, ddp={report['ddp']}")
EOF
