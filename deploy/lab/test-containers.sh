#!/bin/sh
# `make test-containers`: the services as real containers on this machine. Installs docker.io
# and debootstrap with apt when missing, starts dockerd when none answers (and stops it again),
# builds the images from a locally made Debian base (build-images.sh; MASt3R and UniMatch from
# ../shared/third_party when present, see GFLOW_MODEL_CODE there), then runs tests/containers:
# `gflow lab up`, a clip through the containers compared with the embedded run, `gflow lab down`,
# and the depth and flow images running MASt3R and UniMatch on tiny random models. Run as root.
set -eu
cd "$(dirname "$0")/../.."
started=$(date +%s)
log() { echo "test-containers: $*" >&2; }

missing=""
command -v dockerd >/dev/null || missing="$missing docker.io"
command -v debootstrap >/dev/null || missing="$missing debootstrap"
if [ -n "$missing" ]; then
    log "installing$missing"
    apt-get update -qq
    # shellcheck disable=SC2086 # one word per package
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
fi

dockerd_pid=""
stop_dockerd() {
    if [ -n "$dockerd_pid" ]; then
        kill "$dockerd_pid" && wait "$dockerd_pid" || true
    fi
}
trap stop_dockerd EXIT
if ! docker info >/dev/null 2>&1; then
    # Containers use the host's network (bound to 127.0.0.1): no bridge, no iptables rules.
    nice -n 10 dockerd --bridge=none --iptables=false --ip6tables=false \
        >"${TMPDIR:-/tmp}/gflow-dockerd.log" 2>&1 &
    dockerd_pid=$!
    tries=0
    until docker info >/dev/null 2>&1; do
        tries=$((tries + 1))
        if [ "$tries" -gt 60 ]; then
            tail -n 20 "${TMPDIR:-/tmp}/gflow-dockerd.log" >&2
            log "dockerd did not start (its log above)"
            exit 1
        fi
        sleep 1
    done
    log "started dockerd"
fi

build_started=$(date +%s)
nice deploy/lab/build-images.sh
log "images built in $(( $(date +%s) - build_started )) s"
docker image ls --format '{{.Repository}}:{{.Tag}} {{.Size}}' 'gflow-*' >&2

tests_started=$(date +%s)
GFLOW_TEST_CONTAINERS=1 nice .venv/bin/python -m pytest -q -ra -o log_cli=true \
    -o log_cli_level=INFO tests/containers
log "tests ran in $(( $(date +%s) - tests_started )) s; $(( $(date +%s) - started )) s in all"
