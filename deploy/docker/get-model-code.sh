#!/bin/sh
# Put a model's source tree (MASt3R, UniMatch: not on PyPI) at DEST in a builder stage:
# - COMMIT=none: DEST stays empty (the backend then reports unavailable in Describe);
# - LOCAL (a folder the Dockerfile copied from its `<model>-source` stage) not empty: that copy,
#   a checkout at COMMIT made elsewhere (deploy/lab/build-images.sh checks its commit; a copy
#   that still has its .git is checked here like a clone);
# - otherwise a clone of URL at COMMIT with its submodules.
# Then every SUBMODULE=COMMIT given must match (where git metadata is present) and .git goes.
# Usage: get-model-code.sh DEST COMMIT URL LOCAL [SUBMODULE=COMMIT ...]
set -eu
dest=$1 commit=$2 url=$3 local_copy=$4
shift 4
if [ "$commit" = none ]; then
    echo "get-model-code: $dest left empty (commit none)"
    mkdir -p "$dest"
    exit 0
fi
if [ -n "$(ls -A "$local_copy" 2>/dev/null)" ]; then
    echo "get-model-code: $dest from the local copy (expected at $commit)"
    mv "$local_copy" "$dest"
else
    echo "get-model-code: cloning $url at $commit"
    git clone --quiet "$url" "$dest"
    git -C "$dest" checkout --quiet --detach "$commit"
    git -C "$dest" submodule update --quiet --init --recursive
fi
rm -rf "$local_copy"
check() {  # check PATH_IN_DEST COMMIT: where .git is there, HEAD must be COMMIT
    if [ -e "$dest/$1/.git" ]; then
        head=$(git -C "$dest/$1" rev-parse HEAD)
        if [ "$head" != "$2" ]; then
            echo "get-model-code: $dest/$1 is at $head, not the pinned $2" >&2
            exit 1
        fi
    fi
}
check . "$commit"
for pin in "$@"; do
    check "${pin%%=*}" "${pin#*=}"
done
find "$dest" -name .git -prune -exec rm -rf {} +
