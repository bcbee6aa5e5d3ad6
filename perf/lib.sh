# Helpers the perf scripts share (sourced, not run).

# A free TCP port on 127.0.0.1.
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
# A process and all its descendants, one pid a line.
tree() { local p=$1; echo "$p"; for c in $(ps -o pid= --ppid "$p" 2>/dev/null); do tree "$c"; done; }
# User + system CPU of one process (all its threads), in clock ticks.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
# The median of numbers separated by blanks or lines.
median() { tr ' ' '\n' <<<"$*" | grep . | sort -g | awk '{a[NR]=$1} END {printf "%.6g", a[int((NR+1)/2)]}'; }
# B / A, to three places.
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.3f", b / a }'; }
# Each round's own B / A, for two lists of per-round figures in the same
# order (A and B measured back to back in each round, so the machine's drift
# between rounds cancels); their median is the figure least moved by noise.
paired() { paste -d' ' <(tr ' ' '\n' <<<"$1" | grep .) <(tr ' ' '\n' <<<"$2" | grep .) | awk '{print $2 / $1}' | tr '\n' ' '; }
# The gateway binary a harness measures: the release build, or with PGO=1
# the release build laid out by its profile (scripts/pgo builds it first,
# once for a harness and the scripts it runs: they inherit PGO_BUILT).
gateway_bin() {
  if [ "${PGO:-0}" = 1 ]; then
    [ -n "${PGO_BUILT:-}" ] || scripts/pgo >&2 || return 1
    echo target/pgo/ai-gateway
  else
    echo target/release/ai-gateway
  fi
}
# How the gateway measured was built, for a results file's header.
gateway_build() {
  if [ "${PGO:-0}" = 1 ]; then echo "release build with profile-guided optimisation (scripts/pgo)"; else echo "release build"; fi
}
