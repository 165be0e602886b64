#!/bin/bash
# slurm-up.sh -- idempotent single-host SLURM (Debian 12's 22.05 packages): install + configure +
# start, so that slmjobs' test suite runs against a REAL slurmctld. scripts/test.sh calls
# `slurm-up.sh up` after Grid Engine and fails when it fails.
#
# The cluster it makes: controller and node on this host ($(hostname -s)), one partition `debug`
# (default, no time limit), 16 CPUs on the node whatever the hardware (SlurmdParameters=
# config_overrides: sixteen one-CPU jobs share the cores), 8 fake GPUs through gres (device nodes
# made with mknod, so --gres=gpu:N sets CUDA_VISIBLE_DEVICES), KillWait 30 s (SLURM's default:
# SIGTERM at --time, SIGKILL 30 s later), and accounting through slurmdbd + MariaDB, because
# `sacct` (how a job ended) reads nothing else on 22.05. No systemd: the daemons are started
# directly. What was measured on it: docs/SLURM.md; the recipe: reference/slurm/NOTES.md.
#
# Usage (as root):
#   slurm-up.sh [up]     # install if needed, write the config, start what is not running
#   slurm-up.sh stop     # stop the daemons (by PID file), newest first
#   slurm-up.sh status
set -euo pipefail

HOST=$(hostname -s)
CONF=/etc/slurm
FAKE_GPUS=/var/lib/slurm/fakegpu
DB_SOCKET=/run/mysqld/mysqld.sock
PACKAGES="slurmctld slurmd slurm-client slurmdbd munge mariadb-server"

log() { echo "[slurm-up $(date +%T)] $*"; }
die() { echo "[slurm-up] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

wait_for() {  # wait_for <seconds> <description> <cmd...>
    local t=$1 what=$2; shift 2
    local i
    for ((i = 0; i < t * 10; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.1
    done
    die "timed out after ${t}s waiting for: $what"
}

# daemon name -> PID file (the order daemons start in)
DAEMONS="munged mariadbd slurmdbd slurmctld slurmd"
pidfile() {
    case "$1" in
        munged) echo /run/munge/munged.pid ;;
        mariadbd) echo /run/mysqld/mysqld.pid ;;
        *) echo "/run/$1.pid" ;;
    esac
}

do_stop() {
    local name pf pid
    for name in slurmd slurmctld slurmdbd mariadbd munged; do
        pf=$(pidfile "$name")
        pid_alive "$pf" || continue
        pid=$(cat "$pf")
        log "stopping $name (pid $pid)"
        kill "$pid"
        wait_for 60 "$name exit" bash -c "! kill -0 $pid"
    done
}

do_status() {
    local name pf
    for name in $DAEMONS; do
        pf=$(pidfile "$name")
        pid_alive "$pf" && echo "$name running pid $(cat "$pf")" || echo "$name NOT running"
    done
    sinfo -N 2>&1 || true
}

case "${1:-up}" in
    stop) do_stop; exit 0 ;;
    status) do_status; exit 0 ;;
    up) ;;
    *) die "usage: $0 [up|stop|status]" ;;
esac

T0=$(date +%s.%N)

# ---------------------------------------------------------------- 1. install
installed=$(dpkg-query -W -f='${Status}\n' $PACKAGES 2>/dev/null | grep -c '^install ok installed$' || true)
if [ "$installed" = "$(echo $PACKAGES | wc -w)" ]; then
    log "slurm packages already installed"
else
    log "installing $PACKAGES"
    apt-get update -q
    # Keep the packages from starting daemons with their own config (policy-rc.d 101).
    TMP_POLICY=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; TMP_POLICY=1
    fi
    apt_rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold $PACKAGES || apt_rc=$?
    [ "$TMP_POLICY" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$apt_rc" = 0 ] || die "apt-get install failed ($apt_rc)"
fi

# ---------------------------------------------------------------- 2. configuration
mkdir -p "$CONF" /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm "$FAKE_GPUS"
# Fake GPUs: character devices with NVIDIA's major number; slurmd only needs them to exist.
for i in 0 1 2 3 4 5 6 7; do
    [ -c "$FAKE_GPUS/nvidia$i" ] || mknod "$FAKE_GPUS/nvidia$i" c 195 "$i"
done

# The database password is made here, once, and lives only in slurmdbd.conf (mode 600).
DB_PASSWORD=$(sed -n 's/^StoragePass=//p' "$CONF/slurmdbd.conf" 2>/dev/null || true)
[ -n "$DB_PASSWORD" ] || DB_PASSWORD=$(head -c 18 /dev/urandom | base64 | tr -dc 'A-Za-z0-9')

changed=0
write_conf() {  # write_conf <file> <mode>, text on stdin; changed=1 when it differs
    local new; new=$(cat)
    if [ "$(cat "$1" 2>/dev/null)" != "$new" ]; then
        printf '%s\n' "$new" > "$1"; chmod "$2" "$1"; changed=1
    fi
}

write_conf "$CONF/slurm.conf" 644 <<EOF
# Written by slmjobs' scripts/slurm-up.sh: a single-host test cluster.
ClusterName=slmjobs
SlurmctldHost=$HOST
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
# A job requeued (or held and released) may start again at once, not after 120 s.
AuthInfo=cred_expire=10
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SchedulerType=sched/backfill
MpiDefault=none
ReturnToService=2
JobAcctGatherType=jobacct_gather/linux
JobAcctGatherFrequency=10
AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=localhost
AccountingStorageTRES=gres/gpu
GresTypes=gpu
KillWait=30
MinJobAge=300
NodeName=$HOST CPUs=16 Boards=1 SocketsPerBoard=1 CoresPerSocket=16 ThreadsPerCore=1 RealMemory=16000 Gres=gpu:8 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
SlurmdParameters=config_overrides
EOF

write_conf "$CONF/gres.conf" 644 <<EOF
AutoDetect=off
NodeName=$HOST Name=gpu File=$FAKE_GPUS/nvidia[0-7]
EOF

write_conf "$CONF/slurmdbd.conf" 600 <<EOF
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
DebugLevel=info
LogFile=/var/log/slurm/slurmdbd.log
PidFile=/run/slurmdbd.pid
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=$DB_PASSWORD
EOF

# ---------------------------------------------------------------- 3. start what is not running
if [ "$changed" = 1 ]; then
    # a running daemon keeps its old config: restart the SLURM ones (munge and MariaDB keep theirs)
    for name in slurmd slurmctld slurmdbd; do
        pf=$(pidfile "$name")
        if pid_alive "$pf"; then
            log "config changed: stopping $name"
            pid=$(cat "$pf"); kill "$pid"; wait_for 60 "$name exit" bash -c "! kill -0 $pid"
        fi
    done
fi

if pid_alive /run/munge/munged.pid; then
    log "munged already running"
else
    log "starting munged"
    mkdir -p /run/munge
    chown munge:munge /run/munge /var/log/munge /var/lib/munge
    # Debian's postinst makes the key; a host that lost it gets a new one (single host: no copies)
    [ -s /etc/munge/munge.key ] || runuser -u munge -- /usr/sbin/mungekey --create
    runuser -u munge -- /usr/sbin/munged
fi
wait_for 10 "munge answering" bash -c "munge -n | unmunge"

if pid_alive /run/mysqld/mysqld.pid; then
    log "mariadbd already running"
else
    log "starting mariadbd"
    mkdir -p /run/mysqld && chown mysql:mysql /run/mysqld
    nohup /usr/sbin/mariadbd --user=mysql --pid-file=/run/mysqld/mysqld.pid --socket=$DB_SOCKET \
        --bind-address=127.0.0.1 </dev/null >>/var/log/slurm/mariadb.log 2>&1 &
fi
wait_for 60 "mariadb answering" mysqladmin --socket=$DB_SOCKET ping
mysql --socket=$DB_SOCKET <<EOF
CREATE USER IF NOT EXISTS 'slurm'@'localhost';
ALTER USER 'slurm'@'localhost' IDENTIFIED BY '$DB_PASSWORD';
GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost';
EOF

start_slurm_daemon() {  # start_slurm_daemon <name>: in a clean environment (jobs inherit slurmd's)
    if pid_alive "$(pidfile "$1")"; then
        log "$1 already running"
    else
        log "starting $1"
        env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 "/usr/sbin/$1"
    fi
}
start_slurm_daemon slurmdbd
wait_for 60 "slurmdbd listening on 6819" bash -c "exec 3<>/dev/tcp/127.0.0.1/6819"
start_slurm_daemon slurmctld
wait_for 60 "slurmctld answering" scontrol ping
start_slurm_daemon slurmd
node_ready() { sinfo -h -N -o %T | grep -qE '^(idle|mixed|allocated|completing)$'; }
for ((i = 0; i < 300; i++)); do node_ready && break; sleep 0.1; done
if ! node_ready; then
    # a node left DOWN/DRAIN by an earlier run of the controller: give it back
    scontrol update NodeName="$HOST" State=RESUME >/dev/null 2>&1 || true
    wait_for 30 "node $HOST idle" node_ready
fi
wait_for 60 "sacct answering (slurmdbd registered the cluster)" sacct -n -X -S now

T1=$(date +%s.%N)
log "SLURM $(sinfo --version | awk '{print $2}') up in $(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s"
sinfo -N
