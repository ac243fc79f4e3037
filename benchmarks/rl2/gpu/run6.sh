#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p /tmp/r6
G="python3 -m pipelines.cli bench rl2 --device cuda --iterations 100000"
B500="meta_batch_size=1024 hidden_size=256 num_minibatches=8 critic=task"
run() { name=$1; shift; timeout 585 "$@" > /tmp/r6/$name.txt 2>&1 & }
run h1 $G --time-budget 495 --cells 500x50 --bandit $B500
run h2 $G --time-budget 495 --cells 500x10 --bandit $B500
run h3 $G --time-budget 495 --cells 500x5 --bandit $B500
run h4 $G --time-budget 160 --cells 100x5 100x10 100x50 --bandit meta_batch_size=512 hidden_size=256 critic=task gae_lambda=0.9
run h5 $G --time-budget 495 --cells 10 --mdp hidden_size=256 meta_batch_size=256 bptt_length=0 critic=task
wait
cd /tmp/r6 && tar czf $OUT/run6.tgz *.txt
for f in /tmp/r6/*.txt; do echo "== $(basename $f)"; grep -E "RL2 s|Gittins |PSRL |Traceback|Error" $f | tail -6; done
