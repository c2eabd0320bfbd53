#!/usr/bin/env bash
# Install everything haul needs on a Debian 12 or 13 machine, as root:
# system packages, a CRIU >= 4.1 that passes `criu check`, CRIU's source tree
# (kept for ZDTM test programs), and a virtualenv with haul and its test extra.
#
# Idempotent: each step checks first and does nothing when its result is there.
# Usage: deploy/install.sh            (from a clone of haul)
# Environment:
#   HAUL_CRIU_VERSION   Debian source version to build when needed (default 4.1.1-1)
#   HAUL_VENV           virtualenv path (default: .venv in the clone)
set -euo pipefail

CRIU_DEB_VERSION=${HAUL_CRIU_VERSION:-4.1.1-1}
CRIU_UPSTREAM=${CRIU_DEB_VERSION%-*}
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
RUNTIME_PKGS=(iproute2 nftables runc iputils-arping iputils-ping haproxy openssh-server
              python3-venv util-linux procps ca-certificates)
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

fetch_criu_source() {  # the orig tarball from Debian 13's source package
    local dir=$1 tmp
    tmp=$(mktemp -d)
    mkdir -p "$tmp/lists/partial" "$tmp/cache/archives/partial"
    echo "deb-src $MIRROR trixie main" > "$tmp/sources.list"
    local opts=(-o "Dir::Etc::SourceList=$tmp/sources.list"
                -o "Dir::Etc::SourceParts=/dev/null"
                -o "Dir::State::Lists=$tmp/lists"
                -o "Dir::Cache=$tmp/cache"
                -o "APT::Sandbox::User=root")
    note "fetching criu_${CRIU_UPSTREAM}.orig.tar.gz (Debian source $CRIU_DEB_VERSION)"
    apt-get "${opts[@]}" update -qq
    (cd "$tmp" && apt-get "${opts[@]}" source --download-only -qq "criu=$CRIU_DEB_VERSION" \
        >/dev/null 2>&1) || true
    local orig
    orig=$(ls "$tmp"/criu_"$CRIU_UPSTREAM".orig.tar.* 2>/dev/null | head -n1)
    [ -n "$orig" ] || die "could not fetch CRIU $CRIU_DEB_VERSION source from $MIRROR (trixie)"
    mkdir -p "$SRC_ROOT"
    tar -C "$SRC_ROOT" -xf "$orig"
    [ -d "$dir" ] || die "unpacked CRIU source is not at $dir"
    rm -rf "$tmp"
}

step "CRIU >= $CRIU_MIN"
CRIU_SRC=$SRC_ROOT/criu-$CRIU_UPSTREAM
CRIU_BIN=""
if criu_ok /usr/sbin/criu; then
    CRIU_BIN=/usr/sbin/criu
    note "the distribution's CRIU works: $CRIU_BIN"
elif criu_ok $PREFIX/sbin/criu; then
    CRIU_BIN=$PREFIX/sbin/criu
    note "already built: $CRIU_BIN"
else
    [ -e /usr/sbin/criu ] && note "/usr/sbin/criu is unusable here (too old or 'criu check' fails); building $CRIU_UPSTREAM"
    [ -d "$CRIU_SRC" ] || fetch_criu_source "$CRIU_SRC"
    note "building in $CRIU_SRC"
    make -C "$CRIU_SRC" -j"$(nproc)" criu >"$CRIU_SRC/haul-build.log" 2>&1 \
        || { tail -n 30 "$CRIU_SRC/haul-build.log" >&2; die "CRIU build failed (log: $CRIU_SRC/haul-build.log)"; }
    install -m 0755 "$CRIU_SRC/criu/criu" $PREFIX/sbin/criu
    CRIU_BIN=$PREFIX/sbin/criu
    criu_ok "$CRIU_BIN" || { "$CRIU_BIN" check || true; die "built CRIU fails 'criu check'"; }
fi
CRIU_VERSION=$("$CRIU_BIN" --version | awk '/^Version:/ {print $2}')
note "using $CRIU_BIN ($CRIU_VERSION)"

# runc and anything else that finds `criu` on PATH must get this one.
if [ "$CRIU_BIN" = "$PREFIX/sbin/criu" ] && [ -e /usr/sbin/criu ]; then
    note "an older /usr/sbin/criu exists; haul passes --criu $CRIU_BIN to runc and never uses it"
fi

step "CRIU source tree (for ZDTM test programs)"
if [ ! -d "$CRIU_SRC" ]; then
    fetch_criu_source "$CRIU_SRC"
fi
note "$CRIU_SRC"

step "record choices in $ETC/install.toml"
mkdir -p "$ETC"
cat > "$ETC/install.toml.new" <<TOML
# Written by haul's deploy/install.sh; haul reads it to find CRIU.
[criu]
path = "$CRIU_BIN"
version = "$CRIU_VERSION"
source = "$CRIU_SRC"
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
