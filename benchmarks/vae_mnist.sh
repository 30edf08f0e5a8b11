#!/usr/bin/env bash
# The VAE rows of docs/BENCHMARKS.md: train mnist-vae-bernoulli and mnist-vae for a fixed number of
# images on the CPU, then benchmarks/vae_mnist.py (sampling time, pictures, evaluation protocol).
#   benchmarks/vae_mnist.sh [WORK_DIR] [IMAGES_BERNOULLI] [IMAGES_LOGISTIC]
set -euo pipefail
work=${1:-/tmp/bench-vae}
lock=(flock /tmp/cpu.lock)  # one job at a time on a shared machine
mkdir -p "$work"
[ -f "$work/bin/state.pt" ] || "${lock[@]}" python -m genmodels train mnist-vae-bernoulli \
  train.images="${2:-600000}" train.device=cpu --out "$work/bin"
"${lock[@]}" python benchmarks/vae_mnist.py "$work/bin" --out docs --name vae_bernoulli --k 1000 5000
[ -f "$work/logistic/state.pt" ] || "${lock[@]}" python -m genmodels train mnist-vae \
  train.images="${3:-200000}" train.device=cpu --out "$work/logistic"
"${lock[@]}" python benchmarks/vae_mnist.py "$work/logistic" --out docs --name vae_logistic --k 1000
