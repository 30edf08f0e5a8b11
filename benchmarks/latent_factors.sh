#!/usr/bin/env bash
# Autoencoders per downsampling factor f in {2, 4, 8} on emoji (64 px RGB) and Fashion-MNIST
# (28 px: f = 8 does not divide 28, so Fashion gets f = 2 and 4 and, for f = 8, 32 px images),
# each trained for the same wall-clock (MINUTES, default 4), then PSNR / rFD / latent std on the
# held-out split by benchmarks/latent.py ae.
#   bash benchmarks/latent_factors.sh runs/factors 4
set -euo pipefail
out=${1:-runs/factors}
minutes=${2:-4}
py=${PYTHON:-.venv/bin/python}
mkdir -p "$out"
runs=()
for f in 2 4 8; do
  "$py" -m genmodels train emoji-ae latent.factor=$f train.minutes=$minutes --out "$out/emoji-f$f"
  runs+=("$out/emoji-f$f")
  size=()
  [ "$f" = 8 ] && size=(data.image_size=32)
  "$py" -m genmodels train fashion-ae latent.factor=$f train.minutes=$minutes "${size[@]}" --out "$out/fashion-f$f"
  runs+=("$out/fashion-f$f")
done
"$py" benchmarks/latent.py ae "${runs[@]}"
