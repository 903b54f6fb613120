#!/usr/bin/env bash
# Run one command under a hard memory limit (no swap) and say whether it fit: what a step *needs*, not its peak RSS,
# which also counts clean file-backed pages (a mapped IR) the kernel would drop under pressure. Needs root; keep the
# caller's PATH so that the virtual environment's commands are found:
#
#   sudo env PATH="$PATH" bash benchmarks/memory_limit.sh 9 -- shears-nncf export --model M --adapter A --output OUT ...
#
# Prints the command's exit status, the limit, the group's peak usage and whether the OOM killer ran, and exits with
# the command's status (125 when the limit could not be set up: then nothing ran). cgroup v1 (memory controller at
# /sys/fs/cgroup/memory) and v2 (unified /sys/fs/cgroup, memory controller enabled for its children) are handled.
set -u
fail() { echo "memory_limit: $*" >&2; exit 125; }
[ $# -ge 3 ] && [ "$2" = "--" ] || { echo "usage: memory_limit.sh LIMIT_GIB -- COMMAND... (LIMIT_GIB may be fractional: 1.5)" >&2; exit 2; }
gib=$1; shift 2
limit=$(awk -v g="$gib" 'BEGIN { if (g !~ /^[0-9]*\.?[0-9]+$/ || g * 1073741824 < 1048576) exit 1; printf "%.0f", g * 1073741824 }') \
  || fail "LIMIT_GIB must be a number of GiB of at least 1 MiB, got '$gib'"
name=shears_memory_limit_$$
if [ -d /sys/fs/cgroup/memory ]; then
  cg=/sys/fs/cgroup/memory/$name; limit_file=memory.limit_in_bytes; swap_file=memory.memsw.limit_in_bytes
  peak_file=memory.max_usage_in_bytes; events_file=memory.oom_control
else
  cg=/sys/fs/cgroup/$name; limit_file=memory.max; swap_file=memory.swap.max; peak_file=memory.peak; events_file=memory.events
fi
mkdir "$cg" 2>/dev/null || fail "cannot create the cgroup $cg (needs root and the memory controller)"
cleanup() {  # kill what the command left behind, then remove the group
  [ -f "$cg/cgroup.procs" ] && xargs -r kill -9 < "$cg/cgroup.procs" 2>/dev/null
  sleep 0.2; rmdir "$cg" 2>/dev/null || echo "memory_limit: could not remove $cg" >&2
}
trap cleanup EXIT
trap 'exit 130' INT TERM
[ -f "$cg/$limit_file" ] && echo "$limit" > "$cg/$limit_file" 2>/dev/null || fail "cannot set $cg/$limit_file (is the memory controller enabled for child groups?)"
[ "$(cat "$cg/$limit_file")" -le "$limit" ] 2>/dev/null || fail "the limit did not take: $cg/$limit_file reads $(cat "$cg/$limit_file")"
if [ "$swap_file" = memory.swap.max ]; then swap=0; else swap=$limit; fi
[ -f "$cg/$swap_file" ] && echo "$swap" > "$cg/$swap_file" 2>/dev/null || echo "memory_limit: warning: cannot cap swap ($swap_file): the command may swap" >&2
( echo $BASHPID > "$cg/cgroup.procs" || exit 125; exec "$@" )
rc=$?
[ $rc -eq 125 ] && fail "could not move the command into $cg"
peak=$(cat "$cg/$peak_file" 2>/dev/null || echo "")
oom=$(grep -c "^oom_kill [1-9]" "$cg/$events_file" 2>/dev/null)
if [ -n "$peak" ]; then peak="$(( peak >> 20 )) MiB"; else peak="unknown (no $peak_file)"; fi
echo "memory_limit: exit $rc under $gib GiB; group peak $peak; OOM kill: $( [ "${oom:-0}" -ge 1 ] && echo yes || echo no )"
exit $rc
