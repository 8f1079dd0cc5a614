#!/usr/bin/env bash
# Provision a freshly flashed Jetson (JetPack 6.x, Orin Nano / Orin NX / AGX Orin) as an edgekit
# inspection station. Idempotent: every step checks the current state first, so running it again
# only does what is missing. See docs/deploy-jetson.md for the whole procedure.
#
#   sudo firmware_scripts/provision.sh [options]
#
# Options:
#   --dry-run            print every step (and what is already done) without changing anything
#   --source PATH        what pip installs as edgekit: a source checkout or a wheel (default: this repo)
#   --config FILE        install FILE as /etc/edgekit/config.yaml (only if none exists yet)
#   --power-mode N       nvpmodel mode id (default 0; see "Power mode" in docs/deploy-jetson.md)
#   --no-lock-clocks     do not run jetson_clocks at boot
#   --ort-wheel PATH     onnxruntime-gpu wheel for this JetPack (replaces pip's CPU-only onnxruntime)
#   --user NAME          service user (default edgekit)
#   --start              start edgekit.service at the end (needs a config and a bundle)
#   --force              continue on a machine that is not a Jetson / not JetPack 6
#   -h, --help           this help
set -euo pipefail

ORIG_ARGS=("$@")
SCRIPT_DIR=$(cd -- "$(dirname -- "${BASH_SOURCE[0]}")" && pwd)
REPO_DIR=$(cd -- "${SCRIPT_DIR}/.." && pwd)

DRY_RUN=0
FORCE=0
START=0
LOCK_CLOCKS=1
POWER_MODE=0
SERVICE_USER=edgekit
SOURCE="${REPO_DIR}"
CONFIG=""
ORT_WHEEL=""

PREFIX=/opt/edgekit
VENV="${PREFIX}/venv"
STATE_DIR=/var/lib/edgekit
CONF_DIR=/etc/edgekit
LOG_DIR=/var/log/edgekit
SYSTEMD_DIR=/etc/systemd/system
UDEV_DIR=/etc/udev/rules.d
LOGROTATE_DIR=/etc/logrotate.d
JOURNALD_DIR=/etc/systemd/journald.conf.d

# Ubuntu 22.04 (JetPack 6) packages. gpiod: the CLI tools (gpiodetect/gpioinfo) for wiring checks;
# the Python bindings come from pip (gpiod>=2.1 builds libgpiod v2 itself, hence python3-dev/gcc).
APT_PACKAGES=(
  python3-venv python3-pip python3-dev build-essential
  gpiod v4l-utils logrotate
  gstreamer1.0-tools gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad
)
# From NVIDIA's JetPack apt repository (present on a flashed Jetson): TensorRT with its Python
# bindings and NVIDIA's OpenCV build (with GStreamer). Installed only if apt knows them.
JETPACK_PACKAGES=(nvidia-tensorrt python3-libnvinfer nvidia-opencv)

usage() { sed -n '2,/^set -euo/{/^set -euo/d;s/^# \{0,1\}//;p}' "${BASH_SOURCE[0]}"; }

while (($# > 0)); do
  case "$1" in
    --dry-run) DRY_RUN=1 ;;
    --source) SOURCE="$2"; shift ;;
    --config) CONFIG="$2"; shift ;;
    --power-mode) POWER_MODE="$2"; shift ;;
    --no-lock-clocks) LOCK_CLOCKS=0 ;;
    --ort-wheel) ORT_WHEEL="$2"; shift ;;
    --user) SERVICE_USER="$2"; shift ;;
    --start) START=1 ;;
    --force) FORCE=1 ;;
    -h | --help) usage; exit 0 ;;
    *) echo "provision.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done

# ----------------------------------------------------------------------------- helpers
step() { printf '\n==> %s\n' "$*"; }
note() { printf '    %s\n' "$*"; }
die() { printf 'provision.sh: %s\n' "$*" >&2; exit 1; }

# CUDA major version of the installed toolkit (JetPack: /usr/local/cuda/version.json), 12 when
# it cannot be read (JetPack 6.x ships CUDA 12.2 or 12.6).
cuda_major_version() {
  local f=/usr/local/cuda/version.json v=""
  if [[ -r "${f}" ]]; then
    v="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["cuda"]["version"].split(".")[0])' "${f}" 2>/dev/null || true)"
  fi
  [[ "${v}" =~ ^[0-9]+$ ]] || v=12
  printf '%s\n' "${v}"
}

# Print a command, then run it unless --dry-run.
run() {
  local shown="" arg special='[[:space:]<>|;&()*?]'  # shell-quoted when shown, so the line can be pasted
  for arg in "$@"; do
    if [[ "${arg}" =~ ${special} ]]; then shown+="'${arg}' "; else shown+="${arg} "; fi
  done
  printf '    + %s\n' "${shown% }"
  if ((DRY_RUN == 0)); then
    "$@"
  fi
}

# Install a file only if it differs from what is there (keeps reruns quiet and mtimes stable).
install_file() {
  local src="$1" dst="$2" mode="$3"
  [[ -f "${src}" ]] || die "missing ${src} (run from a complete edgekit checkout)"
  if [[ -f "${dst}" ]] && cmp -s "${src}" "${dst}"; then
    note "${dst}: up to date"
    return 0
  fi
  run install -D -m "${mode}" "${src}" "${dst}"
}

pkg_installed() { dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed"; }
pkg_known() { [[ "$(apt-cache policy "$1" 2>/dev/null | awk '/Candidate:/ {print $2}')" =~ ^[0-9] ]]; }

IS_JETSON=0
L4T_RELEASE=""

# ----------------------------------------------------------------------------- steps
preflight() {
  step "Preflight: platform and permissions"
  if [[ -r /etc/nv_tegra_release ]]; then
    # "# R36 (release), REVISION: 4.0, ..." -> 36.4.0 ; L4T R36 = JetPack 6.x
    L4T_RELEASE=$(sed -n 's/^# R\([0-9]*\) (release), REVISION: \([0-9.]*\).*/\1.\2/p' /etc/nv_tegra_release | head -n 1)
    IS_JETSON=1
    local model=""
    [[ -r /proc/device-tree/model ]] && model=$(tr -d '\0' </proc/device-tree/model)
    note "Jetson: ${model:-unknown model}, L4T ${L4T_RELEASE:-unknown}"
    if [[ "${L4T_RELEASE%%.*}" != "36" ]]; then
      if ((FORCE == 0 && DRY_RUN == 0)); then
        die "L4T ${L4T_RELEASE:-?} is not JetPack 6 (L4T 36.x); reflash with JetPack 6 or pass --force"
      fi
      note "WARNING: L4T ${L4T_RELEASE:-?} is not JetPack 6 (L4T 36.x); steps below assume JetPack 6"
    fi
  else
    if ((DRY_RUN == 1)); then
      note "not a Jetson (no /etc/nv_tegra_release): dry run, printing the plan only"
    elif ((FORCE == 0)); then
      die "not a Jetson (no /etc/nv_tegra_release); pass --force to provision a development machine"
    else
      note "not a Jetson: --force given, Jetson-only steps are skipped"
    fi
  fi
  if [[ ${EUID} -ne 0 ]]; then
    ((DRY_RUN == 1)) || die "run as root: sudo $0 ${ORIG_ARGS[*]:-}"
    note "not root: fine for --dry-run; the real run needs sudo"
  fi
  [[ -e "${SOURCE}" ]] || die "--source ${SOURCE} does not exist"
  if [[ -n "${CONFIG}" && ! -f "${CONFIG}" ]]; then die "--config ${CONFIG} does not exist"; fi
  if [[ -n "${ORT_WHEEL}" && ! -f "${ORT_WHEEL}" ]]; then die "--ort-wheel ${ORT_WHEEL} does not exist"; fi
  [[ "${POWER_MODE}" =~ ^[0-9]+$ ]] || die "--power-mode must be a number (see nvpmodel -q --verbose)"
}

install_packages() {
  step "APT packages"
  local missing=() pkg
  for pkg in "${APT_PACKAGES[@]}"; do
    pkg_installed "${pkg}" || missing+=("${pkg}")
  done
  for pkg in "${JETPACK_PACKAGES[@]}"; do
    pkg_installed "${pkg}" && continue
    if ((IS_JETSON == 1)) && pkg_known "${pkg}"; then
      missing+=("${pkg}")
    else
      note "${pkg}: not in this machine's apt sources (comes from the JetPack repository on a Jetson)"
    fi
  done
  if ((${#missing[@]} == 0)); then
    note "all packages installed"
    return 0
  fi
  run apt-get update
  run env DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "${missing[@]}"
}

create_user() {
  step "Service user ${SERVICE_USER} (groups gpio, video, render)"
  if ! getent group gpio >/dev/null; then
    run groupadd --system gpio
  else
    note "group gpio exists"
  fi
  if ! id -u "${SERVICE_USER}" >/dev/null 2>&1; then
    run useradd --system --user-group --home-dir "${STATE_DIR}" --no-create-home \
      --shell /usr/sbin/nologin --comment "edgekit inspection daemon" "${SERVICE_USER}"
  else
    note "user ${SERVICE_USER} exists"
  fi
  local group
  for group in gpio video render; do
    if ! getent group "${group}" >/dev/null && [[ "${group}" != gpio ]]; then
      note "group ${group} does not exist here: skipped"
      continue
    fi
    if id -nG "${SERVICE_USER}" 2>/dev/null | tr ' ' '\n' | grep -qx "${group}"; then
      note "${SERVICE_USER} already in ${group}"
    else
      run usermod -aG "${group}" "${SERVICE_USER}"
    fi
  done
}

create_dirs() {
  step "Directories"
  run install -d -m 0755 "${PREFIX}"
  run install -d -o root -g "${SERVICE_USER}" -m 0750 "${CONF_DIR}"
  run install -d -o "${SERVICE_USER}" -g "${SERVICE_USER}" -m 0750 \
    "${STATE_DIR}" "${STATE_DIR}/bundles" "${STATE_DIR}/archive" "${LOG_DIR}"
}

create_venv() {
  step "Python venv ${VENV} (sees JetPack's TensorRT and OpenCV via --system-site-packages)"
  if [[ -x "${VENV}/bin/python" ]] && grep -qi '^include-system-site-packages *= *true' "${VENV}/pyvenv.cfg"; then
    note "venv exists"
  else
    if [[ -e "${VENV}" ]]; then
      note "existing ${VENV} lacks system site packages: recreating it"
      run rm -rf "${VENV}"
    fi
    run /usr/bin/python3 -m venv --system-site-packages "${VENV}"
  fi
  run "${VENV}/bin/pip" install --upgrade pip wheel
  # cuda-python must match the CUDA major of JetPack's driver: pip's newest (13) needs a CUDA 13
  # driver (>= 580) and fails on JetPack 6 (CUDA 12.6) with cudaErrorInsufficientDriver.
  local cuda_major
  cuda_major="$(cuda_major_version)"
  note "CUDA ${cuda_major}.x on this device: cuda-python>=${cuda_major},<$((cuda_major + 1))"
  # A checkout directory or a wheel file; pip accepts extras on both ([jetson] pins cuda-python<13).
  run "${VENV}/bin/pip" install "${SOURCE}[jetson,plc]" "cuda-python>=${cuda_major},<$((cuda_major + 1))"
  if [[ -n "${ORT_WHEEL}" ]]; then
    # Both wheels provide the `onnxruntime` module; keep only the CUDA/TensorRT one.
    run "${VENV}/bin/pip" uninstall -y onnxruntime
    run "${VENV}/bin/pip" install "${ORT_WHEEL}"
  else
    note "no --ort-wheel: onnxruntime stays CPU-only (fine with backend tensorrt)"
  fi
  # pip's opencv-python-headless (a dependency of edgekit) has no GStreamer and would shadow
  # JetPack's OpenCV inside the venv; drop it when the system one is usable.
  if /usr/bin/python3 -c 'import cv2, sys; sys.exit("GStreamer:                   YES" not in cv2.getBuildInformation())' 2>/dev/null; then
    run "${VENV}/bin/pip" uninstall -y opencv-python-headless opencv-python
  else
    note "no system OpenCV with GStreamer (JetPack's nvidia-opencv): keeping pip's OpenCV (V4L2 cameras only)"
  fi
}

power_mode() {
  step "Power mode and clocks (nvpmodel ${POWER_MODE}, jetson_clocks at boot: $([[ ${LOCK_CLOCKS} == 1 ]] && echo yes || echo no))"
  if command -v nvpmodel >/dev/null 2>&1; then
    local current
    current=$(nvpmodel -q 2>/dev/null | awk 'NR==2 {print $1}')
    if [[ "${current}" == "${POWER_MODE}" ]]; then
      note "nvpmodel already in mode ${POWER_MODE}"
    else
      # nvpmodel persists the mode across reboots; some mode changes only apply after one.
      run nvpmodel -m "${POWER_MODE}"
      note "if nvpmodel says a reboot is needed, reboot after provisioning"
    fi
  else
    note "nvpmodel not found (not a Jetson): would run: nvpmodel -m ${POWER_MODE}"
  fi
  if ((LOCK_CLOCKS == 1)); then
    install_file "${SCRIPT_DIR}/edgekit-clocks.service" "${SYSTEMD_DIR}/edgekit-clocks.service" 0644
  else
    note "--no-lock-clocks: DVFS stays on (lower power, less predictable latency)"
  fi
}

install_system_files() {
  step "systemd unit, udev rules, log rotation"
  install_file "${SCRIPT_DIR}/edgekit.service" "${SYSTEMD_DIR}/edgekit.service" 0644
  install_file "${SCRIPT_DIR}/99-edgekit-gpio.rules" "${UDEV_DIR}/99-edgekit-gpio.rules" 0644
  install_file "${SCRIPT_DIR}/edgekit.logrotate" "${LOGROTATE_DIR}/edgekit" 0644
  install_file "${SCRIPT_DIR}/journald-edgekit.conf" "${JOURNALD_DIR}/edgekit.conf" 0644
  install_file "${REPO_DIR}/docs/deploy-jetson.md" "${PREFIX}/docs/deploy-jetson.md" 0644
  install_file "${REPO_DIR}/docs/plc.md" "${PREFIX}/docs/plc.md" 0644
  install_file "${SCRIPT_DIR}/install-bundle.sh" "${PREFIX}/bin/install-bundle.sh" 0755
  local pinmap
  for pinmap in "${SCRIPT_DIR}"/pinmap/*.yaml; do
    install_file "${pinmap}" "${PREFIX}/pinmap/$(basename "${pinmap}")" 0644
  done
  if [[ -n "${CONFIG}" ]]; then
    if [[ -f "${CONF_DIR}/config.yaml" ]]; then
      note "${CONF_DIR}/config.yaml exists: not overwritten (edit it or remove it first)"
    else
      run install -o root -g "${SERVICE_USER}" -m 0640 "${CONFIG}" "${CONF_DIR}/config.yaml"
    fi
  elif [[ ! -f "${CONF_DIR}/config.yaml" ]]; then
    note "no ${CONF_DIR}/config.yaml yet: write one (docs/deploy-jetson.md, step 5) before starting"
  fi
}

reload_services() {
  step "Reload udev, journald and systemd; enable the units"
  run udevadm control --reload-rules
  run udevadm trigger --subsystem-match=gpio --subsystem-match=video4linux
  run systemctl restart systemd-journald
  run systemctl daemon-reload
  if ((LOCK_CLOCKS == 1)); then
    run systemctl enable --now edgekit-clocks.service
  fi
  run systemctl enable edgekit.service
  if ((START == 1)); then
    run systemctl restart edgekit.service
  else
    note "not started (pass --start, or: sudo systemctl start edgekit once config and bundle are in place)"
  fi
}

final_check() {
  step "edgekit doctor as ${SERVICE_USER}"
  local args=()
  [[ -f "${CONF_DIR}/config.yaml" ]] && args+=("${CONF_DIR}/config.yaml")
  if ((DRY_RUN == 1)); then
    printf '    + %s\n' "runuser -u ${SERVICE_USER} -- ${VENV}/bin/edgekit doctor ${args[*]:-}"
    return 0
  fi
  runuser -u "${SERVICE_USER}" -- "${VENV}/bin/edgekit" doctor "${args[@]}" ||
    note "doctor reported failures: fix them (each line says how), then rerun doctor"
}

main() {
  ((DRY_RUN == 1)) && printf 'provision.sh --dry-run: nothing is changed; "+" lines are what a real run executes.\n'
  preflight
  install_packages
  create_user
  create_dirs
  create_venv
  power_mode
  install_system_files
  reload_services
  final_check
  printf '\nprovisioning %s.\n' "$([[ ${DRY_RUN} == 1 ]] && echo "plan printed (dry run)" || echo "done")"
}

main
