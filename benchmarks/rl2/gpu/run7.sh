#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p /tmp/r7
G="python3 -m pipelines.cli bench rl2 --device cuda --iterations 100000"
B500="meta_batch_size=1024 hidden_size=256 num_minibatches=8 critic=task"
run() { name=$1; shift; timeout 520 "$@" > /tmp/r7/$name.txt 2>&1 & }
run tests python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py
run k1 $G --time-budget 430 --cells 500x5 --seeds 1 --bandit $B500
run k2 $G --time-budget 430 --cells 500x50 --bandit $B500
run k3 $G --time-budget 210 --cells 100x5 100x10 --seeds 1 --bandit meta_batch_size=512 hidden_size=256 critic=task gae_lambda=0.9
wait
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > /tmp/r7/gpu.txt
python3 -c "import torch; print(torch.__version__)" >> /tmp/r7/gpu.txt
cd /tmp/r7 && tar czf $OUT/run7.tgz *.txt
tail -3 /tmp/r7/tests.txt
for f in /tmp/r7/k*.txt; do echo "== $(basename $f)"; grep -E "RL2 s|Gittins |Traceback|Error" $f | tail -6; done
