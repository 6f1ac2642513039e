#!/bin/bash
# deepbind.sh <shim> <deepbind program> <loader module> <module>: copies the
# module into a directory that only the loader's DT_RUNPATH names, then runs
# the program under the shim (tests/deepbind.cpp).
set -euo pipefail
shim=$1 prog=$2 loader=$3 module=$4
dir=$(dirname "$loader")/deepbind_module_dir
mkdir -p "$dir"
cp "$module" "$dir/"
LD_PRELOAD=$shim "$prog" "$loader" "$(basename "$module")"
