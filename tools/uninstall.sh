#!/bin/sh
# Remove what tools/install.sh installed: the unit and /opt/edge.
# /etc/edge (config, catalog, secrets) and /var/lib/edge (the MQTT outbox:
# interval counts not yet delivered) stay unless --purge.
#
# Usage: tools/uninstall.sh [--root DIR] [--purge]
#   --root DIR  remove from under DIR instead of / ; no systemctl
#   --purge     also remove /etc/edge and /var/lib/edge
#
# Safe to run again: what is already gone is reported, not an error.
set -eu

usage() { sed -n '6,8p' "$0" | cut -c3-; }
say() { printf '%s\n' "$*"; }
die() { printf 'uninstall.sh: %s\n' "$*" >&2; exit 1; }

ROOT='' PURGE=''
while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --purge) PURGE=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) printf 'uninstall.sh: unknown option %s\n' "$1" >&2; usage >&2; exit 64 ;;
    esac
done

if [ -n "$ROOT" ]; then
    [ -d "$ROOT" ] || die "--root $ROOT: no such directory"
    ROOT=$(cd "$ROOT" && pwd -P)
    [ "$ROOT" != / ] || ROOT=''
elif [ "$(id -u)" -ne 0 ]; then
    die "run as root (or pass --root DIR)"
fi
UNIT=$ROOT/etc/systemd/system/edge.service
SYSTEMD=''
if [ -z "$ROOT" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    SYSTEMD=1
fi

# remove PATH: rm -rf, saying whether there was anything to remove.
remove() {
    if [ -e "$1" ] || [ -L "$1" ]; then
        rm -rf "$1"
        say "removed $1"
    else
        say "absent $1"
    fi
}

# Stop first (it flushes the last interval to the outbox in /var/lib/edge),
# then disable, so nothing starts it again from a unit file that is gone.
if [ -n "$SYSTEMD" ] && [ -f "$UNIT" ]; then
    systemctl disable --now --quiet edge
    say "systemd: edge stopped and disabled"
fi
remove "$UNIT"
# What `systemctl enable` links; disable removed it where systemd runs.
remove "$ROOT/etc/systemd/system/multi-user.target.wants/edge.service"
# A drop-in (systemctl edit edge) is local configuration: kept, like /etc/edge.
[ ! -d "$UNIT.d" ] || say "kept existing $UNIT.d"
if [ -n "$SYSTEMD" ]; then
    systemctl daemon-reload
    systemctl reset-failed edge 2>/dev/null || true
fi
remove "$ROOT/opt/edge"

if [ -n "$PURGE" ]; then
    remove "$ROOT/etc/edge"
    remove "${UNIT:?}.d"
    # DynamicUser keeps the state in /var/lib/private/edge, reached through
    # the /var/lib/edge symlink.
    remove "$ROOT/var/lib/edge"
    remove "$ROOT/var/lib/private/edge"
else
    say "kept $ROOT/etc/edge and $ROOT/var/lib/edge (remove them with --purge)"
fi
