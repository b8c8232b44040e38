#!/usr/bin/env bash
# Download the wheels `make gpu-check` installs on a GPU box without a package index, into
# .gpu-wheels/.
#
# Such a box has its own python3 (3.12 by default here) with torch, numpy, packaging, cloudpickle,
# typing-extensions, pyyaml, zipp... (see docs/gpu.md). What this project needs beyond those is
# listed below, pinned, and fetched with --no-deps for that Python and x86-64 Linux; antlr4-python3-runtime has no wheel on PyPI (an
# sdist only), so it is built here (pure Python). If a python of that version is found here, the
# wheels are installed with --no-deps into a throwaway venv and `pip check` proves the list is
# complete (the only missing requirements allowed are the machine's own packages).
#
#   scripts/gpu_wheels.sh                 # Python 3.12
#   PYTHON_VERSION=3.11 scripts/gpu_wheels.sh
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON_VERSION="${PYTHON_VERSION:-3.12}"
TORCH_VERSION="${TORCH_VERSION:-2.11}"   # the machine's torch: not downloaded, only checked against
DEST="${DEST:-.gpu-wheels}"
PIP="${PIP:-python3 -m pip}"
# The machine's own packages that the wheels below require (not downloaded).
ON_MACHINE="torch numpy packaging cloudpickle typing-extensions pyyaml zipp"
WHEELS=(
  torchrl==0.14.1
  tensordict==0.14.3
  hoptorch==0.1.4
  pyvers==0.2.3
  orjson==3.13.0
  importlib-metadata==10.2.0
  lazy-importer==0.1.0
  gymnasium==1.4.0
  farama-notifications==0.0.6
  ale-py==0.12.1
  hydra-core==1.3.8
  omegaconf==2.3.1
)
SDISTS=(antlr4-python3-runtime==4.9.3)

rm -rf "$DEST" && mkdir -p "$DEST"
platforms=()
for p in manylinux_2_39_x86_64 manylinux_2_35_x86_64 manylinux_2_34_x86_64 manylinux_2_31_x86_64 \
  manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 \
  manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
$PIP download -q --no-deps --only-binary=:all: --python-version "$PYTHON_VERSION" \
  --implementation cp "${platforms[@]}" -d "$DEST" "${WHEELS[@]}"
$PIP wheel -q --no-deps -w "$DEST" "${SDISTS[@]}"

count=$(ls "$DEST"/*.whl | wc -l)
expected=$(( ${#WHEELS[@]} + ${#SDISTS[@]} ))
if [ "$count" -ne "$expected" ]; then
  echo "expected $expected wheels in $DEST, got $count:" >&2; ls "$DEST" >&2; exit 1
fi

# Completeness: install them alone into a throwaway venv of that Python, then pip check.
py=""
for cand in "python$PYTHON_VERSION" "$(command -v pyenv >/dev/null && pyenv root)/versions/$PYTHON_VERSION"*/bin/python; do
  if [ -x "$(command -v "$cand" 2>/dev/null || echo "$cand")" ] && "$cand" -c 'import sys' 2>/dev/null; then
    py="$cand"; break
  fi
done
if [ -n "$py" ]; then
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  "$py" -m venv "$tmp/venv"
  "$tmp/venv/bin/python" -m pip install -q --no-index --no-deps "$DEST"/*.whl
  missing=$( ("$tmp/venv/bin/python" -m pip check 2>&1 || true) | sed -n 's/.* requires \([^,]*\), which is not installed\./\1/p' | tr 'A-Z_' 'a-z-' | sort -u)
  bad=""
  for m in $missing; do
    case " $ON_MACHINE " in *" $m "*) ;; *) bad="$bad $m" ;; esac
  done
  if [ -n "$bad" ]; then
    echo "incomplete: the wheels require$bad, neither downloaded nor on the GPU machine" >&2; exit 1
  fi
  echo "complete: $("$py" --version) venv, pip check misses only the machine's own: $(echo $missing)"
else
  echo "no python$PYTHON_VERSION here: completeness not checked by installing (see docs/gpu.md)"
fi
echo "torch on the machine: $TORCH_VERSION (not downloaded; torchrl's C++ extension is not used there)"
du -sh "$DEST" | awk '{print "'"$DEST"': " $1 " in '"$count"' wheels"}'
