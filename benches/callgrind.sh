#!/usr/bin/env bash
# Instructions per operation of a bench whose measured loops are Callgrind
# dumps of their own (`cqrs_benches::window`): `allocations`, `dynamodb_cpu`.
#
#   benches/callgrind.sh BENCH [N1] [N2]      (defaults: 200 and 1000)
#
# Runs the bench twice under `valgrind --tool=callgrind`, with
# CQRS_BENCH_ITERATIONS=N1 and =N2 (CQRS_BENCH_REPS=1), and prints for each
# measured loop (each dump label) the instructions (Ir) of the N2 run divided
# by N2, and the difference of the two runs divided by N2 - N1: what one more
# operation costs, without the constant part of a loop (the clock and counter
# reads around it, one-off work). Valgrind runs one thread at a time and
# counts every thread's instructions. The dump files stay in a temporary
# directory, printed at the end (`callgrind_annotate FILE` shows where the
# instructions go).
set -euo pipefail

bench="${1:?usage: benches/callgrind.sh BENCH [N1] [N2]}"
n1="${2:-200}"
n2="${3:-1000}"
cd "$(dirname "$0")/.."

exe=$(cargo bench -p cqrs-benches --bench "$bench" --no-run -j1 2>&1 |
  sed -n 's/.*Executable .*(\(.*\))$/\1/p' | tail -n 1)
[ -x "$exe" ] || { echo "no executable for bench $bench" >&2; exit 1; }

dir=$(mktemp -d "${TMPDIR:-/tmp}/callgrind-$bench.XXXXXX")
for n in "$n1" "$n2"; do
  echo "callgrind: $bench with $n operations per loop" >&2
  CQRS_BENCH_ITERATIONS="$n" CQRS_BENCH_REPS=1 \
    valgrind --tool=callgrind --callgrind-out-file="$dir/$n.out" "$exe" \
    >"$dir/$n.stdout" 2>"$dir/$n.stderr"
done

# label<TAB>Ir of each client-request dump of one run, in the order of the
# dumps (not `setup` and `record`).
totals() {
  local i=1
  while [ -f "$dir/$1.out.$i" ]; do
    label=$(sed -n 's/^desc: Trigger: Client Request: //p' "$dir/$1.out.$i")
    ir=$(sed -n 's/^summary: //p' "$dir/$1.out.$i")
    case "$label" in setup | record | "") ;; *) printf '%s\t%s\n' "$label" "$ir" ;; esac
    i=$((i + 1))
  done
}

echo
echo "| loop | Ir / op, N = $n2 | Ir / op, (Ir(N = $n2) - Ir(N = $n1)) / $((n2 - n1)) |"
echo "|---|---|---|"
awk -F '\t' -v n1="$n1" -v n2="$n2" '
  NR == FNR { small[$1] = $2; next }
  { printf "| %s | %.0f | %.0f |\n", $1, $2 / n2, ($2 - small[$1]) / (n2 - n1) }
' <(totals "$n1") <(totals "$n2")
echo
echo "Callgrind files: $dir" >&2
