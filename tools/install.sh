#!/bin/sh
# Install the edge service on a store box (Debian 12) from this checkout:
#   /opt/edge                        code, venv and models: ours, replaced on upgrade
#   /etc/edge                        config, ad catalog, secrets: the operator's,
#                                    written only when absent
#   /etc/systemd/system/edge.service the unit (changes go in drop-ins)
#
# Usage: tools/install.sh [--root DIR] [--no-deps]
#   --root DIR  install under DIR instead of / (staging, tests); no systemctl
#   --no-deps   no apt, no venv, no downloads: copy files only
#
# Safe to run again: files whose content is unchanged are not touched, so a
# second run leaves the tree exactly as it was. One line per step.
set -eu

usage() { sed -n '8,10p' "$0" | cut -c3-; }
say() { printf '%s\n' "$*"; }
die() { printf 'install.sh: %s\n' "$*" >&2; exit 1; }

ROOT='' NO_DEPS=''
while [ $# -gt 0 ]; do
    case $1 in
        --root) [ $# -ge 2 ] || die "--root needs a directory"; ROOT=$2; shift 2 ;;
        --root=*) ROOT=${1#--root=}; shift ;;
        --no-deps) NO_DEPS=1; shift ;;
        -h|--help) usage; exit 0 ;;
        *) printf 'install.sh: unknown option %s\n' "$1" >&2; usage >&2; exit 64 ;;
    esac
done

# Files we create are read by the service's dynamic user: world-readable
# unless made private on purpose, whatever the caller's umask.
umask 022
SRC=$(cd "$(dirname "$0")/.." && pwd -P)
if [ -n "$ROOT" ]; then
    mkdir -p "$ROOT"
    ROOT=$(cd "$ROOT" && pwd -P)
    [ "$ROOT" != / ] || ROOT=
elif [ "$(id -u)" -ne 0 ]; then
    die "run as root (or pass --root DIR to stage the files elsewhere)"
fi
OPT=$ROOT/opt/edge
ETC=$ROOT/etc/edge
UNIT=$ROOT/etc/systemd/system/edge.service
VENV=$OPT/venv
# Debian's interpreter, not whatever python3 is first on PATH: the venv links
# to it, and the unit's ProtectHome=yes hides one under /root or /home.
PYTHON=${PYTHON:-/usr/bin/python3}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
trap 'exit 130' INT TERM HUP
CHANGED=

# put SRC DEST MODE: install a file we own; untouched when already identical.
put() {
    if [ -f "$2" ] && cmp -s "$1" "$2"; then
        say "unchanged $2"
    else
        install -D -m "$3" "$1" "$2"
        say "installed $2"
        CHANGED=1
    fi
}

# put_once SRC DEST MODE: install a file the operator owns, only if absent.
put_once() {
    if [ -e "$2" ]; then
        say "kept existing $2"
    else
        install -D -m "$3" "$1" "$2"
        say "installed $2"
    fi
}

# put_dir NAME: $SRC/NAME to $OPT/NAME, replaced whole when anything differs,
# so files deleted from the checkout do not linger. Bytecode is not compared:
# it is built below, from what was installed.
put_dir() {
    if [ -d "$OPT/$1" ] && diff -r -q -x __pycache__ "$SRC/$1" "$OPT/$1" >/dev/null 2>&1; then
        say "unchanged $OPT/$1"
        return
    fi
    rm -rf "$OPT/$1.new"
    mkdir -p "$OPT/$1.new"
    tar -C "$SRC/$1" --exclude=__pycache__ -cf - . | tar -C "$OPT/$1.new" --no-same-owner -xf -
    chmod -R u=rwX,go=rX "$OPT/$1.new"
    rm -rf "${OPT:?}/$1"
    mv "$OPT/$1.new" "$OPT/$1"
    say "installed $OPT/$1"
    CHANGED=1
}

pip_install() { "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@"; }
# pip as nobody where we are root: no package's build script (insightface compiles an
# extension, setuptools builds our own) runs as root. The venv and /opt/edge are
# nobody's only while pip runs, and root's again afterwards (the service only reads them).
pip_unprivileged() {
    if [ "$(id -u)" -eq 0 ]; then
        setpriv --reuid=nobody --regid=nogroup --clear-groups \
            env HOME="$PIPHOME" PIP_CACHE_DIR="$PIPHOME/cache" \
            "$VENV/bin/pip" install --quiet --disable-pip-version-check "$@"
    else
        pip_install "$@"
    fi
}

# 1. Debian packages, only those missing: the local broker (and its clients,
# for `mosquitto_sub` checks), and what the Makefile's system-deps installs
# for the venv (insightface compiles a C++ extension), and npm for `edge models
# fetch` (face-api's weights come from the npm registry) unless one is on the PATH.
DEBS="mosquitto mosquitto-clients g++ python3-dev python3-venv"
command -v npm >/dev/null || DEBS="$DEBS npm"
if [ -n "$NO_DEPS" ]; then
    say "packages: skipped (--no-deps)"
else
    [ "$(id -u)" -eq 0 ] || die "installing Debian packages needs root (or pass --no-deps)"
    missing=
    for p in $DEBS; do
        dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || missing="$missing $p"
    done
    if [ -n "$missing" ]; then
        say "packages: installing$missing"
        apt-get update -qq
        # shellcheck disable=SC2086 # $missing is a list of names
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
    else
        say "packages: all present ($DEBS)"
    fi
fi

# 2. The code, and the example ad catalog /etc/edge/ads is seeded from.
mkdir -p "$OPT"
for d in edge requirements ads; do put_dir "$d"; done
for f in pyproject.toml README.md; do put "$SRC/$f" "$OPT/$f" 0644; done

# 3. The venv, as the Makefile's $(STAMP) rule builds it (from the hash-checked
# lock files) but without the test tools (requirements/dev.lock). Editable, like the checkout's: the code
# runs from /opt/edge/edge, which makes /opt/edge the project root (models in
# /opt/edge/models by default). Rebuilt only when a lock file changes.
if [ -n "$NO_DEPS" ]; then
    say "venv: skipped (--no-deps)"
else
    case $(readlink -f "$PYTHON") in
        /root/*|/home/*|/run/user/*) die "$PYTHON lives in a home directory, which the unit hides (ProtectHome=yes); set PYTHON=/usr/bin/python3" ;;
    esac
    stamp=$(cat "$OPT/requirements/"*.lock "$OPT/pyproject.toml" | sha256sum | cut -d' ' -f1)
    if [ -x "$VENV/bin/python" ] && [ "$(cat "$VENV/.installed" 2>/dev/null)" = "$stamp" ]; then
        say "unchanged $VENV"
    else
        [ -z "$ROOT" ] || say "venv: note, built for $VENV; it runs only from that path"
        "$PYTHON" -m venv "$VENV"
        PIPHOME=$(mktemp -d)
        if [ "$(id -u)" -eq 0 ]; then
            chown -R nobody:nogroup "$VENV" "$PIPHOME"
            chown nobody:nogroup "$OPT"  # the folder alone, for the egg-info below
        fi
        # Only the files the locks name, each checked against its hash.
        pip_unprivileged --require-hashes -r "$OPT/requirements/runtime.lock"
        pip_unprivileged --require-hashes --no-deps -r "$OPT/requirements/insightface.lock"
        # Our own code, editable (it writes /opt/edge/*.egg-info). Its build backend
        # (setuptools, pyproject.toml) comes unhashed: pip cannot hash-check build
        # dependencies, one more reason not to run it as root.
        pip_unprivileged --no-deps -e "$OPT"
        rm -rf "$PIPHOME"
        if [ "$(id -u)" -eq 0 ]; then
            chown root:root "$OPT"
            chown -R root:root "$VENV" "$OPT"/*.egg-info
        fi
        echo "$stamp" > "$VENV/.installed"
        say "installed $VENV"
        CHANGED=1
    fi
    # /opt is read-only to the service, so Python cannot cache bytecode at
    # run time; build it now (only stale files are rewritten).
    "$VENV/bin/python" -m compileall -q -d /opt/edge/edge "$OPT/edge" >/dev/null
    say "compiled $OPT/edge"
fi

# 4. Models: a file the checkout has already fetched is copied when its
# sha256 matches models/manifest.yaml (read with awk: each entry's `file:`
# is followed by its own `sha256:`). `edge models fetch` then downloads what
# is still missing and verifies every file against the manifest.
put "$SRC/models/manifest.yaml" "$OPT/models/manifest.yaml" 0644
missing=
# shellcheck disable=SC2013 # one word per entry: file:sha256
for entry in $(awk '$1 == "file:" { f = $2 } $1 == "sha256:" && f { print f ":" $2; f = "" }' \
               "$OPT/models/manifest.yaml"); do
    file=${entry%%:*} sum=${entry#*:}
    if [ -f "$OPT/models/$file" ] && printf '%s  %s\n' "$sum" "$OPT/models/$file" | sha256sum -c --status; then
        say "unchanged $OPT/models/$file"
    elif [ -f "$SRC/models/$file" ] && printf '%s  %s\n' "$sum" "$SRC/models/$file" | sha256sum -c --status; then
        install -m 0644 "$SRC/models/$file" "$OPT/models/$file"
        say "installed $OPT/models/$file (sha256 verified)"
        CHANGED=1
    else
        missing="$missing $file"
    fi
done
if [ -z "$NO_DEPS" ]; then
    "$VENV/bin/edge" models fetch
elif [ -n "$missing" ]; then
    say "models: not fetched (--no-deps):$missing; run: /opt/edge/venv/bin/edge models fetch"
fi

# 5. The unit.
put "$SRC/systemd/edge.service" "$UNIT" 0644

# 6. Configuration, the operator's from now on. The default is the repo's
# config.yaml with the two paths pointed at the installed locations; it is
# kept in /opt/edge for reference (diff it against /etc/edge after upgrades).
sed -e '/^models:/,/^[^ #]/ s|^  dir:.*|  dir: /opt/edge/models     # installed by tools/install.sh|' \
    -e '/^selector:/,/^[^ #]/ s|^  catalog:.*|  catalog: /etc/edge/ads/catalog.yaml   # shipped example: /opt/edge/ads|' \
    "$SRC/config.yaml" > "$TMP/config.yaml"
# The unit's StateDirectory=, named here too so that `edge check` run by hand
# (without $STATE_DIRECTORY) checks the folder the service will write.
printf '\nstate_dir: /var/lib/edge         # systemd StateDirectory=edge (MQTT outbox)\n' \
    >> "$TMP/config.yaml"
if ! grep -q '^  dir: /opt/edge/models' "$TMP/config.yaml" \
        || ! grep -q '^  catalog: /etc/edge/ads/catalog.yaml' "$TMP/config.yaml"; then
    die "config.yaml no longer has models.dir / selector.catalog where expected; update step 6"
fi
put "$TMP/config.yaml" "$OPT/config.example.yaml" 0644
# Root's alone: camera URLs may carry passwords. The unit hands the service a copy
# (LoadCredential=config.yaml), so the dynamic user needs no read access here.
put_once "$OPT/config.example.yaml" "$ETC/config.yaml" 0600
chmod 0600 "$ETC/config.yaml"  # an earlier install left it readable by everyone
if [ -e "$ETC/ads" ]; then
    say "kept existing $ETC/ads"
else
    cp -R "$OPT/ads" "$ETC/ads"
    say "installed $ETC/ads"
fi
# Secrets: root only. systemd reads the file before dropping privileges.
put_once "$SRC/systemd/edge.env.example" "$ETC/edge.env" 0600

# 7. Enable (never start: the operator checks the config first).
if [ -z "$ROOT" ] && command -v systemctl >/dev/null && [ -d /run/systemd/system ]; then
    systemctl daemon-reload
    systemctl enable --quiet edge
    say "systemd: edge enabled (starts at boot)"
    if [ -n "$CHANGED" ] && systemctl is-active --quiet edge; then
        say "systemd: edge is running the old version: systemctl restart edge"
    fi
else
    say "systemd: not running here${ROOT:+ (--root $ROOT)}; enable on the box with: systemctl enable edge"
fi

say "done. Next: set cameras and mqtt in /etc/edge/config.yaml, the broker login in"
say "/etc/edge/edge.env, then: /opt/edge/venv/bin/edge --config /etc/edge/config.yaml check"
say "and, when it reports no FAIL: systemctl start edge"
