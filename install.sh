#!/usr/bin/env bash
# Installs phi_jax on this machine: bubblewrap (the evaluation sandbox, a system package) when
# missing, then the package with the given pip extras, into python3's environment.
#   bash install.sh          # the main job: corpus, training, evaluation  (extras data,eval)
#   bash install.sh test     # everything the tests need                   (extras test)
# Where python3 goes: the active virtual environment if there is one; else, on an externally
# managed Python (PEP 668: Debian/Ubuntu's system python3, TPU VM images), pip may not install
# there, so this makes .venv here, installs into it and stops, printing the command to continue
# (a script cannot activate a venv in the caller's shell); else python3 itself, as pip does.
set -euo pipefail
caller_dir="$PWD"
cd "$(dirname "$0")"
extras="${1:-data,eval}"
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi

apt_install() {
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "$@" >/dev/null
}

if ! command -v bwrap >/dev/null 2>&1; then
  echo "install.sh: installing bubblewrap for the evaluation sandbox" >&2
  apt_install bubblewrap
fi

pip_install() {  # $1: the python to install into
  PIP_DISABLE_PIP_VERSION_CHECK=1 "$1" -m pip install -q -e ".[${extras}]"
}

# python3's own answer, not $VIRTUAL_ENV: the next command of the README line runs that python3.
in_venv=$(python3 -c 'import sys; print(int(sys.prefix != sys.base_prefix))')
managed=$(python3 -c 'import os, sysconfig
print(int(os.path.isfile(os.path.join(sysconfig.get_path("stdlib"), "EXTERNALLY-MANAGED"))))')
if [ "$in_venv" = 1 ] || [ "$managed" = 0 ]; then
  pip_install python3
  exit 0
fi

# Externally managed python3 and no venv active: install into .venv (git-ignored).
echo "install.sh: $(command -v python3) is externally managed (PEP 668) and no virtual" \
     "environment is active; installing into $PWD/.venv" >&2
pyver=$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
  # Debian/Ubuntu ship venv's pip bootstrap (ensurepip) in a separate package.
  if command -v apt-get >/dev/null 2>&1; then
    echo "install.sh: installing python${pyver}-venv (python3 -m venv needs it)" >&2
    apt_install "python${pyver}-venv" || true
  fi
  if ! python3 -c 'import ensurepip, venv' 2>/dev/null; then
    echo "install.sh: python3 cannot make a virtual environment (no ensurepip); install it with:" >&2
    echo "${sudo:+sudo }apt-get install -y python${pyver}-venv" >&2
    exit 1
  fi
fi
# --clear remakes a .venv left without pip by an earlier failed attempt.
if ! .venv/bin/python3 -m pip --version >/dev/null 2>&1; then
  python3 -m venv --clear .venv
fi
pip_install .venv/bin/python3
# The command to continue: activate, then the README line that starts with this very install.sh
# call (so it cannot drift from the README), from the repository root as the README runs it.
cd_root=""
if [ "$caller_dir" != "$PWD" ]; then cd_root="cd $(printf %q "$PWD") && "; fi
call="bash install.sh${*:+ $*}"
line=$(awk '/^```bash$/ {f = 1; next} f && /^```/ {exit} f' README.md |
       awk -v c="$call &&" 'index($0, c) == 1 {print; exit}')
echo "install.sh: installed into $PWD/.venv. Activate it and run your command again" \
     "(install.sh then finds everything installed):" >&2
echo "${cd_root}source .venv/bin/activate && ${line:-$call && <your command>}" >&2
exit 1
