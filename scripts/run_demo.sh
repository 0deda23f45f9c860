#!/usr/bin/env bash
# The main command (README): set up, build the embedded demo corpus (with the telephone-channel
# augmentation of configs/corpus_telephone_mild.yaml, no speed-perturbed copies) and the real-speech check
# set (the Asterisk prompts, fetched from Debian's registry), then run the experiment (fp32 baseline ->
# architecture search -> QAT retrain -> packed export -> decode on the synthetic dev/test and the
# real-speech set -> table).
#   bash scripts/run_demo.sh                      # configs/demo.yaml
#   CONFIG=configs/paper_demo.yaml DATA=data/synth_demo AUGMENT= PREPARE_ARGS= bash scripts/run_demo.sh   # the paper comparison
# Rerunning continues where a killed run stopped (finished stages are not redone).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
CONFIG="${CONFIG:-configs/demo.yaml}"
DATA="${DATA:-data/synth_mild_nosp}"
AUGMENT="${AUGMENT-configs/corpus_telephone_mild.yaml}"
# extra prepare_data.py options for the synthetic corpus (the paper configs' corpora keep the 0.9/1.1 copies)
PREPARE_ARGS="${PREPARE_ARGS---no-speed-perturb}"
REAL="${REAL:-data/real_asterisk}"
DEVICE="${DEVICE:-cpu}"
# systems run side by side once the fp32 baseline is trained, each stage with its share of the threads
# (run_experiments.py --jobs; JOBS=1: one at a time)
JOBS="${JOBS:-2}"
bash scripts/setup.sh
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
# The experiment's stages run with tcmalloc instead of glibc's malloc: a training step allocates and frees
# tens of (batch, 256, frames) tensors of ~28 MB; glibc hands such blocks back to the kernel and page-faults
# them in again on the next allocation, tcmalloc keeps them (bench/bench_train_step.py --allocator
# glibc,tcmalloc). Data preparation runs without it (its 8 kHz resampling aborts with "free(): invalid
# pointer" under tcmalloc). TCMALLOC= turns it off.
TCMALLOC="${TCMALLOC-$(ls /usr/lib/*-linux-gnu/libtcmalloc_minimal.so.4 2>/dev/null | head -n 1)}"
T0=$(date +%s)
if [ ! -f "$DATA/summary.json" ]; then
  .venv/bin/python prepare_data.py --corpus synth --size demo --out "$DATA" --seed 0 \
    ${AUGMENT:+--augment-config "$AUGMENT"} $PREPARE_ARGS
fi
if [ ! -f "$REAL/summary.json" ]; then
  .venv/bin/python prepare_data.py --corpus asterisk --out "$REAL" --oov skip
fi
PRELOAD="${LD_PRELOAD:-}"
if [ -n "$TCMALLOC" ]; then
  PRELOAD="$TCMALLOC${PRELOAD:+:$PRELOAD}"
  echo "[run_demo] allocator for the experiment: $TCMALLOC"
fi
LD_PRELOAD="$PRELOAD" .venv/bin/python run_experiments.py --config "$CONFIG" --device "$DEVICE" --jobs "$JOBS"
echo "[run_demo] finished in $(( $(date +%s) - T0 )) s; table: $(.venv/bin/python -c "import yaml,sys; c=yaml.safe_load(open('$CONFIG')); print(c.get('out','exp/'+'$CONFIG'.split('/')[-1].rsplit('.',1)[0]))")/results.md"
