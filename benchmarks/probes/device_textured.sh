#!/bin/bash
# One device (GPU) session for issue 11, prepared and checked on CPU in session 11 (no device was lent then):
# (1) fine-tune embedded -> embedded-textured on the textured mix to convergence (the CPU model stopped at 412
#     steps, loss flat 0.38-0.41); (2) what a partial step costs at full size (gpu_partial_step.py).
# Run from the repo root with the diffusers wheel in .whl/ (the device image has no diffusers):
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 -d .whl diffusers==0.42.1
# then the device tool: run "bash benchmarks/probes/device_textured.sh", carry [".whl"]. Back in $OUT:
#   textured.tar (the exported pipeline: untar into motioncache_vllm/weights/embedded_textured, then
#   motioncache calibrate --model embedded-textured), loss.csv, gpu_partial_step.json.
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 9
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1
nvidia-smi -L; nproc; python3 -c "import torch, diffusers, transformers; print(torch.__version__, diffusers.__version__, transformers.__version__)"
date +%T
timeout ${TRAIN_TIMEOUT:-420} python3 -m motioncache_vllm.train --mix textured --init-from motioncache_vllm/weights/embedded \
  --run-dir /tmp/run --out-dir /tmp/tex --device cuda --batch-size 64 --workers 14 --minutes ${TRAIN_MIN:-5.5} \
  --warmup-steps 300 --save-every 2000 --threads 4 --quiet 2>&1 | grep -v "Loading\|Writing" | tail -20
echo "train rc ${PIPESTATUS[0]}"; date +%T
cp /tmp/run/loss.csv $OUT/loss.csv; tail -3 /tmp/run/loss.csv
[ -f /tmp/tex/training.json ] && tar cf $OUT/textured.tar -C /tmp/tex . && ls -la $OUT
timeout ${PROBE_TIMEOUT:-150} python3 benchmarks/probes/gpu_partial_step.py --out $OUT/gpu_partial_step.json 2>&1 | grep -v "^ \|^{\|^}" | tail -20
echo "probe rc ${PIPESTATUS[0]}"; date +%T
