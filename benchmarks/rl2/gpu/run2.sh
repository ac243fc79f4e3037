#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1
B="python3 -m pipelines.cli bench rl2 --device cuda --iterations 100000"
run() { name=$1; shift; timeout 570 $B "$@" > $OUT/$name.txt 2>&1 & }
run p1 --cells 500x50 --time-budget 465 --bandit meta_batch_size=1024
run p2 --cells 500x50 --time-budget 465 --bandit meta_batch_size=1024 hidden_size=256
run p3 --cells 500x10 --time-budget 465 --bandit meta_batch_size=1024 hidden_size=256
run p4 --cells 500x5 --time-budget 465 --bandit meta_batch_size=1024 hidden_size=256
run p5 --cells 100x5 100x10 100x50 --time-budget 145 --bandit meta_batch_size=512 hidden_size=256
run p6 --cells 10 25 --time-budget 215 --mdp meta_batch_size=256 hidden_size=256
run p7 --cells 50 --time-budget 440 --mdp meta_batch_size=256 hidden_size=256
sleep 60; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv
wait
for f in $OUT/p*.txt; do echo "== $f"; grep -E "RL2|stopped|Gittins|PSRL|iteration" $f | tail -6; done
