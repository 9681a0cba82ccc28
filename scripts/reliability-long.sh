#!/usr/bin/env bash
# The release check of RELIABILITY.md: the reliability suite's long versions, in release
# mode, one test at a time (so that the soak's latency and memory figures are not disturbed
# by the other tests), with the real-filesystem disk-full test required rather than skipped.
#
#   scripts/reliability-long.sh                 defaults below (about 12 minutes on 2 cores)
#   CAIRN_SOAK_SECONDS=1800 scripts/reliability-long.sh
#   TEST_SEED=123 scripts/reliability-long.sh   replay one run
#
# Needs root (or CAP_SYS_ADMIN) and loop devices for the disk-full test. Prints each test's
# figures (the lines starting with reliability_) and fails on the first failing test.
set -euo pipefail

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

export CAIRN_CRASH_ROUNDS="${CAIRN_CRASH_ROUNDS:-40}"
export CAIRN_FUZZ_SECONDS="${CAIRN_FUZZ_SECONDS:-120}"
export CAIRN_SOAK_SECONDS="${CAIRN_SOAK_SECONDS:-300}"
export CAIRN_REQUIRE_LOOP_MOUNT="${CAIRN_REQUIRE_LOOP_MOUNT:-1}"

echo "git $(git rev-parse --short HEAD)$(git diff --quiet || echo '+dirty'), $(nproc) CPUs," \
    "CAIRN_CRASH_ROUNDS=${CAIRN_CRASH_ROUNDS} CAIRN_FUZZ_SECONDS=${CAIRN_FUZZ_SECONDS}" \
    "CAIRN_SOAK_SECONDS=${CAIRN_SOAK_SECONDS}"

cargo test --release --locked -p cairn --test integration --no-run
log="$(mktemp)"
trap 'rm -f "${log}"' EXIT
for filter in reliability_crash reliability_io_faults reliability_disk_full reliability_fuzz \
    reliability_soak; do
    echo "== ${filter}"
    status=0
    cargo test --release --locked -q -p cairn --test integration "${filter}" -- \
        --test-threads 1 --nocapture >"${log}" 2>&1 || status=$?
    grep -E '^(reliability_|connection churn|after a client|round |test result|SKIPPED)' \
        "${log}" || true
    if [ "${status}" -ne 0 ]; then
        tail -n 60 "${log}"
        echo "FAILED: ${filter} (exit ${status})"
        exit "${status}"
    fi
done
