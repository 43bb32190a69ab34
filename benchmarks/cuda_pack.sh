#!/usr/bin/env bash
# Pack what benchmarks/cuda_check.py needs on a GPU machine that has torch but no network, into .gpu/
# (git-ignored): wheels of the four packages such an image may lack (netCDF4, cftime, pyproj, PyKrige;
# CPython 3.12, manylinux x86_64), step02's chunks (xz), the step01 index (xz), one image time with static.nc
# and stations.csv, and step03's best.pt without its optimizer state. Run after the README's first command:
#
#   bash benchmarks/cuda_pack.sh [TIME]          # TIME: image to map, default 2023-07-08 00:00
#
# then, on the GPU machine, from the repository root, with only the part of .gpu/ each check reads (all of
# it is ~72 MB):
#
#   bash .gpu/check.sh train     # step03 per train.amp mode + fp16 stop/resume (~5 min on an H200)
#       carry: .gpu/check.sh .gpu/whl .gpu/patches.tar.xz .gpu/cpu                      (~38 MB)
#   bash .gpu/check.sh map       # step04: one map on the CPU, the GPU fp32 and the GPU bf16 (~2 min)
#       carry: .gpu/check.sh .gpu/whl .gpu/raw .gpu/index.tar.xz .gpu/best.pt           (~57 MB)
#
# Results: $OUT/summary.json (or /tmp/cc/summary.json), logs, and (train) the checkpoints in 12 MB parts.
set -euo pipefail
cd "$(dirname "$0")/.."
TIME="${1:-2023-07-08 00:00}"
STAMP=$(date -u -d "$TIME" +%Y%m%d%H%M)
DAY=$(date -u -d "$TIME" +%Y/%m/%d)
PY=.venv/bin/python
rm -rf .gpu && mkdir -p .gpu/raw/sat/"$DAY"
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .gpu/whl netCDF4 cftime pyproj PyKrige
(cd step02_make_patches/outputs && tar cf - patch_pt stats | xz -6 -T2 > ../../.gpu/patches.tar.xz)
(cd step01_make_index/outputs && tar cf - . | xz -6 -T2 > ../../.gpu/index.tar.xz)
cp data/raw/static.nc data/raw/stations.csv .gpu/raw/
cp data/raw/sat/"$DAY"/gk2a_*_"$STAMP".nc .gpu/raw/sat/"$DAY"/
$PY - <<'PY'
import torch
ck = torch.load("step03_train_clay/weights/best.pt", weights_only=True, map_location="cpu")
ck.pop("optimizer", None)  # inference needs only the model
torch.save(ck, ".gpu/best.pt")
PY
mkdir -p .gpu/cpu/weights .gpu/cpu/outputs
cp step03_train_clay/weights/run.json .gpu/cpu/weights/ && cp step03_train_clay/outputs/train_log.csv .gpu/cpu/outputs/
cat > .gpu/check.sh <<SH
set -u
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 3
export PYTHONPATH=/tmp/site:\$PWD PYTHONUNBUFFERED=1
OUT=\${OUT:-/tmp/out}; mkdir -p "\$OUT"
if [ "\${1:-map}" = train ]; then
  mkdir -p step02_make_patches/outputs && tar xJf .gpu/patches.tar.xz -C step02_make_patches/outputs || exit 4
  python3 -m shared.tools.adopt step02 step02_make_patches/outputs || exit 5
  timeout 420 python3 benchmarks/cuda_check.py --out /tmp/cc --cpu-run .gpu/cpu --fp16-epochs 4
  for m in auto bf16 off; do [ -f /tmp/cc/\$m/w/best.pt ] || continue
    python3 -c "import torch,sys; c=torch.load(sys.argv[1],weights_only=True); c.pop('optimizer',None); torch.save(c,sys.argv[2])" /tmp/cc/\$m/w/best.pt /tmp/cc/\$m.pt
    split -b 12M -d /tmp/cc/\$m.pt "\$OUT/\$m.pt.part"; done
else
  mkdir -p data step01_make_index/outputs w && cp -r .gpu/raw data/raw && tar xJf .gpu/index.tar.xz -C step01_make_index/outputs || exit 4
  cp .gpu/best.pt w/best.pt
  python3 -m shared.tools.adopt step01 step01_make_index/outputs && python3 -m shared.tools.adopt step03 w/best.pt || exit 5
  timeout 300 python3 benchmarks/cuda_check.py --out /tmp/cc --modes "" --fp16-epochs 0 --map "$TIME" --checkpoint w/best.pt
fi
cp /tmp/cc/summary.json "\$OUT/" 2>/dev/null
tar czf "\$OUT/logs.tgz" -C /tmp/cc \$(cd /tmp/cc && ls *.log */o/train_log.csv 2>/dev/null)
SH
du -sh .gpu
