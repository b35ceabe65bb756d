#!/usr/bin/env bash
# Single-node SLURM with accounting on localhost, for the cluster test (`make test-cluster`).
#
#   tests/cluster/slurm.sh install      # Debian packages (apt-get; root)
#   tests/cluster/slurm.sh up RUN_DIR   # munge, mariadb, slurmdbd, slurmctld, slurmd
#   tests/cluster/slurm.sh down RUN_DIR # stops what `up` started, by PID
#
# Everything lives under RUN_DIR (configs, keys, database, state, logs, PID files): no system
# service is started or changed, and nothing outside RUN_DIR is written but the packages (and,
# outside a private mount namespace, a link at /etc/slurm/slurm.conf while the cluster runs).
# Clients find the cluster through `source RUN_DIR/env.sh` (SLURM_CONF).
# Runs as root without systemd: the daemons are started directly.
set -euo pipefail

T="timeout -k 5"   # every call is bounded
MUNGE_SOCKET=/run/munge/munge.socket.2
SYSTEM_CONF=/etc/slurm/slurm.conf

install_packages() {
    local missing=()
    for cmd in munged mariadbd slurmdbd slurmctld slurmd sbatch sacct; do
        command -v "$cmd" >/dev/null || PATH="$PATH:/usr/sbin" command -v "$cmd" >/dev/null || missing+=("$cmd")
    done
    if [ ${#missing[@]} -eq 0 ]; then echo "slurm packages: already installed"; return; fi
    echo "slurm packages: installing (missing: ${missing[*]})"
    $T 300 apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $T 600 apt-get install -y -qq --no-install-recommends \
        slurm-wlm slurmdbd munge mariadb-server mariadb-client >/dev/null
}

write_configs() {
    local run=$1 host cpus mem_mb
    host=$(hostname -s)
    cpus=$(nproc)
    # RealMemory must not exceed what slurmd detects, or the node is drained.
    mem_mb=$(( $(awk '/MemTotal/ {print $2}' /proc/meminfo) / 1024 * 9 / 10 ))
    mkdir -p "$run"/{munge,mysql,state,spool,log}
    cat >"$run/slurm.conf" <<EOF
ClusterName=harmmed
SlurmctldHost=$host
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
StateSaveLocation=$run/state
SlurmdSpoolDir=$run/spool/slurmd-%n
SlurmctldPidFile=$run/slurmctld.pid
SlurmdPidFile=$run/slurmd.pid
SlurmctldLogFile=$run/log/slurmctld.log
SlurmdLogFile=$run/log/slurmd.log
SlurmctldPort=${HARMMED_SLURMCTLD_PORT:-6817}
SlurmdPort=${HARMMED_SLURMD_PORT:-6818}
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU_Memory
# Without a default memory per CPU one job is given the whole node.
DefMemPerCPU=1000
AccountingStorageType=accounting_storage/slurmdbd
# The plugin names the rule in the job comment; keep it for sacct.
AccountingStoreFlags=job_comment
AccountingStorageHost=localhost
AccountingStoragePort=${HARMMED_SLURMDBD_PORT:-6819}
MpiDefault=none
ReturnToService=2
SchedulerParameters=defer_batch=0
MinJobAge=300
NodeName=$host CPUs=$cpus RealMemory=$mem_mb State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
    cat >"$run/slurmdbd.conf" <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=${HARMMED_SLURMDBD_PORT:-6819}
SlurmUser=root
PidFile=$run/slurmdbd.pid
LogFile=$run/log/slurmdbd.log
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=harmmed-test
EOF
    chmod 600 "$run/slurmdbd.conf"
    cat >"$run/env.sh" <<EOF
export SLURM_CONF=$run/slurm.conf
export MYSQL_UNIX_PORT=$run/mysql.sock
export PATH=\$PATH:/usr/sbin
EOF
}

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...: poll until COMMAND succeeds
    local seconds=$1 what=$2; shift 2
    local deadline=$((SECONDS + seconds))
    while [ "$SECONDS" -lt "$deadline" ]; do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "slurm: $what did not come up in ${seconds}s" >&2
    return 1
}

up() {
    local run=$1
    write_configs "$run"
    # The plugin's job steps drop SLURM_* variables (SLURM_CONF too), so srun inside a job reads
    # the default path. In a private mount namespace (test_cluster.sh makes one) a tmpfs over
    # /etc/slurm holds a link to this cluster's file, and the host's /etc/slurm is never touched,
    # whatever it holds. Without one, the link is made on the host while the cluster runs.
    if [ -n "${HARMMED_SLURM_PRIVATE_MOUNTS:-}" ]; then
        mkdir -p "$(dirname "$SYSTEM_CONF")"
        mount -t tmpfs -o size=1m harmmed-slurm-etc "$(dirname "$SYSTEM_CONF")"
    elif [ -e "$SYSTEM_CONF" ] || [ -L "$SYSTEM_CONF" ]; then
        case "$(readlink "$SYSTEM_CONF")" in
            /tmp/harmmed-cluster.*/slurm/slurm.conf) ;;   # left by an interrupted run of this test
            *) echo "slurm: $SYSTEM_CONF exists and is not ours; refusing to replace it" >&2; return 1 ;;
        esac
    fi
    mkdir -p "$(dirname "$SYSTEM_CONF")"; ln -sfn "$run/slurm.conf" "$SYSTEM_CONF"
    # shellcheck disable=SC1091
    source "$run/env.sh"

    dd if=/dev/urandom of="$run/munge/munge.key" bs=1024 count=1 status=none
    chmod 700 "$run/munge"; chmod 400 "$run/munge/munge.key"
    # The default socket: Slurm 22.05's accounting clients ignore AuthInfo=socket=.
    mkdir -p "$(dirname "$MUNGE_SOCKET")"
    if [ -n "${HARMMED_SLURM_PRIVATE_MOUNTS:-}" ]; then   # hides a host munged's socket too
        mount -t tmpfs -o size=1m harmmed-munge "$(dirname "$MUNGE_SOCKET")"
    fi
    if $T 2 munge --socket="$MUNGE_SOCKET" -n >/dev/null 2>&1; then
        echo "slurm: a munged already serves $MUNGE_SOCKET; stop it first" >&2; return 1
    fi
    $T 20 munged --force --key-file="$run/munge/munge.key" --socket="$MUNGE_SOCKET" \
        --pid-file="$run/munge/munged.pid" --log-file="$run/log/munged.log" --seed-file="$run/munge/seed"
    wait_for 10 munge $T 2 munge --socket="$MUNGE_SOCKET" -n

    $T 120 mariadb-install-db --no-defaults --user=root --datadir="$run/mysql" \
        --auth-root-authentication-method=socket >"$run/log/mariadb-install.log" 2>&1
    # Unix socket only: nothing listens on the network. mariadbd stays in the foreground, so its
    # timeout bounds its lifetime (HARMMED_SLURM_MAX_SECONDS, the whole test's budget).
    $T "${HARMMED_SLURM_MAX_SECONDS:-3600}" mariadbd --no-defaults --user=root --datadir="$run/mysql" --socket="$run/mysql.sock" \
        --pid-file="$run/mysql.pid" --skip-networking --log-error="$run/log/mariadb.log" \
        --innodb-buffer-pool-size=128M --innodb-lock-wait-timeout=900 >/dev/null 2>&1 &
    wait_for 60 mariadb $T 2 mariadb --no-defaults --socket="$run/mysql.sock" -u root -e "select 1"
    $T 20 mariadb --no-defaults --socket="$run/mysql.sock" -u root -e "
        CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'harmmed-test';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';"

    $T 20 slurmdbd
    wait_for 60 slurmdbd $T 3 sacctmgr -n list cluster
    $T 20 sacctmgr -i add cluster harmmed >/dev/null || true
    $T 20 slurmctld
    wait_for 60 slurmctld $T 3 scontrol ping
    $T 20 slurmd
    wait_for 60 "node $(hostname -s)" node_idle
    $T 10 sinfo -N -o "%N %c %m %t"
}

node_idle() { timeout -k 2 3 sinfo -h -N -o %t | grep -qx idle; }

down() {
    local run=$1 pidfile pid
    # Reverse start order; each daemon by the PID it wrote.
    for pidfile in slurmd.pid slurmctld.pid slurmdbd.pid mysql.pid munge/munged.pid; do
        [ -f "$run/$pidfile" ] || continue
        pid=$(cat "$run/$pidfile")
        kill "$pid" 2>/dev/null || continue
        for _ in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
        kill -9 "$pid" 2>/dev/null || true
    done
    if [ -n "${HARMMED_SLURM_PRIVATE_MOUNTS:-}" ]; then
        umount "$(dirname "$SYSTEM_CONF")" "$(dirname "$MUNGE_SOCKET")" 2>/dev/null || true
    elif [ "$(readlink "$SYSTEM_CONF" 2>/dev/null)" = "$run/slurm.conf" ]; then
        rm -f "$SYSTEM_CONF"
    fi
    echo "slurm: daemons stopped"
}

case "${1:-}" in
    install) install_packages ;;
    up) up "$2" ;;
    down) down "$2" ;;
    *) echo "usage: $0 install | up RUN_DIR | down RUN_DIR" >&2; exit 2 ;;
esac
