#!/usr/bin/env bash
# Debian packages the integration tests use (real servers started by the tests' fixtures).
# Without root or apt-get this only warns: the tests that need a missing server skip with the reason.
set -uo pipefail
PACKAGES=(redis-server orthanc orthanc-dicomweb prometheus chromium)
missing=()
for pkg in "${PACKAGES[@]}"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
done
[ ${#missing[@]} -eq 0 ] && exit 0
if [ "$(id -u)" != 0 ] || ! command -v apt-get >/dev/null; then
    echo "warning: not root or no apt-get; missing ${missing[*]} (their integration tests will skip)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
if ! { apt-get update -qq && apt-get install -y -qq --no-install-recommends "${missing[@]}"; } >/dev/null 2>&1; then
    echo "warning: could not install ${missing[*]} (their integration tests will skip)" >&2
fi
exit 0
