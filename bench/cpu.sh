# CPU accounting shared by the benchmarks (source it): CPU time read from /proc.

# CPU time (user + system, in clock ticks) used so far by the processes given; a
# process that is gone counts 0.
cpu_ticks() { # pid... -> ticks
  local total=0 pid t
  for pid in "$@"; do
    t=$(awk '{print $14 + $15}' "/proc/$pid/stat" 2>/dev/null || echo 0)
    total=$((total + t))
  done
  echo "$total"
}
HZ=$(getconf CLK_TCK)
