#!/bin/sh
# Build the CPU images of every service and the lab's store image without any image registry:
# a Debian root filesystem made with debootstrap from the mirror apt uses here, `docker import`ed
# as the base, then the Dockerfiles of deploy/docker with that base as CPU_IMAGE (the same files
# build from the public bases elsewhere). The Python dependencies are installed once, in
# gflow-cpu-deps, which every builder stage starts from. Run as root from anywhere, with dockerd
# running and the project's venv set up (.venv gives the torch wheel and the versions to pin).
# MASt3R and UniMatch (not on PyPI) come from the pinned copies in GFLOW_THIRD_PARTY (default
# ../shared/third_party, beside the checkout) when it holds both: each becomes a source image the
# depth and flow Dockerfiles copy instead of cloning from GitHub, which is unreachable here.
# Env: GFLOW_TAG (latest); GFLOW_MODEL_CODE: local (the default where GFLOW_THIRD_PARTY holds
# both), git (clone at the Dockerfiles' pins) or none (leave both out: the default otherwise);
# DEBIAN_MIRROR and DEBIAN_SUITE (default: apt's first source, this system).
set -eu
cd "$(dirname "$0")/../.."
tag=${GFLOW_TAG:-latest}
third_party=${GFLOW_THIRD_PARTY:-../shared/third_party}
# shellcheck source=/dev/null
suite=${DEBIAN_SUITE:-$(. /etc/os-release && echo "$VERSION_CODENAME")}
mirror=${DEBIAN_MIRROR:-$( (sed -n 's/^URIs: *//p' /etc/apt/sources.list.d/*.sources; \
    sed -n 's/^deb \(\[[^]]*\] \)\{0,1\}\([^ ]*\) .*/\2/p' /etc/apt/sources.list) 2>/dev/null \
    | head -n 1)}
base="gflow-base:$suite"
torch=$(sed -n 's/.*"\(torch==[^"]*\)".*/\1/p' pyproject.toml)

log() { echo "build-images: $*" >&2; }
since() { echo "$(( $(date +%s) - $1 )) s"; }
logs=$(mktemp -d)
build() {  # build TAG DOCKERFILE CONTEXT [docker build args]: the legacy builder, host network
    image=$1 file=$2 context=$3
    shift 3
    started=$(date +%s)
    if ! DOCKER_BUILDKIT=0 docker build --network host --force-rm -f "$file" -t "$image" "$@" "$context" \
        >"$logs/build.log" 2>&1; then
        tail -n 40 "$logs/build.log" >&2
        log "building $image failed (the lines above)"
        exit 1
    fi
    log "$image built in $(since "$started")"
}
# Every rebuild leaves untagged images behind: the builder stages and the images the new tags
# replaced (about 2 GB a service per rebuild) until the disk fills. Those made while this script
# ran are removed at its end, newest first (an old image can be the base of a later old one).
docker image ls -q --no-trunc -f dangling=true >"$logs/dangling-before"
remove_left_behind() {  # `docker image ls` lists the newest first
    docker image ls -q --no-trunc -f dangling=true | grep -vxF -f "$logs/dangling-before" \
        | while read -r id; do
            docker rmi "$id" >/dev/null 2>&1 || log "kept an untagged image a container uses: $id"
        done
}

if docker image inspect "$base" >/dev/null 2>&1; then
    log "$base exists"
else
    : "${mirror:?no Debian mirror in the apt sources: set DEBIAN_MIRROR}"
    started=$(date +%s)
    rootfs=$(mktemp -d)
    debootstrap --variant=minbase \
        --include=python3,python3-venv,tini,ca-certificates,libglib2.0-0 \
        "$suite" "$rootfs" "$mirror" >/dev/null
    rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
    tar -C "$rootfs" -c . | docker import -m "debootstrap $suite from $mirror" - "$base" >/dev/null
    rm -rf "$rootfs"
    log "$base (debootstrap $suite from $mirror) made in $(since "$started")"
fi

mkdir -p deploy/lab/wheels
.venv/bin/python -m pip download -q --no-deps -d deploy/lab/wheels "$torch"
.venv/bin/python -m pip freeze --exclude-editable | grep -v -e ' @ ' -e '^torchvision==' \
    >deploy/lab/wheels/constraints.txt
# The builds reach PyPI through this machine's TLS setup: its CA bundle goes along.
cp /etc/ssl/certs/ca-certificates.crt deploy/lab/wheels/

# The CUDA bases are named by stages the CPU variant never uses; the legacy builder still pulls
# every FROM, so they point at the local base too.
local_bases="--build-arg CPU_IMAGE=$base --build-arg CUDA_RUNTIME_IMAGE=$base \
--build-arg CUDA_DEVEL_IMAGE=$base"

# source_image MODEL DOCKERFILE PIN_ARG: an image of $third_party/MODEL alone, after checking that
# the commit its README states is the Dockerfile's pin; prints the image's name.
source_image() {
    model=$1 pin=$(sed -n "s/^ARG $3=//p" "$2")
    stated=$(sed -n "s/^| \`$model\/\` | [^|]* | \([0-9a-f]\{7,40\}\) .*/\1/p" "$third_party/README.md")
    case $pin in
        "${stated:-none}"*) ;;
        *) log "$third_party/$model is at commit '${stated:-unknown}' (its README), $2 pins $pin:" \
            "update one of them, or set GFLOW_MODEL_CODE=none"; exit 1 ;;
    esac
    printf 'FROM scratch\nCOPY . /\n' | build "gflow-$model-source:$pin" - "$third_party/$model"
    echo "gflow-$model-source:$pin"
}
has_third_party() { [ -d "$third_party/mast3r/mast3r" ] && [ -d "$third_party/unimatch/unimatch" ]; }
model_code_source=${GFLOW_MODEL_CODE:-}
if [ -z "$model_code_source" ]; then
    model_code_source=local
    if ! has_third_party; then
        log "no MASt3R and UniMatch sources in $third_party: both are left out"
        model_code_source=none
    fi
fi
case $model_code_source in
    local)
        has_third_party || { log "no MASt3R and UniMatch sources in $third_party"; exit 1; }
        mast3r=$(source_image mast3r deploy/docker/depth.Dockerfile MAST3R_COMMIT)
        unimatch=$(source_image unimatch deploy/docker/flow.Dockerfile UNIMATCH_COMMIT)
        model_code="--build-arg MAST3R_SOURCE_IMAGE=$mast3r --build-arg UNIMATCH_SOURCE_IMAGE=$unimatch"
        log "MASt3R and UniMatch from $third_party" ;;
    git) model_code="" ;;
    none)
        model_code="--build-arg MAST3R_COMMIT=none --build-arg UNIMATCH_COMMIT=none"
        log "MASt3R and UniMatch left out: their backends report unavailable in Describe" ;;
    *) log "GFLOW_MODEL_CODE must be local, git or none, not '$model_code_source'"; exit 2 ;;
esac
# shellcheck disable=SC2086 # the argument lists above split on purpose
build "gflow-cpu-deps:$tag" deploy/lab/cpu-deps.Dockerfile . $local_bases
for service in depth flow fit segment pipeline; do
    case $service in depth | flow | fit) image="gflow-$service:$tag-cpu" ;; *) image="gflow-$service:$tag" ;; esac
    # shellcheck disable=SC2086
    build "$image" "deploy/docker/$service.Dockerfile" . $local_bases $model_code \
        --build-arg VARIANT=cpu --build-arg "CPU_BUILDER_IMAGE=gflow-cpu-deps:$tag"
done
build "gflow-store:$tag" deploy/lab/store.Dockerfile . --build-arg "GFLOW_IMAGE=gflow-pipeline:$tag" \
    --build-arg "BUILDER_IMAGE=gflow-cpu-deps:$tag"
remove_left_behind
