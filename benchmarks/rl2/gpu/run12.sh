#!/bin/bash
# Run 12 (prepared 2026-12-06, not yet run: no device lent since run 11): the lead the CPU left
# on MDP n = 25 to 75 -- run 10/11's 256-wide GRU with 4x the CPU's batch (1024 trials an
# iteration) from the start, now with the trial clock (an MDP default since run 11), one model
# trained on 10-episode trials playing every row, as the CPU table's does; three training seeds,
# and one model trained on 25-episode trials beside them.
#
# Before the first call, on the development machine (the device has torch but no network):
#   mkdir -p .whl && pip download -q --no-deps -d .whl gymnasium==1.4.0 farama-notifications cloudpickle
# Then, with the device tool (carry .whl; parts 2, 3 also carry scratch/ckpt12, copied back from
# $OUT/ckpt12 of the part before: the device keeps nothing between calls):
#   bash benchmarks/rl2/gpu/run12.sh 1 420      # part 1, 420 s of training per process
#   bash benchmarks/rl2/gpu/run12.sh 2 420      # resumes part 1's states, up to 2000 iterations
# A dry run on the CPU checks the script end to end in about two minutes (50 test instances):
#   DEVICE=cpu INSTANCES=50 OUT=/tmp/out12 bash benchmarks/rl2/gpu/run12.sh 1 15
part=${1:?part number}; budget=${2:-420}; device=${DEVICE:-cuda}
: "${OUT:?set OUT (the device tool sets it)}"
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1 MKL_NUM_THREADS=1
logs=/tmp/r12; mkdir -p $logs scratch/ckpt12 "$OUT/ckpt12"
# --iterations 2000: the CPU schedule (learning rate dropped at 1600), reached over several parts.
B="python3 -m pipelines.cli bench rl2 --table mdp --device $device --iterations 2000 --time-budget $budget --checkpoints scratch/ckpt12 --instances ${INSTANCES:-1000}"
W="hidden_size=256 meta_batch_size=256"
run() { name=$1; shift; timeout $((budget + 120)) "$@" > $logs/$name-p$part.txt 2>&1 & }
for s in 0 1 2; do
    run w10s$s $B --cells 10 25 50 75 100 --seeds $s --mdp-train-episodes 10 --json $logs/w10s$s-p$part.json --mdp $W
done
run w25s0 $B --cells 25 50 75 100 --seeds 0 --mdp-train-episodes 25 --json $logs/w25s0-p$part.json --mdp $W
if [ "$device" = cuda ]; then
    nvidia-smi dmon -s um -d 15 > $logs/dmon-p$part.txt 2>&1 &
    dmon=$!
fi
wait $(jobs -p | grep -v "^${dmon:-x}$")
[ -n "${dmon:-}" ] && kill $dmon && nvidia-smi --query-gpu=name,driver_version --format=csv,noheader > $logs/gpu-p$part.txt
# The training states travel back for the next part (the 25-episode model's file is named by its
# own cell, so the two kinds of model do not collide).
cp scratch/ckpt12/*.pt "$OUT/ckpt12/"
(cd $logs && tar czf "$OUT/run12-p$part.tgz" ./*-p$part.*)
for f in $logs/w*-p$part.txt; do
    echo "== $(basename $f)"; grep -E "resumed|RL2 s|Traceback|Error" $f | tail -6
done
[ -f $logs/dmon-p$part.txt ] && grep -v "^#" $logs/dmon-p$part.txt | awk '{s+=$2; c++} END {if (c) print "mean sm%", s/c, "samples", c}'
ls -la "$OUT/ckpt12"
