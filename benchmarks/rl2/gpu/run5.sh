#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p /tmp/r5
TB=${TB:-465}
G="python3 -m pipelines.cli bench rl2 --device cuda --iterations 100000 --time-budget $TB"
C="python3 -m pipelines.cli bench rl2 --device cpu --time-budget $TB"
B500="meta_batch_size=1024 hidden_size=256 num_minibatches=8"
M="hidden_size=256 meta_batch_size=256 bptt_length=0"
run() { name=$1; shift; timeout 575 "$@" > /tmp/r5/$name.txt 2>&1 & }
run g1 $G --cells 500x50 --bandit $B500 critic=task
run g2 $G --cells 500x50 --bandit $B500 critic=task discount=0.995
run g3 $G --cells 500x50 --bandit $B500 critic=separate
run g4 $G --cells 10 --mdp $M critic=task discount=0.99
run g5 $G --cells 10 --mdp $M critic=task
run g6 $G --cells 10 --mdp $M critic=separate discount=0.99
run g7 $G --cells 10 --mdp $M discount=0.99
run c1 $C --cells 100x10 --bandit critic=task
run c2 $C --cells 100x10 --bandit critic=separate
run c3 $C --cells 100x50 --bandit critic=task
run c4 $C --cells 100x5 --bandit critic=task
run c5 $C --cells 100x10 --bandit critic=task gae_lambda=0.9
run c6 $C --cells 500x5 --bandit critic=task
run c7 $C --cells 500x10 --bandit critic=task
run c8 $C --cells 25 --mdp critic=task discount=0.99 bptt_length=0
wait
cd /tmp/r5 && tar czf $OUT/run5.tgz *.txt
for f in /tmp/r5/*.txt; do echo "== $(basename $f)"; grep -E "RL2 s|Gittins |PSRL |Traceback|Error" $f | tail -4; done
