#!/bin/sh
# Create the compose secrets once: the services' bearer token and MinIO's access and secret key.
# Existing files are kept. The folder is private to you; the files are world-readable because
# Compose bind-mounts them as they are and the services run as uid 10001 in their containers.
set -eu
cd "$(dirname "$0")"
mkdir -p secrets
chmod 700 secrets

random() {  # $1 characters from [A-Za-z0-9]
    LC_ALL=C tr -dc 'A-Za-z0-9' </dev/urandom | head -c "$1"
}

for entry in auth_token:48 s3_access_key:20 s3_secret_key:40; do
    name=${entry%%:*}
    length=${entry#*:}
    if [ -s "secrets/$name" ]; then
        echo "kept secrets/$name"
    else
        random "$length" >"secrets/$name"
        chmod 644 "secrets/$name"
        echo "made secrets/$name"
    fi
done
