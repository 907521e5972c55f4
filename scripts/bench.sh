#!/usr/bin/env bash
# make bench: start the bench mesh (profile `bench`: its own PostgreSQL, ports and data, so
# it never disturbs the dev or test mesh), run the benchmark (bench/run.py), and stop the
# bench mesh at the end whatever happens. Extra arguments go to bench/run.py, for example
#   bash scripts/bench.sh --quick          a ~1-minute smoke run
#   bash scripts/bench.sh --profile work --phases pgbench,uniform,hot
#                                          another profile's mesh (started and stopped
#                                          here instead of the bench one), some phases only
# The bench profile's data (.data/bench) is wiped before each run; another profile's is kept.
# Results: bench/results/latest.json, bench/results/bench.png, a Markdown table on stdout.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
export PYTHONPATH="$root:$root/gen/python"
py=.venv/bin/python

# Bad arguments or an over-long plan fail here, before anything starts.
"$py" -m bench.run --plan-only "$@"
case " $* " in *" -h "* | *" --help "*) exit 0 ;; esac

# The mesh to start, measure and stop: `bench` unless --profile names another.
profile=bench
args=("$@")
for i in "${!args[@]}"; do
  case "${args[$i]}" in
    --profile) profile="${args[$((i + 1))]}" ;;
    --profile=*) profile="${args[$i]#--profile=}" ;;
  esac
done
export INTERPAY_BENCH_PROFILE="$profile"

for other in dev test bench work aux; do
  [ "$other" = "$profile" ] && continue
  if [ -S ".data/$other/run/supervisor.sock" ]; then
    echo "bench: the $other mesh is running; it is left alone (and shares the CPU)" >&2
  fi
done

cleanup() { "$py" scripts/mesh.py down --profile "$profile" || true; }
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

if [ "$profile" = bench ]; then
  # The bench mesh starts empty every run: no backlog of a previous run's events for the
  # consumers to digest meanwhile, no tables grown by earlier runs, the same start each time.
  "$py" scripts/mesh.py down --profile bench || true
  rm -rf .data/bench
else
  echo "bench: measuring the $profile mesh as it is (its data and any event backlog stay)" >&2
fi
"$py" scripts/mesh.py up --profile "$profile"
# The whole benchmark is planned for ~5 minutes; a hard cap keeps `make bench` under 10.
timeout --foreground --signal=INT --kill-after=20 450 "$py" -m bench.run "$@"
