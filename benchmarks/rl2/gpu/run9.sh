#!/bin/bash
# Run 9: run 8's three n = 500 cells trained in two device calls, resumed from checkpoints.
#   part 1:  bash benchmarks/rl2/gpu/run9.sh 1            (carry .whl)
#   part 2:  bash benchmarks/rl2/gpu/run9.sh 2            (carry .whl and scratch/ckpt9: part 1's states)
part=$1; budget=${2:-460}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p /tmp/r9 scratch/ckpt9
G="python3 -m pipelines.cli bench rl2 --device cuda --iterations 100000 --time-budget $budget --checkpoints scratch/ckpt9"
B500="meta_batch_size=1024 hidden_size=256 num_minibatches=8"
run() { name=$1; shift; timeout $((budget + 75)) "$@" > /tmp/r9/$name-p$part.txt 2>&1 & }
run k1 $G --cells 500x5 --seeds 1 --json /tmp/r9/k1-p$part.json --bandit $B500 critic=task
run k2 $G --cells 500x10 --json /tmp/r9/k2-p$part.json --bandit $B500 critic=task
run k3 $G --cells 500x50 --json /tmp/r9/k3-p$part.json --bandit $B500
wait
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > /tmp/r9/gpu-p$part.txt
mkdir -p $OUT/ckpt9 && cp scratch/ckpt9/*.pt $OUT/ckpt9/
cd /tmp/r9 && tar czf $OUT/run9-p$part.tgz *.txt *.json
for f in /tmp/r9/k*-p$part.txt; do echo "== $(basename $f)"; grep -E "resumed|RL2 s|Traceback|Error" $f | tail -4; done
ls -la $OUT/ckpt9
