#!/usr/bin/env bash
# Run a command as on a slower CPU without AVX-512: torch's kernels capped to AVX2 and the CPU
# time of the command (and everything it starts) cut to CPUS processors' worth by a cgroup quota.
#
#   sudo benchmarks/slow_cpu.sh CPUS COMMAND...        e.g. benchmarks/slow_cpu.sh 1.0 bash .ci/run
#
# Calibrate CPUS against a figure measured on the CPU you emulate, with the same workload. A
# 2-core AMD EPYC without AVX-512 trained the embedded default (128 px, batch 4, fp32) at
# 3.70-3.85 img/s; on a 2-core EPYC with AVX-512 this script gives that rate at CPUS=1.0
# (0.96: 3.45 img/s; 1.05: 4.1). Check with
#   benchmarks/slow_cpu.sh 1.0 core run cases/retinanet --output /tmp/calib \
#       --set train.max_iters=30 --set run.checkpoint=false --set eval.first_epoch=99
# Needs root and a cgroup v1 `cpu` controller or cgroup v2 with `cpu` enabled; the group is
# removed afterwards. A quota is not a slower core (each period runs at full speed, then waits),
# so calibrate on the workload you care about.
set -euo pipefail
if [ $# -lt 2 ]; then
  echo "usage: $0 CPUS COMMAND..." >&2
  exit 2
fi
cpus=$1
shift
quota=$(python3 -c "import sys; c = float(sys.argv[1]); assert 0.01 <= c <= 1024; print(int(c * 100000))" "$cpus" 2>/dev/null) || {
  echo "error: CPUS must be a number of processors between 0.01 and 1024, got '$cpus'" >&2
  exit 2
}
name="chipbench-slow-cpu-$$"
if [ -d /sys/fs/cgroup/cpu ] && [ -w /sys/fs/cgroup/cpu ]; then          # cgroup v1
  group=/sys/fs/cgroup/cpu/$name
  mkdir "$group"
  echo 100000 > "$group/cpu.cfs_period_us"
  echo "$quota" > "$group/cpu.cfs_quota_us"
elif [ -f /sys/fs/cgroup/cgroup.controllers ] && grep -qw cpu /sys/fs/cgroup/cgroup.controllers; then  # v2
  group=/sys/fs/cgroup/$name
  mkdir "$group"
  echo "$quota 100000" > "$group/cpu.max"
else
  echo "error: no writable cgroup cpu controller here; run as root on Linux with cgroups" >&2
  exit 2
fi
cleanup() {
  # the command's processes have ended; move this shell out, then remove the group
  echo $$ > "$(dirname "$group")/cgroup.procs" 2>/dev/null || true
  rmdir "$group" 2>/dev/null || true
}
trap cleanup EXIT
echo $$ > "$group/cgroup.procs"
# The emulated CPU has all of this machine's cores, each slower: keep one compute thread per core
# (the cpu vendor would otherwise fit its threads to the quota, as it does in a container, and
# run one thread here at a different rate and with another summation order)
threads=${CHIPBENCH_CPU_THREADS:-$(nproc)}
echo "slow_cpu: $cpus CPU(s) of time, kernels capped to AVX2, $threads compute thread(s): $*" >&2
CHIPBENCH_CPU_THREADS=$threads ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 "$@"
