#!/usr/bin/env bash
# Install everything haul needs on a Debian 12 or 13 machine, as root:
# system packages, a CRIU >= 4.1 that passes `criu check`, CRIU's source tree
# (kept for ZDTM test programs), and a virtualenv with haul and its test extra.
#
# Idempotent: each step checks first and does nothing when its result is there.
# Usage: deploy/install.sh            (from a clone of haul)
# Environment:
#   HAUL_CRIU_CANDIDATES  Debian SUITE:VERSION source packages to build, best first
#                         (default "sid:4.2.1-1 trixie:4.1.1-1")
#   HAUL_VENV           virtualenv path (default: .venv in the clone)
set -euo pipefail

# Best first. 4.2.1 dumps TCP and UDP sockets on Linux 6.18, where 4.1.1 fails
# ("sockets: Can't get 1:16 opt": SO_PASSCRED on an inet socket); only unstable
# carries 4.2.1, and unstable moves on, so Debian 13's 4.1.1, which stays in the
# archive, is the fallback.
CRIU_CANDIDATES=${HAUL_CRIU_CANDIDATES:-"sid:4.2.1-1 trixie:4.1.1-1"}
CRIU_MIN=4.1
MIRROR=http://deb.debian.org/debian
PREFIX=/usr/local
SRC_ROOT=$PREFIX/src/haul
ETC=/etc/haul
REPO=$(cd "$(dirname "$0")/.." && pwd)
VENV=${HAUL_VENV:-$REPO/.venv}

step() { printf '\033[1m==> %s\033[0m\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die()  { printf 'install.sh: error: %s\n' "$*" >&2; exit 1; }
trap 'die "step failed at line $LINENO (exit $?): see the output above"' ERR

[ "$(id -u)" = 0 ] || die "run as root (CRIU, namespaces and apt need it)"
[ -r /etc/debian_version ] || die "this installer supports Debian 12 and 13 only"

export DEBIAN_FRONTEND=noninteractive

# ---------------------------------------------------------------- packages
# runc runs OCI containers; umoci unpacks OCI image layouts (no registry); busybox-static
# fills the tiny test and demo image (haul/lab/images.py).
RUNTIME_PKGS=(iproute2 nftables runc umoci busybox-static iputils-arping iputils-ping haproxy
              openssh-server python3-venv util-linux procps ca-certificates)
BUILD_PKGS=(build-essential pkgconf libbsd-dev libcap-dev libgnutls28-dev
            libnet1-dev libnftables-dev libnl-3-dev libprotobuf-c-dev
            libprotobuf-dev protobuf-c-compiler protobuf-compiler uuid-dev
            python3 xz-utils)

missing_pkgs() {
    local p
    for p in "$@"; do
        dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' \
            || echo "$p"
    done
}

step "system packages"
mapfile -t need < <(missing_pkgs "${RUNTIME_PKGS[@]}" "${BUILD_PKGS[@]}")
if [ "${#need[@]}" -gt 0 ]; then
    note "installing: ${need[*]}"
    # Keep package scripts from starting daemons (sshd, haproxy): haul starts its own.
    policy_added=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
        chmod +x /usr/sbin/policy-rc.d
        policy_added=1
    fi
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    [ "$policy_added" = 1 ] && rm -f /usr/sbin/policy-rc.d
else
    note "all present"
fi

# ---------------------------------------------------------------- CRIU
version_ge() { [ "$(printf '%s\n%s\n' "$2" "$1" | sort -V | head -n1)" = "$2" ]; }

criu_ok() {  # criu_ok PATH: new enough and `criu check` passes
    local bin=$1 v
    [ -x "$bin" ] || return 1
    v=$("$bin" --version 2>/dev/null | awk '/^Version:/ {print $2}')
    [ -n "$v" ] && version_ge "$v" "$CRIU_MIN" || return 1
    "$bin" check >/dev/null 2>&1
}

fetch_criu_source() {  # fetch_criu_source SUITE DEBIAN_VERSION: unpack the orig tarball
    local suite=$1 debver=$2 upstream=${2%-*} tmp
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    echo "deb-src $MIRROR $suite main" > "$tmp/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$tmp/sources.list"
                -o "Dir::Etc::SourceParts=/dev/null"
                -o "Dir::State::Lists=$tmp/lists"
                -o "Dir::Cache=$tmp/cache"
                -o "APT::Sandbox::User=root")
    note "fetching criu_${upstream}.orig.tar.* (Debian $suite source $debver)"
    apt-get "${opts[@]}" update -qq || { rm -rf "$tmp"; return 1; }
    # The debian.tar part may be gone while the orig tarball is still there: only it is needed.
    (cd "$tmp" && apt-get "${opts[@]}" source --download-only -qq "criu=$debver" \
        >/dev/null 2>&1) || true
    local orig
    orig=$(ls "$tmp"/criu_"$upstream".orig.tar.* 2>/dev/null | head -n1)
    if [ -z "$orig" ]; then
        note "criu $debver is not in $suite any more"
        rm -rf "$tmp"
        return 1
    fi
    mkdir -p "$SRC_ROOT"
    tar -C "$SRC_ROOT" -xf "$orig"
    rm -rf "$tmp"
    [ -d "$SRC_ROOT/criu-$upstream" ]
}

build_criu() {  # build_criu UPSTREAM: build the unpacked source, install it if it works
    local src=$SRC_ROOT/criu-$1
    note "building in $src"
    if ! make -C "$src" -j"$(nproc)" criu >"$src/haul-build.log" 2>&1; then
        tail -n 20 "$src/haul-build.log" >&2
        note "CRIU $1 did not build (log: $src/haul-build.log)"
        return 1
    fi
    if ! criu_ok "$src/criu/criu"; then
        "$src/criu/criu" check 2>&1 | tail -n 5 >&2 || true
        note "CRIU $1 built but fails 'criu check'"
        return 1
    fi
    install -m 0755 "$src/criu/criu" $PREFIX/sbin/criu
}

criu_version() { "$1" --version 2>/dev/null | awk '/^Version:/ {print $2}'; }

step "CRIU (wanted: ${CRIU_CANDIDATES})"
WANTED=${CRIU_CANDIDATES%% *}
WANTED=${WANTED#*:}
WANTED=${WANTED%-*}
CRIU_BIN=""
if criu_ok /usr/sbin/criu && version_ge "$(criu_version /usr/sbin/criu)" "$WANTED"; then
    CRIU_BIN=/usr/sbin/criu
    note "the distribution's CRIU works: $CRIU_BIN"
elif criu_ok $PREFIX/sbin/criu && version_ge "$(criu_version $PREFIX/sbin/criu)" "$WANTED"; then
    CRIU_BIN=$PREFIX/sbin/criu
    note "already built: $CRIU_BIN"
else
    [ -e /usr/sbin/criu ] && note "/usr/sbin/criu is older than $WANTED or fails 'criu check'"
    for candidate in $CRIU_CANDIDATES; do
        suite=${candidate%%:*}
        debver=${candidate#*:}
        upstream=${debver%-*}
        if { [ -d "$SRC_ROOT/criu-$upstream" ] || fetch_criu_source "$suite" "$debver"; } \
            && build_criu "$upstream"; then
            CRIU_BIN=$PREFIX/sbin/criu
            break
        fi
    done
    if [ -z "$CRIU_BIN" ]; then  # nothing better could be had: keep a working older one
        for bin in $PREFIX/sbin/criu /usr/sbin/criu; do
            if criu_ok "$bin"; then CRIU_BIN=$bin; break; fi
        done
    fi
    [ -n "$CRIU_BIN" ] || die "no CRIU >= $CRIU_MIN that passes 'criu check' could be built"
fi
CRIU_VERSION=$(criu_version "$CRIU_BIN")
CRIU_SRC=$SRC_ROOT/criu-$CRIU_VERSION
note "using $CRIU_BIN ($CRIU_VERSION)"
version_ge "$CRIU_VERSION" "$WANTED" \
    || note "warning: CRIU $CRIU_VERSION cannot dump TCP/UDP sockets on Linux 6.18; $WANTED can"

# runc and anything else that finds `criu` on PATH must get this one.
if [ "$CRIU_BIN" = "$PREFIX/sbin/criu" ] && [ -e /usr/sbin/criu ]; then
    note "an older /usr/sbin/criu exists; haul passes --criu $CRIU_BIN to runc and never uses it"
fi

step "CRIU source tree (for ZDTM test programs)"
if [ ! -d "$CRIU_SRC" ]; then
    for candidate in $CRIU_CANDIDATES; do
        debver=${candidate#*:}
        if [ "${debver%-*}" = "$CRIU_VERSION" ] && fetch_criu_source "${candidate%%:*}" "$debver"
        then break; fi
    done
fi
[ -d "$CRIU_SRC" ] || die "no source tree for CRIU $CRIU_VERSION (ZDTM test programs need it)"
note "$CRIU_SRC"

step "runc"
RUNC_BIN=$(command -v runc || true)
[ -n "$RUNC_BIN" ] && [ -x "$RUNC_BIN" ] || die "runc is not installed (package runc)"
RUNC_VERSION=$("$RUNC_BIN" --version | awk '/^runc version/ {print $3}')
[ -n "$RUNC_VERSION" ] || die "$RUNC_BIN --version says no version"
note "using $RUNC_BIN ($RUNC_VERSION); haul always gives it --criu $CRIU_BIN"

step "record choices in $ETC/install.toml"
mkdir -p "$ETC"
cat > "$ETC/install.toml.new" <<TOML
# Written by haul's deploy/install.sh; haul reads it to find CRIU and runc.
[criu]
path = "$CRIU_BIN"
version = "$CRIU_VERSION"
source = "$CRIU_SRC"

[runc]
path = "$RUNC_BIN"
version = "$RUNC_VERSION"
TOML
mv "$ETC/install.toml.new" "$ETC/install.toml"

# ---------------------------------------------------------------- Python
step "virtualenv $VENV"
PY=${HAUL_PYTHON:-python3}
if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv "$VENV"
fi
stamp="$VENV/.haul-installed"
if [ ! -f "$stamp" ] || [ "$REPO/pyproject.toml" -nt "$stamp" ]; then
    "$VENV/bin/python" -m pip install -q --upgrade pip
    "$VENV/bin/python" -m pip install -q -e "$REPO[test]"
    touch "$stamp"
else
    note "haul and its test extra already installed"
fi
"$VENV/bin/haul" --version >/dev/null || die "haul does not start from $VENV"
step "done: $VENV/bin/haul"
