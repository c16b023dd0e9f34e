#!/usr/bin/env bash
# The CUDA checks in one run, for a machine with one NVIDIA GPU: what a CPU machine cannot test.
#
#   bash benchmarks/cuda_checks.sh [OUT_DIR]        # about 5 minutes on one H100; logs go to OUT_DIR
#
# 1. the CUDA-only tests (tests that skip without a GPU);
# 2. benchmarks/make_cam.py: compute_cams vs the naive baseline, and fp32 vs --amp / channels_last;
# 3. the demo (`python run_sample.py`, baseline + CDA) on the GPU with --amp --channels_last, timed;
# 4. a short run of the paper profile (ResNet-50 at the ImageNet architecture, every step, both
#    passes) on 320 px synthetic images with random weights from a file (--pretrained PATH: nothing
#    can be downloaded on such machines), 1 epoch each, --amp --channels_last: the paper code path
#    end to end on CUDA. Its mIoU means nothing (random weights); its step times are the point;
# 5. benchmarks/training.py: train_cam / train_irn throughput at demo and paper size, fp32 then
#    --amp --channels-last.
# Each part has its own time limit, so one that hangs does not stop the others.
set -uo pipefail
out=${1:-${OUT:-runs/cuda_checks}}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
work=$(mktemp -d)
workers=$(( $(nproc) > 8 ? 8 : $(nproc) ))

part() {  # part NAME SECONDS COMMAND...: run with a limit, log to $out/NAME.txt, print its wall time
    local name=$1 limit=$2; shift 2
    local start=$SECONDS
    echo "=== $name: $*"
    timeout "$limit" "$@" > "$out/$name.txt" 2>&1
    local rc=$?
    echo "=== $name: exit $rc after $(( SECONDS - start )) s"
    tail -n 25 "$out/$name.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
  python -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, torch.cuda.get_device_name(0))'
  nproc; } 2>&1 | tee "$out/machine.txt"

part cuda_tests 180 python -m pytest -q -rs tests/test_indexing.py tests/test_loader.py tests/test_pil_resample.py \
    tests/test_pil_color.py tests/test_cv_resize.py -k cuda
part make_cam 100 python benchmarks/make_cam.py --device cuda
part demo 240 python run_sample.py --work_dir "$work/demo" --device cuda --amp --channels_last \
    --num_workers "$workers"
cp "$work/demo/metrics/summary.md" "$out/demo_summary.md" 2>/dev/null
grep -h "done in" "$out/demo.txt" | tail -n 40

python - "$work/resnet50_random.pth" <<'EOF'
import sys, torch, torchvision
torch.manual_seed(0)
torch.save(torchvision.models.resnet50().state_dict(), sys.argv[1])
EOF
# Random weights diverge at the paper's learning rates: 1e-4 keeps the run finite (speed does not
# depend on it), and the masks they make are empty, so the object bank is cut from the ground truth.
# 64 train images, batch 16 -> 4 CAM steps and 2 IRN steps an epoch.
part paper_profile 300 python run_sample.py --work_dir "$work/paper" --profile paper --device cuda \
    --amp --channels_last --num_workers "$workers" --pretrained "$work/resnet50_random.pth" \
    --n_train 64 --n_val 16 --image_size 320 --cam_num_epoches 1 --irn_num_epoches 1 \
    --cam_learning_rate 1e-4 --irn_learning_rate 1e-4 --cda \
    --cda_bank_source "$work/paper/synthetic_voc/SegmentationClass"
grep -h "done in" "$out/paper_profile.txt" | tail -n 40
part training_fp32 90 python benchmarks/training.py --device cuda --num-workers "$workers" --iters 10 \
    --paper-iters 5
part training_amp 90 python benchmarks/training.py --device cuda --num-workers "$workers" --iters 10 \
    --paper-iters 5 --amp --channels-last
rm -rf "$work"
