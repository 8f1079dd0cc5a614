#!/usr/bin/env bash
# Install a new model bundle on a station: verify it, copy it next to the running one, switch the
# `current` symlink atomically, restart the daemon, and roll back if the daemon does not come up.
#
#   sudo install-bundle.sh [options] BUNDLE_DIR
#   sudo install-bundle.sh --rollback
#
# Layout (under the state dir, default /var/lib/edgekit):
#   bundles/<bundle_id>/   one directory per installed bundle (never modified after install)
#   bundles/current        symlink -> <bundle_id>   (what the daemon loads; the unit verifies it first)
#   bundles/previous       symlink -> the bundle before the last switch (for --rollback)
#
# Options:
#   --dry-run        print every step without changing anything
#   --no-restart     switch the symlink but do not restart edgekit.service
#   --keep N         keep the N newest installed bundles besides current/previous (default 3)
#   --config FILE    deploy config whose trust: list applies (default /etc/edgekit/config.yaml, when it
#                    exists): with a trust list, an unsigned bundle or one signed by another key is refused
#   --trust KEY.pub  also trust this public key (repeatable); with any, the bundle must be signed
#   --rollback       point current back at previous and restart
#   -h, --help       this help
# Environment (tests, non-standard installs):
#   EDGEKIT_STATE_DIR  state dir (default /var/lib/edgekit)
#   EDGEKIT_BIN        edgekit executable (default /opt/edgekit/venv/bin/edgekit)
#   EDGEKIT_SERVICE    systemd unit (default edgekit.service)
#   EDGEKIT_USER       owner of installed bundles (default edgekit; skipped if the user does not exist)
#   EDGEKIT_CONFIG     deploy config (default /etc/edgekit/config.yaml), as --config
set -euo pipefail

STATE_DIR="${EDGEKIT_STATE_DIR:-/var/lib/edgekit}"
EDGEKIT="${EDGEKIT_BIN:-/opt/edgekit/venv/bin/edgekit}"
SERVICE="${EDGEKIT_SERVICE:-edgekit.service}"
OWNER="${EDGEKIT_USER:-edgekit}"
CONFIG="${EDGEKIT_CONFIG:-/etc/edgekit/config.yaml}"
BUNDLES="${STATE_DIR}/bundles"

DRY_RUN=0
RESTART=1
KEEP=3
ROLLBACK=0
SRC=""
TRUST=()

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }
die() { printf 'install-bundle.sh: %s\n' "$*" >&2; exit 1; }
step() { printf '==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
run() {
  local shown="" arg
  for arg in "$@"; do
    if [[ "${arg}" =~ [[:space:]] ]]; then shown+="'${arg}' "; else shown+="${arg} "; fi
  done
  printf '    + %s\n' "${shown% }"
  if ((DRY_RUN == 0)); then
    "$@"
  fi
}

while (($# > 0)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --no-restart) RESTART=0 ;;
    --keep) KEEP="$2"; shift ;;
    --config) CONFIG="$2"; shift ;;
    --trust) TRUST+=("$2"); shift ;;
    --rollback) ROLLBACK=1 ;;
    -h | --help) usage; exit 0 ;;
    -*) die "unknown option $1 (see --help)" ;;
    *) [[ -z "${SRC}" ]] || die "one BUNDLE_DIR only"; SRC="$1" ;;
  esac
  shift
done
[[ "${KEEP}" =~ ^[0-9]+$ ]] || die "--keep must be a number"

# What `edgekit verify-bundle` checks besides schema and hashes: the signature, against the trust
# list of the station's config (the one the daemon and the unit's ExecStartPre use) plus --trust keys.
VERIFY_ARGS=()
if [[ -f "${CONFIG}" ]]; then VERIFY_ARGS+=(--config "${CONFIG}"); fi
for key in "${TRUST[@]}"; do VERIFY_ARGS+=(--trust "${key}"); done
verify() { "${EDGEKIT}" verify-bundle "$1" "${VERIFY_ARGS[@]}"; }

# Atomically point symlink $1 at target $2: rename(2) of a fresh symlink replaces the old one in
# one step, so the daemon (or a power cut) never sees a missing or half-written `current`.
swap_link() {
  local link="$1" target="$2" tmp
  tmp="${BUNDLES}/.$(basename "${link}").tmp.$$"
  run ln -sfn "${target}" "${tmp}"
  run mv -T "${tmp}" "${link}"
}

restart_daemon() {
  if ((RESTART == 0)); then
    note "--no-restart: the daemon picks up the new bundle on its next start"
    return 0
  fi
  if ! command -v systemctl >/dev/null 2>&1; then
    note "no systemctl here: restart the daemon yourself"
    return 0
  fi
  # Type=notify: restart returns only once the daemon sent READY=1 (or failed), and
  # ExecStartPre re-verifies the bundle, so the exit status means "running with this bundle".
  run systemctl restart "${SERVICE}"
}

# Installed bundles are read-only (a-w); make them writable again before deleting (non-root runs).
remove_tree() {
  if [[ -e "$1" ]]; then
    run chmod -R u+w -- "$1"
    run rm -rf -- "$1"
  fi
}

link_target() { if [[ -L "$1" ]]; then readlink "$1"; fi; }

rollback() {
  local prev cur
  prev=$(link_target "${BUNDLES}/previous")
  cur=$(link_target "${BUNDLES}/current")
  [[ -n "${prev}" && -d "${BUNDLES}/${prev}" ]] || die "no previous bundle to roll back to"
  step "Rolling back: ${cur:-none} -> ${prev}"
  swap_link "${BUNDLES}/current" "${prev}"
  if [[ -n "${cur}" ]]; then swap_link "${BUNDLES}/previous" "${cur}"; fi
  restart_daemon
}

prune() {
  local cur prev dir name kept=0
  cur=$(link_target "${BUNDLES}/current")
  prev=$(link_target "${BUNDLES}/previous")
  # newest first (install time = directory mtime)
  while IFS= read -r dir; do
    name=$(basename "${dir}")
    [[ "${name}" == "${cur}" || "${name}" == "${prev}" ]] && continue
    kept=$((kept + 1))
    if ((kept > KEEP)); then remove_tree "${dir}"; fi
  done < <(find "${BUNDLES}" -mindepth 1 -maxdepth 1 -type d ! -name '.*' -printf '%T@ %p\n' 2>/dev/null | sort -rn | cut -d' ' -f2-)
}

install_new() {
  [[ -n "${SRC}" ]] || die "usage: install-bundle.sh BUNDLE_DIR (see --help)"
  [[ -d "${SRC}" ]] || die "${SRC}: not a directory"
  [[ -x "${EDGEKIT}" ]] || die "${EDGEKIT} not found: provision the station first (provision.sh) or set EDGEKIT_BIN"
  [[ ${EUID} -eq 0 || ${DRY_RUN} -eq 1 || -w "${STATE_DIR}" ]] || die "run as root (sudo)"

  [[ -f "${SRC}/manifest.json" ]] || die "${SRC}: no manifest.json, not a bundle (build one with edgekit build)"
  local id
  id=$(python3 -c 'import json, sys; print(json.load(open(sys.argv[1])).get("bundle_id", ""))' "${SRC}/manifest.json") ||
    die "${SRC}/manifest.json: unreadable"
  [[ "${id}" =~ ^[A-Za-z0-9._-]+$ ]] || die "${SRC}/manifest.json: bundle_id '${id}' is not a safe directory name"
  local dest="${BUNDLES}/${id}"

  if [[ -d "${dest}" ]] && verify "${dest}" >/dev/null 2>&1; then
    step "Bundle ${id} already installed and intact"
  elif ((DRY_RUN == 1)); then
    step "Verifying ${SRC}"
    verify "${SRC}"
    step "Copying to ${dest}"
    printf '    + %s\n' "install -d -m 0750 ${BUNDLES}" "cp -a -- ${SRC} ${BUNDLES}/.${id}.tmp.$$" \
      "edgekit verify-bundle ${BUNDLES}/.${id}.tmp.$$" "chmod -R a-w,g+rX ${BUNDLES}/.${id}.tmp.$$" \
      "mv -T -- ${BUNDLES}/.${id}.tmp.$$ ${dest}"
  else
    step "Copying ${SRC} to ${dest} and verifying the copy"
    local tmp="${BUNDLES}/.${id}.tmp.$$"
    run install -d -m 0750 "${BUNDLES}"
    remove_tree "${tmp}"
    run cp -a -- "${SRC}" "${tmp}"
    run touch -- "${tmp}"  # mtime = install time (cp -a kept the source's), used by prune
    # Schema, every file's sha256 and (with a trust list) the signature, on the copy itself:
    # catches a tampered, unsigned or incomplete source and a bad copy (disk full) before anything
    # points at it.
    if ! verify "${tmp}"; then
      remove_tree "${tmp}"
      die "${SRC} refused (see above); nothing was changed"
    fi
    if id -u "${OWNER}" >/dev/null 2>&1 && [[ ${EUID} -eq 0 ]]; then
      run chown -R "${OWNER}:${OWNER}" "${tmp}"
    fi
    run chmod -R a-w,g+rX "${tmp}"
    remove_tree "${dest}"
    run mv -T -- "${tmp}" "${dest}"
  fi

  local cur
  cur=$(link_target "${BUNDLES}/current")
  if [[ "${cur}" == "${id}" ]]; then
    step "current already points at ${id}"
    return 0
  fi
  step "Switching current: ${cur:-none} -> ${id}"
  swap_link "${BUNDLES}/current" "${id}"
  if [[ -n "${cur}" ]]; then swap_link "${BUNDLES}/previous" "${cur}"; fi
  if ! restart_daemon; then
    printf 'install-bundle.sh: %s did not come up with %s; rolling back\n' "${SERVICE}" "${id}" >&2
    if [[ -n "${cur}" ]]; then
      swap_link "${BUNDLES}/current" "${cur}"
      restart_daemon || true
    fi
    exit 1
  fi
  step "Pruning old bundles (keeping ${KEEP} besides current/previous)"
  prune
  step "Installed ${id}"
}

((DRY_RUN == 1)) && printf 'install-bundle.sh --dry-run: nothing is changed; "+" lines are what a real run executes.\n'
if ((ROLLBACK == 1)); then
  rollback
else
  install_new
fi
