#!/bin/sh
# Installs the Debian packages named as arguments that are not installed yet.
# Not root and something missing: one line naming the packages, exit 1.
missing=
for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' ||
        missing="$missing $p"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "echohost: missing Debian packages:$missing (install them, or run make as root)" >&2
    exit 1
fi
echo "  APT$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends $missing >/dev/null ||
    { echo "echohost: apt-get install failed for:$missing" >&2; exit 1; }
