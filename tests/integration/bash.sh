#!/bin/bash
# Integration workload: bash itself (loops, indexed and associative arrays,
# string operations, subshells, command substitution, pipes, recursion).
# "setup": nothing; "run": deterministic output on stdout.
# No pipefail: "| head" may end a producer early with SIGPIPE, by design.
set -eu
[[ "${1:-}" == run ]] || exit 0

# Indexed array: grow, slice, delete, sum.
arr=()
for ((i = 0; i < 30000; i++)); do arr+=($(((i * 7919) % 10007))); done
sum=0
for v in "${arr[@]}"; do sum=$((sum + v)); done
echo "array: n=${#arr[@]} sum=$sum slice=${arr[*]:100:5}"
for ((i = 0; i < 30000; i += 3)); do unset 'arr[i]'; done
echo "array after unset: n=${#arr[@]} first=${arr[*]:0:4}"

# Associative array: word counts.
declare -A count=()
words=(alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu)
for ((i = 0; i < 20000; i++)); do
  w=${words[i % 12]}$((i % 97))
  count[$w]=$((${count[$w]:-0} + 1))
done
keys=$(printf '%s\n' "${!count[@]}" | LC_ALL=C sort | head -n 5 | tr '\n' ' ')
echo "assoc: keys=${#count[@]} first=$keys alpha0=${count[alpha0]}"
for k in "${!count[@]}"; do [[ $k == *7 ]] && unset "count[$k]"; done
echo "assoc after unset: keys=${#count[@]}"

# String operations.
s=""
for ((i = 0; i < 5000; i++)); do s+="item$i,"; done
echo "string: len=${#s}"
t=${s//item/X}
echo "replace: len=${#t} head=${t:0:30}"
u=${s^^}
echo "upper: ${u:0:24} lower: ${u,,}" | cut -c1-60
printf -v padded '%08d|%-6s|%x' 4242 ab 65535
echo "printf: $padded"
IFS=, read -r -a parts <<<"$s"
echo "split: ${#parts[@]} last=${parts[-1]}"
trimmed=${s%%,item2*}
echo "strip: ${#trimmed} ${s##*,item49}"
big=$(printf 'line %d\n' $(seq 1 20000))
echo "cmdsubst: $(wc -l <<<"$big") lines, $(wc -c <<<"$big") bytes"

# Subshells and pipes.
total=0
for ((i = 0; i < 60; i++)); do
  r=$( (echo $((i * i)); echo $((i + 1))) | paste -sd+)
  total=$((total + r))
done
echo "subshells: $total"
seq 1 50000 | awk '{ print $1 % 1000 }' | sort -n | uniq -c | sort -k1,1nr -k2,2n | head -n 3 | tr -s ' '
echo "pipe: $(yes abcdefghij | head -n 100000 | tr 'a-j' 'A-J' | sort -u)"
mapfile -t lines < <(for ((i = 0; i < 3000; i++)); do echo "l$((i % 300))"; done | sort -u)
echo "mapfile: ${#lines[@]}"

# Recursion and function locals.
fib() {
  local n=$1
  if ((n < 2)); then echo "$n"; return; fi
  echo $(($(fib $((n - 1))) + $(fib $((n - 2)))))
}
echo "fib: $(fib 11)"
deep() { local -a a=("$@"); if (($# < 300)); then deep "$@" "$#"; else echo "deep: ${#a[@]}"; fi; }
deep x

# Background jobs.
for ((i = 0; i < 20; i++)); do (sleep 0.0$((i % 5)); echo "job$i") >"job$i.txt" & done
wait
cat job*.txt | sort -V | tr '\n' ' '
echo
