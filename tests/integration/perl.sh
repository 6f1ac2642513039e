#!/bin/bash
# Integration workload: perl (perl_workload.pl: hashes, regexes, sort).
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
case ${1:-} in
setup) command -v perl >/dev/null || { echo "missing: perl" >&2; exit 77; } ;;
run) perl "$here/perl_workload.pl" ;;
esac
