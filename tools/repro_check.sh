#!/usr/bin/env bash
# Does tools/train_classifier.py make the same bytes on another CPU? The same short run
# (--limit photos, one epoch, both recipes) natively and under QEMU's user-mode emulation
# of other x86-64 CPUs (Debian's `qemu-user`): an SSE4.2 Intel (Nehalem: no AVX) and an
# AMD EPYC (MKL and oneDNN take other paths on AMD). Prints each run's sha256s; exits 1
# when any differs from the native run's.
#
#   apt-get install qemu-user && make train-env
#   tools/repro_check.sh               # LIMIT=40 BATCH=16 CPUS="Nehalem EPYC-Rome"
#
# Emulated code runs a few hundred times slower: about ten minutes a CPU at the default
# size (two training steps a recipe, then the export).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv-train/bin/python
LIMIT=${LIMIT:-40}
BATCH=${BATCH:-16}
CPUS=${CPUS:-"Nehalem EPYC-Rome"}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

run() {  # name, then the command prefix (empty for native)
  local name=$1 out=$work/$1
  shift
  mkdir -p "$out"
  "$@" "$PY" -W ignore tools/train_classifier.py --limit "$LIMIT" --select last \
    train-cydral --out-dir "$out" --epochs 1 --batch "$BATCH" >"$out/log" 2>&1
  "$@" "$PY" -W ignore tools/train_classifier.py --limit "$LIMIT" --select last \
    train --out "$out/faceapi-fairface.onnx" --epochs 1 --batch "$BATCH" >>"$out/log" 2>&1
  (cd "$out" && sha256sum cydral-fairface-age.onnx cydral-fairface-gender.onnx \
    faceapi-fairface.onnx) >"$out/sums"
  echo "$name: $(awk '{printf "%s %s  ", $2, substr($1, 1, 16)}' "$out/sums")"
}

run native
status=0
for cpu in $CPUS; do
  run "qemu-$cpu" qemu-x86_64 -cpu "$cpu"
  if ! cmp -s "$work/native/sums" "$work/qemu-$cpu/sums"; then
    echo "qemu-$cpu: DIFFERENT from the native run"
    status=1
  fi
done
[ $status = 0 ] && echo "same bytes on every CPU ($LIMIT photos, batch $BATCH, one epoch each)"
exit $status
