#!/bin/bash
# Integration workload: GNU sort (multi-threaded, --parallel=2, 100 MiB
# buffer) over a generated 2M-line file; output hashes are compared.
set -euo pipefail
shared=${MAPALLOC_IT_SHARED:?}
lines=${MAPALLOC_IT_SORT_LINES:-2000000}
case ${1:-} in
setup)
  command -v sort >/dev/null || { echo "missing: sort (coreutils)" >&2; exit 77; }
  awk -v n="$lines" 'BEGIN {
    s = 1;
    split("alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi", w, " ");
    for (i = 0; i < n; i++) {
      s = (s * 69069 + 1) % 4294967296;
      printf "%s%d %d %x %s\n", w[s % 16 + 1], s % 1000, (s / 16) % 100000, s, substr("abcdefghijklmnopqrstuvwxyz", s % 26 + 1, (s / 7) % 20);
    }
  }' >"$shared/input.txt"
  ;;
run)
  export LC_ALL=C TMPDIR=$PWD
  in=$shared/input.txt
  echo "lines: $(wc -l <"$in")"
  sort -S 100M --parallel=2 "$in" >sorted.txt
  echo "plain: $(sha256sum <sorted.txt | cut -d' ' -f1)"
  sort -S 100M --parallel=2 -k2,2n -k3,3n -s "$in" | sha256sum | sed 's/^/numeric keys: /'
  sort -S 100M --parallel=2 -u -k1,1 "$in" | wc -l | sed 's/^/unique first field: /'
  sort -S 100M --parallel=2 -r -t' ' -k4 "$in" | sha256sum | sed 's/^/reverse field 4: /'
  # Small buffer: temporary files and an external merge.
  sort -S 8M --parallel=2 -k3,3n -k4 "$in" | sha256sum | sed 's/^/external merge: /'
  sort -c sorted.txt && echo "check: sorted"
  ;;
esac
