#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1
B="python3 -m pipelines.cli bench rl2 --device cuda --iterations 100000"
run() { name=$1; shift; timeout 560 $B "$@" > $OUT/$name.txt 2>&1 & }
run r1 --cells 500x50 --time-budget 520 --bandit meta_batch_size=1024 hidden_size=256
run r2 --cells 500x50 --time-budget 520 --bandit meta_batch_size=1024 hidden_size=256 num_minibatches=8
run r3 --cells 500x10 --time-budget 520 --bandit meta_batch_size=1024 hidden_size=256
run r4 --cells 500x5 --time-budget 520 --bandit meta_batch_size=1024 hidden_size=256
run r5 --cells 100x5 100x10 100x50 --time-budget 170 --seeds 1 --bandit meta_batch_size=512 hidden_size=256
wait
for f in $OUT/r*.txt; do echo "== $f"; grep -E "RL2|Gittins " $f | tail -6; done
