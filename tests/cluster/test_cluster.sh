#!/usr/bin/env bash
# `make test-cluster`: the tiny-model workflow through SLURM with profiles/slurm, compared byte
# for byte with a local run of the same config.
#
# Brings up single-node SLURM (tests/cluster/slurm.sh), installs the pinned executor plugin
# (requirements-cluster.lock), runs the workflow twice (locally, and with `--profile
# profiles/slurm` plus the documented settings for this 2-CPU node), compares every file under
# results/ and figures/, and stops the daemons it started. Prints the time of each phase.
set -euo pipefail
# In a private mount namespace, the test's /etc/slurm is a tmpfs of its own (tests/cluster/slurm.sh):
# a machine's own SLURM config, or one left by an interrupted run, is neither read nor replaced.
if [ -z "${HARMMED_SLURM_PRIVATE_MOUNTS:-}" ] && unshare --mount --propagation private true 2>/dev/null; then
    exec env HARMMED_SLURM_PRIVATE_MOUNTS=1 unshare --mount --propagation private bash "${BASH_SOURCE[0]}" "$@"
fi
cd "$(dirname "${BASH_SOURCE[0]}")/../.."
REPO=$PWD
VENV=${VENV:-$REPO/.venv}
export PATH=$VENV/bin:$PATH PYTHONPATH=$REPO/src
T="timeout -k 10"
WORK=$(mktemp -d /tmp/harmmed-cluster.XXXXXX)
RUN=$WORK/slurm
export HARMMED_SLURM_MAX_SECONDS=${HARMMED_SLURM_MAX_SECONDS:-1800}

phase() { echo "== test-cluster: $1 $(( SECONDS - START ))s"; START=$SECONDS; }
cleanup() {
    local rc=$?
    if [ -n "${local_pid:-}" ] && kill -0 "$local_pid" 2>/dev/null; then   # the local run, if still going
        pkill -TERM -P "$local_pid" || true; kill "$local_pid" 2>/dev/null || true
    fi
    [ -f "$RUN/slurm.conf" ] && $T 120 tests/cluster/slurm.sh down "$RUN"
    if [ "$rc" -ne 0 ]; then
        echo "test-cluster FAILED (rc $rc); logs kept in $WORK" >&2
        tail -n 30 "$RUN"/log/slurmctld.log "$WORK"/slurm-run.log 2>/dev/null >&2 || true
    else
        rm -rf "$WORK"
    fi
}
trap cleanup EXIT
START=$SECONDS; TOTAL=$SECONDS

$T 900 tests/cluster/slurm.sh install
$T 300 tests/cluster/slurm.sh up "$RUN"
# shellcheck disable=SC1091
source "$RUN/env.sh"
phase "setup"

$T 300 "$VENV/bin/pip" install -q -r requirements-cluster.lock -c requirements.lock
phase "plugin install"

$T 600 python -c "
import sys; sys.path.insert(0, 'tests')
from pathlib import Path
from test_workflow import tiny_config
tiny_config(Path('$WORK'))"
SNAKEMAKE=(snakemake --configfile "$WORK/config.yaml")

# The local reference run and the SLURM run go side by side (on a shared machine that halves
# the wall time; on an idle one it costs about the same as one after the other).
( start=$SECONDS
  $T 2400 "${SNAKEMAKE[@]}" --cores 2 --directory "$WORK/local" >"$WORK/local-run.log" 2>&1 \
      || { tail -n 40 "$WORK/local-run.log" >&2; exit 1; }
  echo "== test-cluster: local workflow $(( SECONDS - start ))s" ) &
local_pid=$!
# The documented local settings: this node has 2 CPUs (profiles/README.md).
HARMMED_SLURM_CPUS=2 $T 3000 "${SNAKEMAKE[@]}" --profile "$REPO/profiles/slurm" --directory "$WORK/slurm-run" \
    --slurm-init-seconds-before-status-checks 2 >"$WORK/slurm-run.log" 2>&1 \
    || { tail -n 40 "$WORK/slurm-run.log" >&2; exit 1; }
phase "slurm workflow"
wait "$local_pid"
phase "local workflow finished after it"
$T 10 sacct -X -n -P -o JobID,Comment,AllocCPUS,ReqMem,State | tee "$WORK/sacct.txt"

python - "$WORK/local" "$WORK/slurm-run" "$WORK/sacct.txt" <<'EOF'
import re
import sys
from pathlib import Path

local, slurm, sacct = (Path(a) for a in sys.argv[1:])
names = sorted(str(p.relative_to(local)) for d in ("results", "figures") for p in (local / d).rglob("*") if p.is_file())
other = sorted(str(p.relative_to(slurm)) for d in ("results", "figures") for p in (slurm / d).rglob("*") if p.is_file())
assert names == other, f"different files: {sorted(set(names) ^ set(other))}"


def content(path: Path) -> bytes:
    """The file's bytes; the run summary's header states when it was written, which is left out."""
    data = path.read_bytes()
    return re.sub(rb"written \d{4}-\d\d-\d\d \d\d:\d\d UTC", b"written <time>", data) if path.name == "summary.md" else data


differ = [n for n in names if content(local / n) != content(slurm / n)]
assert not differ, f"files differ between the local and the SLURM run: {differ}"
jobs = [line.split("|") for line in sacct.read_text().splitlines() if line.strip()]
assert jobs and all(j[-1] == "COMPLETED" for j in jobs), f"SLURM jobs not all COMPLETED: {jobs}"
model = [j for j in jobs if j[1].startswith("rule_mediate_layer")]
assert model and model[0][2] == "2", f"mediate_layer should get 2 CPUs (HARMMED_SLURM_CPUS=2): {model}"
print(f"test-cluster: {len(names)} result and figure files byte-identical, {len(jobs)} SLURM jobs COMPLETED")
EOF
phase "compare"

# A job larger than every node must stop the run before anything is submitted, not pend.
before=$($T 10 sacct -X -n -o JobID | wc -l)
if HARMMED_SLURM_CPUS=8 $T 300 "${SNAKEMAKE[@]}" --profile "$REPO/profiles/slurm" --directory "$WORK/slurm-run" \
        --forcerun mediate_layer --slurm-init-seconds-before-status-checks 2 >"$WORK/too-big.log" 2>&1; then
    echo "test-cluster: a 4-CPU job on a 2-CPU node was not refused" >&2; exit 1
fi
grep -q "rule mediate_layer: asks for 4 CPUs.*it would pend for ever" "$WORK/too-big.log" \
    || { tail -n 30 "$WORK/too-big.log" >&2; exit 1; }
[ "$($T 10 sacct -X -n -o JobID | wc -l)" -eq "$before" ] || { echo "test-cluster: a job was submitted" >&2; exit 1; }
grep -o "rule mediate_layer: asks.*" "$WORK/too-big.log" | head -n 1
phase "fail fast"
echo "== test-cluster: total $(( SECONDS - TOTAL ))s"
