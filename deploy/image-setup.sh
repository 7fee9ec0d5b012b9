#!/bin/sh
# Turns a Debian bookworm image into sock's runtime, for both Dockerfiles:
# python3 (sandboxes run on this image's /usr) and pip (the cache installs
# functions' wheels with it), the unprivileged `sock` user the registry,
# cache and gateway run as, their data directories (named volumes copy
# these owners when first mounted), and the health probe. Runs once, as
# root, at image build time.
set -eu
here=$(dirname "$0")
if ! /usr/bin/python3 -m pip --version >/dev/null 2>&1 || [ ! -d /etc/ssl/certs ]; then
    apt-get update
    DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends \
        python3 python3-pip ca-certificates
    rm -rf /var/lib/apt/lists/*
fi
groupadd --gid 10001 sock
useradd --uid 10001 --gid sock --home-dir /var/lib/sock --no-create-home \
    --shell /usr/sbin/nologin sock
install -d -o sock -g sock -m 0755 /var/lib/sock /var/lib/sock/registry /var/lib/sock/cache
install -d -m 0700 /var/lib/sock/sandboxd
install -m 0755 "$here/grpc-health-check.py" /usr/local/bin/sock-health
