#!/usr/bin/env bash
# The system packages a make target needs that pip cannot install: checked, installed, or named.
#
#   scripts/provision.sh "make test" python3-venv redis-server chromium
#
# Each argument after the first is a Debian package name. When all of them are present this costs a few
# milliseconds and prints nothing, so make runs it every time instead of keeping a stamp that could go stale
# (an uninstalled browser). When some are missing and we are root with apt-get, it runs `apt-get update` once
# and installs them; otherwise (not root, no apt-get, or PROVISION_NO_INSTALL=1 for a root user who wants
# no package changes) it stops make with one line naming what to install.
#
# Only shell builtins are used for the checks, so it behaves the same under any PATH.
set -euo pipefail

what=${1:?usage: provision.sh WHAT PACKAGE...}
shift

# is the package's program there? (python3-venv: only matters until the virtual environment exists)
present() {
    case $1 in
        chromium) command -v chromium || command -v chromium-browser || command -v google-chrome ;;
        python3-venv) [ -x "${VENV:-.venv}/bin/python" ] || "${PYTHON:-python3}" -c 'import ensurepip, venv' ;;
        # the server's own binaries live off PATH on Debian; its package puts pg_ctlcluster on PATH
        postgresql) command -v initdb || command -v pg_ctlcluster ;;
        *) command -v "$1" ;;
    esac >/dev/null 2>&1
}

# need := the packages among "$@" that are missing
find_missing() {
    local pkg
    need=()
    for pkg in "$@"; do
        present "$pkg" || need+=("$pkg")
    done
}

# "a", "a and b", "a, b and c"
listing() {
    local out=$1
    shift
    while [ $# -gt 1 ]; do
        out="$out, $1"
        shift
    done
    [ $# -eq 1 ] && out="$out and $1"
    echo "$out"
}

find_missing "$@"
[ ${#need[@]} -eq 0 ] && exit 0

if [ "${PROVISION_NO_INSTALL:-0}" != 1 ] && [ "$EUID" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "provision: apt-get install ${need[*]} (for $what)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need[@]}" >/dev/null
    find_missing "${need[@]}"
    [ ${#need[@]} -eq 0 ] && exit 0
fi

if [ ${#need[@]} -eq 1 ]; then them=it; else them=them; fi
echo "error: $what needs $(listing "${need[@]}"); install $them (Debian: apt-get install ${need[*]})" >&2
exit 1
