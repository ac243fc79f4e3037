#!/bin/bash
# Run 8: the three n = 500 cells alone on the GPU (three processes, 500 s of training each).
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p /tmp/r8
G="python3 -m pipelines.cli bench rl2 --device cuda --iterations 100000 --time-budget 500"
B500="meta_batch_size=1024 hidden_size=256 num_minibatches=8"
run() { name=$1; shift; timeout 575 "$@" > /tmp/r8/$name.txt 2>&1 & }
run k1 $G --cells 500x5 --seeds 1 --json /tmp/r8/k1.json --bandit $B500 critic=task
run k2 $G --cells 500x10 --json /tmp/r8/k2.json --bandit $B500 critic=task
run k3 $G --cells 500x50 --json /tmp/r8/k3.json --bandit $B500
wait
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > /tmp/r8/gpu.txt
python3 -c "import torch; print(torch.__version__)" >> /tmp/r8/gpu.txt
cd /tmp/r8 && tar czf $OUT/run8.tgz *.txt *.json
for f in /tmp/r8/k*.txt; do echo "== $(basename $f)"; grep -E "RL2 s|Gittins |Traceback|Error" $f | tail -6; done
