#!/usr/bin/env bash
# The side by side with the original GFlow in one call on the GPU machine (docs/fit.md, "Side by
# side with the original GFlow"). Runs in the repo root there, with these carried:
#   .orig/GFlow, .orig/msplat (+ third_party/glm)  the original's checkouts, exported unchanged
#   .orig/whl        what the original's import chain needs and the machine lacks: shapely,
#                    concave_hull (cubao's, on PyPI), imageio-ffmpeg (its mp4 writer), roma
#   .orig/numpy_whl  NumPy 2.3.5, for the original's child process only: its .flo reader takes
#                    int() of 1-element arrays, an error from NumPy 2.4 on (the machine has 2.5)
#   $OUR_WHEELS      (default .whl) our wheels: gsplat 1.5.3, tyro and what tyro needs
#                    (docstring_parser, shtab, typeguard, typing_extensions), 6.6 MiB. Wheels
#                    only the services need (grpcio, minio, pycryptodome, ...) are not needed
#                    here; a .whl holding them too (18 MiB) beside .orig (51 MiB) takes the tree
#                    past the device's 64 MiB, so keep these in a folder of their own and name it.
# One copy of each wheel across the folders, or pip refuses.
# FRAMES (default 16) sets the clip length of both systems; ORIGINAL_TIMEOUT (s) the original's
# budget; COMPARE_FLAGS more bench/compare_original.py flags (e.g. "--set lambda_isotropic=1").
# Everything stays within 9 minutes; the figures and logs land in $OUT.
set -u
FRAMES=${FRAMES:-16}
ORIGINAL_TIMEOUT=${ORIGINAL_TIMEOUT:-200}
BUDGET_S=530
t0=$(date +%s)
elapsed() { echo $(( $(date +%s) - t0 )); }
step() { echo "[$(elapsed) s] $*"; }

pip_target() {  # pip_target DIR WHEEL...: install wheels offline into DIR
    local dir=$1; shift
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$dir" "$@"
}
pip_target /tmp/site "${OUR_WHEELS:-.whl}"/*.whl .orig/whl/*.whl || exit 1
pip_target /tmp/orig_numpy .orig/numpy_whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:/tmp/msplat:$PWD PYTHONUNBUFFERED=1
export TORCH_CUDA_ARCH_LIST=9.0 TORCH_EXTENSIONS_DIR=/tmp/torch_ext MAX_JOBS=8
step "wheels installed"

# MSplat as its README installs it, for sm_90 only. Should CUDA 13's Thrust lack the
# thrust::min/max its include/utils.h calls, one retry forces in a header that supplies them
# from cuda::std (the original's files stay as they are).
build_msplat() {
    (cd .orig/msplat && python3 -m pip install --no-build-isolation --no-deps --no-cache-dir \
        --target /tmp/msplat .)
}
cat > /tmp/thrust_minmax.h <<'EOF'
#pragma once
#include <cuda/std/algorithm>
namespace thrust { using ::cuda::std::max; using ::cuda::std::min; }
EOF
(
    start=$(date +%s)
    build_msplat > /tmp/msplat_build.log 2>&1
    rc=$?
    if [ $rc -ne 0 ] && grep -q 'namespace "thrust" has no member' /tmp/msplat_build.log; then
        echo "retrying with -include /tmp/thrust_minmax.h" >> /tmp/msplat_build.log
        NVCC_APPEND_FLAGS="-include /tmp/thrust_minmax.h" build_msplat >> /tmp/msplat_build.log 2>&1
        rc=$?
    fi
    echo "msplat build: exit $rc in $(( $(date +%s) - start )) s" >> /tmp/msplat_build.log
) &
msplat_job=$!
(
    start=$(date +%s)
    python3 -c "import torch, gsplat; from gsplat.cuda._backend import _C; print('gsplat built', _C is not None)" > /tmp/gsplat_jit.log 2>&1
    echo "gsplat JIT: exit $? in $(( $(date +%s) - start )) s" >> /tmp/gsplat_jit.log
) &
gsplat_job=$!
wait $msplat_job $gsplat_job
tail -3 /tmp/gsplat_jit.log
tail -3 /tmp/msplat_build.log
cp /tmp/msplat_build.log "$OUT/msplat_build.log"
python3 -c "import msplat; from msplat import _C; print('msplat imports from', msplat.__file__)" 2>&1 | tail -1
step "renderers built"

timeout $(( BUDGET_S - $(elapsed) )) python3 bench/compare_original.py --gflow-repo .orig/GFlow \
    --frames "$FRAMES" --workdir /tmp/cmp --original-pythonpath /tmp/orig_numpy \
    --original-timeout-s "$ORIGINAL_TIMEOUT" --json-out "$OUT/compare_original.json" \
    ${COMPARE_FLAGS:-} > "$OUT/compare_original.log" 2>&1
echo "compare_original.py: exit $?"
tail -c 400000 /tmp/cmp/clip/original_fit_video.log > "$OUT/original_fit_video_tail.log" 2>/dev/null
sed -n '/side by side on/,$p' "$OUT/compare_original.log"
grep -aE "Total time|Traceback|Error:" /tmp/cmp/clip/original_fit_video.log 2>/dev/null | tail -5
step "done"
