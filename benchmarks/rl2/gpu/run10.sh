#!/bin/bash
# Run 10: the MDP cells with the pair-coded inputs and bilinear heads, trained in two device
# calls resumed from checkpoints.
#   part 1:  bash benchmarks/rl2/gpu/run10.sh 1           (carry .whl)
#   part 2:  bash benchmarks/rl2/gpu/run10.sh 2           (carry .whl and scratch/ckpt10)
#   part 3:  likewise, resuming part 2's states
part=$1; budget=${2:-450}
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
mkdir -p /tmp/r10 scratch/ckpt10
G="python3 -m pipelines.cli bench rl2 --device cuda --iterations 100000 --time-budget $budget --checkpoints scratch/ckpt10"
NEW="inputs=pair_code head=bilinear"
WIDE="hidden_size=256 meta_batch_size=256 bptt_length=0"
run() { name=$1; shift; timeout $((budget + 90)) "$@" > /tmp/r10/$name-p$part.txt 2>&1 & }
for n in 10 25 50; do run m$n $G --cells $n --json /tmp/r10/m$n-p$part.json --mdp $NEW $WIDE; done
if [ "$part" = 1 ]; then  # the CPU's widths; a privileged critic
    run m10c $G --cells 10 --seeds 1 --json /tmp/r10/m10c-p$part.json --mdp $NEW
    run m10t $G --cells 10 --seeds 2 --json /tmp/r10/m10t-p$part.json --mdp $NEW $WIDE critic=task
else  # parts 2 and 3: the two longest rows as well (part 2 starts them)
    for n in 75 100; do run m$n $G --cells $n --json /tmp/r10/m$n-p$part.json --mdp $NEW $WIDE; done
fi
wait
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > /tmp/r10/gpu-p$part.txt
mkdir -p $OUT/ckpt10 && cp scratch/ckpt10/*.pt $OUT/ckpt10/
cd /tmp/r10 && tar czf $OUT/run10-p$part.tgz *.txt *.json
for f in /tmp/r10/m*-p$part.txt; do echo "== $(basename $f)"; grep -E "resumed|RL2 s|iteration|Traceback|Error" $f | tail -5; done
ls -la $OUT/ckpt10
