#!/usr/bin/env bash
# Run one command under a hard memory limit (no swap) and say whether it fit: what a step *needs*, not its peak RSS,
# which also counts clean file-backed pages (a mapped IR) the kernel would drop under pressure. Needs root.
#
#   sudo bash benchmarks/memory_limit.sh 9 -- shears-nncf export --model M --adapter A --output OUT ...
#
# Prints the command's exit status, the limit, the group's peak usage and whether the OOM killer ran. cgroup v1
# (memory controller mounted at /sys/fs/cgroup/memory) and v2 (unified /sys/fs/cgroup) are both handled.
set -u
[ $# -ge 3 ] && [ "$2" = "--" ] || { echo "usage: memory_limit.sh LIMIT_GIB -- COMMAND... (LIMIT_GIB may be fractional: 1.5)" >&2; exit 2; }
gib=$1; limit=$(awk -v g="$gib" 'BEGIN { if (g + 0 <= 0) exit 1; printf "%.0f", g * 1073741824 }') \
  || { echo "memory_limit: LIMIT_GIB must be a positive number of GiB, got '$gib'" >&2; exit 2; }; shift 2
name=shears_memory_limit_$$
if [ -d /sys/fs/cgroup/memory ]; then
  cg=/sys/fs/cgroup/memory/$name; mkdir "$cg" || exit 2
  echo "$limit" > "$cg/memory.limit_in_bytes"
  [ -f "$cg/memory.memsw.limit_in_bytes" ] && echo "$limit" > "$cg/memory.memsw.limit_in_bytes"
  peak_file=$cg/memory.max_usage_in_bytes; oom() { grep -c "^oom_kill [1-9]" "$cg/memory.oom_control"; }
else
  cg=/sys/fs/cgroup/$name; mkdir "$cg" || exit 2
  echo "$limit" > "$cg/memory.max"; echo 0 > "$cg/memory.swap.max"
  peak_file=$cg/memory.peak; oom() { grep -c "^oom_kill [1-9]" "$cg/memory.events"; }
fi
( echo $BASHPID > "$cg/cgroup.procs"; exec "$@" )
rc=$?
echo "memory_limit: exit $rc under $gib GiB; group peak $(( $(cat "$peak_file") >> 20 )) MiB; OOM kill: $( [ "$(oom)" = 1 ] && echo yes || echo no )"
rmdir "$cg" 2>/dev/null
exit $rc
