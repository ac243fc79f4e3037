#!/bin/bash
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl 2>/dev/null
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 METARL_NO_PROGRESS=1 OMP_NUM_THREADS=1
nvidia-smi -L
timeout 90 python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py 2>&1 | tail -3
B="python3 -m pipelines.cli bench rl2 --device cuda --seeds 0 1 2"
for c in 10x5 10x10 10x50 10; do timeout 200 $B --cells $c --json $OUT/q$c.json > $OUT/q$c.txt 2>&1 & done
wait
for c in 10x5 10x10 10x50 10; do grep -E "RL2|wall-clock|Gittins |PSRL " $OUT/q$c.txt; done
