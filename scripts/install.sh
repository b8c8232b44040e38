#!/usr/bin/env bash
# Create (or update) the project's virtual environment and install torchrl_rise into it.
#
#   scripts/install.sh [EXTRAS]      e.g. scripts/install.sh dev,vizdoom,miniworld,procgen
#
# Idempotent: re-running with the same pyproject.toml and extras does nothing. The `procgen` extra
# also installs procgen-mirror, gym3 and gym with --no-deps, because their metadata pins numpy<2 and
# gym3's pins (cffi<2, glfw<2, ...) conflict with the rest of the stack although they run fine on it.
# The `memorygym` extra installs memory-gym with --no-deps likewise: it pins gymnasium==0.29 and
# pygame==2.4, and runs on gymnasium 1.x and pygame 2.6 (tests/test_envs_memorygym.py).
set -euo pipefail

extras="${1:-}"
venv="${VENV:-.venv}"
python="${PYTHON:-python3}"
cd "$(dirname "$0")/.."

if [ ! -x "$venv/bin/python" ]; then
  "$python" -m venv "$venv"
fi
stamp="$venv/.torchrl_rise-installed"
want="$(cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16) extras=$extras"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  exit 0
fi

pip=("$venv/bin/python" -m pip install --disable-pip-version-check -qq)
spec="."
if [ -n "$extras" ]; then spec=".[$extras]"; fi
echo "installing torchrl_rise${extras:+ with extras [$extras]} into $venv (first time: a few minutes, ~6 GB)" >&2
"${pip[@]}" -e "$spec"
case ",$extras," in
  *,procgen,*) "${pip[@]}" --no-deps "procgen-mirror==0.10.7" "gym3==0.3.3" "gym==0.26.2" ;;
esac
case ",$extras," in
  *,memorygym,*) "${pip[@]}" --no-deps "memory-gym==1.0.2" ;;
esac
echo "$want" > "$stamp"
