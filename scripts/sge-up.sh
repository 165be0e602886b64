#!/bin/bash
# sge-up.sh -- idempotent single-node Son of Grid Engine (8.1.9, Debian 12 packages):
# install + configure + start, so that slmjobs' test suite runs against a REAL Grid Engine.
# scripts/test.sh (and so .ci/run) calls `sge-up.sh up` and fails when it fails.
#
# The cluster it makes: host $(hostname), queue all.q (32 slots, notify 10 s), per-job consumable
# gpus=8 plus gpu_c=8.0 and gpu_memory=80G (the BU SCC resource names), parallel environment
# "omp", a 1 s scheduler interval and a 1 s accounting flush (so qacct follows qstat within ~1 s),
# root jobs allowed, and an unprivileged user "sgetest". Why each step is there, and how this
# Grid Engine behaves, is written up in the project's SGE findings (pitfalls P1-P10).
#
# Usage (as root):
#   sge-up.sh            # install if needed, start daemons if needed, (re)apply config
#   sge-up.sh stop       # qconf -ke/-km, then wait for the daemons (by PID) to exit
#   sge-up.sh restart
#   sge-up.sh status
#
# Tunables (env):
#   SGE_SLOTS        slots of all.q on this host        (default 32, > nproc on purpose)
#   SGE_PE_SLOTS     total slots of PE "omp"             (default 999)
#   SGE_HOST_CV      exec-host complex_values            (default gpus=8,gpu_c=8.0,gpu_memory=80G)
#   SGE_TEST_USER    unprivileged user to create         (default sgetest, "" = none)
#   SGE_NOTIFY       all.q notify time                   (default 00:00:10)
set -euo pipefail

export SGE_ROOT=/var/lib/gridengine
export SGE_CELL=default
SGE_SLOTS=${SGE_SLOTS:-32}
SGE_PE_SLOTS=${SGE_PE_SLOTS:-999}
SGE_HOST_CV=${SGE_HOST_CV:-gpus=8,gpu_c=8.0,gpu_memory=80G}
SGE_TEST_USER=${SGE_TEST_USER-sgetest}
SGE_NOTIFY=${SGE_NOTIFY:-00:00:10}
HOST=$(hostname)
COMMON=$SGE_ROOT/$SGE_CELL/common
QMASTER_PIDFILE=/var/spool/gridengine/qmaster/qmaster.pid
UTIL=/usr/lib/gridengine
WORK=$(mktemp -d /tmp/sge-up.XXXXXX)
trap 'rm -rf "$WORK"' EXIT

log() { echo "[sge-up $(date +%T)] $*"; }
die() { echo "[sge-up] ERROR: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "must run as root"

pid_alive() { [ -s "$1" ] && kill -0 "$(cat "$1")" 2>/dev/null; }

execd_pidfile() {
    # Debian's sge_execd writes its pid to $SGE_EXECD_PIDFILE (we set it when starting)
    echo "/run/gridengine/execd.pid"
}

wait_for() {  # wait_for <seconds> <description> <cmd...>
    local t=$1 what=$2; shift 2
    local i
    for ((i = 0; i < t * 5; i++)); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.2
    done
    die "timed out after ${t}s waiting for: $what"
}

# ----------------------------------------------------------------------------
do_stop() {
    local epf; epf=$(execd_pidfile)
    local epid="" mpid=""
    pid_alive "$epf" && epid=$(cat "$epf")
    pid_alive "$QMASTER_PIDFILE" && mpid=$(cat "$QMASTER_PIDFILE")
    if [ -n "$epid" ]; then
        log "stopping sge_execd (pid $epid)"
        qconf -ke "$HOST" >/dev/null 2>&1 || kill "$epid" 2>/dev/null || true
        wait_for 30 "execd exit" bash -c "! kill -0 $epid"
    fi
    if [ -n "$mpid" ]; then
        log "stopping sge_qmaster (pid $mpid)"
        qconf -km >/dev/null 2>&1 || kill "$mpid" 2>/dev/null || true
        wait_for 60 "qmaster exit" bash -c "! kill -0 $mpid"
    fi
    log "stopped"
}

do_status() {
    pid_alive "$QMASTER_PIDFILE" && echo "sge_qmaster running pid $(cat $QMASTER_PIDFILE)" || echo "sge_qmaster NOT running"
    local epf; epf=$(execd_pidfile)
    pid_alive "$epf" && echo "sge_execd   running pid $(cat "$epf")" || echo "sge_execd   NOT running"
    qstat -f -u '*' 2>&1 || true
}

case "${1:-up}" in
    stop) do_stop; exit 0 ;;
    status) do_status; exit 0 ;;
    restart) do_stop ;;
    up) ;;
    *) die "usage: $0 [up|stop|restart|status]" ;;
esac

T0=$(date +%s.%N)

# ---------------------------------------------------------------- 1. install
if [ "$(dpkg-query -W -f='${Status}\n' gridengine-master gridengine-exec gridengine-client gridengine-common 2>/dev/null | grep -c '^install ok installed$')" = 4 ]; then
    log "gridengine packages already installed"
else
    log "installing gridengine packages"
    if ! apt-cache policy gridengine-master 2>/dev/null | grep -q 'Candidate: [0-9]'; then
        log "apt-get update (no candidate for gridengine-master)"
        apt-get update -q
    fi
    debconf-set-selections <<EOF
gridengine-common shared/gridengineconfig boolean true
gridengine-common shared/gridenginecell string $SGE_CELL
gridengine-common shared/gridenginemaster string $HOST
gridengine-master shared/gridengineconfig boolean true
gridengine-client shared/gridenginemaster string $HOST
EOF
    # The Debian postinst runs init_cluster (creates the BDB spool) but does NOT
    # start daemons in a container (policy-rc.d exit 101 / no runlevel); we start them below.
    # Keep the packages from auto-starting the daemons (on a host with a working
    # init they would start BEFORE the host_aliases fix below and record "localhost").
    TMP_POLICY=0
    if [ ! -e /usr/sbin/policy-rc.d ]; then
        printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d; chmod 755 /usr/sbin/policy-rc.d; TMP_POLICY=1
    fi
    apt_rc=0
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q \
        -o Dpkg::Options::=--force-confdef -o Dpkg::Options::=--force-confold \
        gridengine-master gridengine-exec gridengine-client gridengine-common || apt_rc=$?
    [ "$TMP_POLICY" = 1 ] && rm -f /usr/sbin/policy-rc.d
    [ "$apt_rc" = 0 ] || die "apt-get install failed ($apt_rc) -- run 'apt-get update' first?"
fi

# ------------------------------------------------- 2. host name resolution fix
# SGE refuses clients whose IP reverse-resolves to a name different from their
# own hostname ("access denied (client IP resolved to host name "localhost".
# This is not identical to clients host name "vm")").  In sandboxes /etc/hosts
# often has "127.0.0.1 localhost" *before* "127.0.0.1 <hostname>", so the
# reverse lookup of the hostname's IP yields "localhost".  Fix it inside SGE
# with a host_aliases file (no change to /etc/hosts needed).
getent hosts "$HOST" >/dev/null || { log "adding $HOST to /etc/hosts"; echo "127.0.1.1 $HOST" >> /etc/hosts; }
HOST_IP=$(getent ahostsv4 "$HOST" | awk 'NR==1{print $1}')
REV=$($UTIL/gethostbyaddr -name "$HOST_IP" 2>/dev/null || true)
mkdir -p "$COMMON"
if [ -n "$REV" ] && [ "$REV" != "$HOST" ]; then
    if ! grep -qx "$HOST $REV" "$COMMON/host_aliases" 2>/dev/null; then
        log "host $HOST -> $HOST_IP -> $REV : writing $COMMON/host_aliases ('$HOST $REV')"
        echo "$HOST $REV" > "$COMMON/host_aliases"
        chown sgeadmin:sgeadmin "$COMMON/host_aliases"
    fi
fi
# qmaster rewrites act_qmaster with its own (resolved) name on start; keep it sane
if [ "$(cat "$COMMON/act_qmaster" 2>/dev/null)" != "$HOST" ] && ! pid_alive "$QMASTER_PIDFILE"; then
    echo "$HOST" > "$COMMON/act_qmaster"
    chown sgeadmin:sgeadmin "$COMMON/act_qmaster"
fi

# -------------------------------- 3. make sure the cluster (spool) is initialized
if [ ! -f "$COMMON/bootstrap" ] || [ ! -f /var/spool/gridengine/spooldb/sge ]; then
    log "initializing cluster spool (init_cluster)"
    install -d -o sgeadmin -g sgeadmin /var/spool/gridengine/qmaster /var/spool/gridengine/qmaster/job_scripts /var/spool/gridengine/spooldb /var/spool/gridengine/execd
    [ -f "$COMMON/bootstrap" ] || install -m0644 -o sgeadmin -g sgeadmin /usr/share/gridengine/default-bootstrap "$COMMON/bootstrap"
    su -s /bin/sh -c "/usr/share/gridengine/scripts/init_cluster $SGE_ROOT $SGE_CELL /var/spool/gridengine/spooldb sgeadmin" sgeadmin
fi

# ---------------------------------------------------------- 4. start qmaster
if pid_alive "$QMASTER_PIDFILE" && ! timeout 20 bash -c 'until qconf -sh >/dev/null 2>&1; do sleep 0.5; done'; then
    # running but unusable (e.g. started before the host_aliases fix): restart it
    mpid=$(cat "$QMASTER_PIDFILE")
    log "sge_qmaster (pid $mpid) not answering: restarting it"
    kill "$mpid" 2>/dev/null || true
    wait_for 60 "qmaster exit" bash -c "! kill -0 $mpid"
    echo "$HOST" > "$COMMON/act_qmaster"; chown sgeadmin:sgeadmin "$COMMON/act_qmaster"
fi
if pid_alive "$QMASTER_PIDFILE"; then
    log "sge_qmaster already running (pid $(cat $QMASTER_PIDFILE))"
else
    log "starting sge_qmaster"
    install -d -o sgeadmin -g sgeadmin /var/run/gridengine
    # clean environment: jobs inherit the execd's environment, so don't leak ours into them
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL \
        /usr/sbin/sge_qmaster      # daemonizes, drops privileges to sgeadmin
fi
wait_for 60 "qmaster answering (qconf -sh)" qconf -sh

# ------------------------------------------------------------- 5. configure
log "applying configuration"
# admin + submit host (exec host is auto-registered by execd on an admin host)
qconf -sh 2>/dev/null | grep -qx "$HOST" || qconf -ah "$HOST" >/dev/null
qconf -ss 2>/dev/null | grep -qx "$HOST" || qconf -as "$HOST" >/dev/null

# global configuration: allow root jobs (min_uid/min_gid 0), fast accounting flush,
# fast load reports.
qconf -sconf global > "$WORK/global"
sed -i -e 's/^min_uid .*/min_uid                      0/' \
       -e 's/^min_gid .*/min_gid                      0/' \
       -e 's/^load_report_time .*/load_report_time             00:00:05/' \
       -e 's/^finished_jobs .*/finished_jobs                100/' \
       "$WORK/global"
# reporting_params is a continued (backslash) multi-line entry: rewrite it whole
awk 'BEGIN{skip=0}
     /^reporting_params/ {print "reporting_params             accounting=true reporting=false flush_time=00:00:01 joblog=false sharelog=00:00:00"; skip=1; if ($0 !~ /\\$/) skip=0; next}
     skip==1 { if ($0 !~ /\\$/) skip=0; next }
     {print}' "$WORK/global" > "$WORK/global.new" && mv "$WORK/global.new" "$WORK/global"
sed -i '1{/^#global:/d}' "$WORK/global"
GLOBAL_BEFORE=$(qconf -sconf global | md5sum)
qconf -Mconf "$WORK/global" >/dev/null
GLOBAL_CHANGED=0
[ "$GLOBAL_BEFORE" = "$(qconf -sconf global | md5sum)" ] || GLOBAL_CHANGED=1

# scheduler: schedule every second, run immediately on submit/finish, no load adjustments
qconf -ssconf > "$WORK/sconf"
sed -i -e 's/^schedule_interval .*/schedule_interval                 0:0:1/' \
       -e 's/^flush_submit_sec .*/flush_submit_sec                  1/' \
       -e 's/^flush_finish_sec .*/flush_finish_sec                  1/' \
       -e 's/^job_load_adjustments .*/job_load_adjustments              NONE/' \
       -e 's/^load_adjustment_decay_time .*/load_adjustment_decay_time        0:0:0/' \
       -e 's/^schedd_job_info .*/schedd_job_info                   true/' \
       "$WORK/sconf"
qconf -Msconf "$WORK/sconf" >/dev/null

# complexes: gpus (consumable INT), gpu_c (DOUBLE), gpu_memory (MEMORY); relop "<=" means request <= host value; gpus is a per-JOB consumable
qconf -sc | grep -vE '^(gpus|gpu_c|gpu_memory)[[:space:]]' > "$WORK/complex"
cat >> "$WORK/complex" <<'EOF'
gpus                gpus       INT       <=    YES         JOB        0        0
gpu_c               gpu_c      DOUBLE    <=    YES         NO         0        0
gpu_memory          gpu_memory MEMORY    <=    YES         NO         0        0
EOF
qconf -Mc "$WORK/complex" >/dev/null

# parallel environment "omp" ($pe_slots = all slots on one host)
cat > "$WORK/pe_omp" <<EOF
pe_name            omp
slots              $SGE_PE_SLOTS
user_lists         NONE
xuser_lists        NONE
start_proc_args    NONE
stop_proc_args     NONE
allocation_rule    \$pe_slots
control_slaves     TRUE
job_is_first_task  TRUE
urgency_slots      min
accounting_summary TRUE
qsort_args         NONE
EOF
if qconf -sp omp >/dev/null 2>&1; then qconf -Mp "$WORK/pe_omp" >/dev/null; else qconf -Ap "$WORK/pe_omp" >/dev/null; fi

# queue all.q
cat > "$WORK/all.q" <<EOF
qname                 all.q
hostlist              $HOST
seq_no                0
load_thresholds       NONE
suspend_thresholds    NONE
nsuspend              1
suspend_interval      00:05:00
priority              0
min_cpu_interval      00:05:00
processors            UNDEFINED
qtype                 BATCH INTERACTIVE
ckpt_list             NONE
pe_list               omp
rerun                 FALSE
slots                 $SGE_SLOTS
tmpdir                /tmp
shell                 /bin/bash
prolog                NONE
epilog                NONE
shell_start_mode      unix_behavior
starter_method        NONE
suspend_method        NONE
resume_method         NONE
terminate_method      NONE
notify                $SGE_NOTIFY
owner_list            NONE
user_lists            NONE
xuser_lists           NONE
subordinate_list      NONE
complex_values        NONE
projects              NONE
xprojects             NONE
calendar              NONE
initial_state         default
s_rt                  INFINITY
h_rt                  INFINITY
s_cpu                 INFINITY
h_cpu                 INFINITY
s_fsize               INFINITY
h_fsize               INFINITY
s_data                INFINITY
h_data                INFINITY
s_stack               INFINITY
h_stack               INFINITY
s_core                INFINITY
h_core                INFINITY
s_rss                 INFINITY
h_rss                 INFINITY
s_vmem                INFINITY
h_vmem                INFINITY
EOF
if qconf -sq all.q >/dev/null 2>&1; then qconf -Mq "$WORK/all.q" >/dev/null; else qconf -Aq "$WORK/all.q" >/dev/null; fi

# ------------------------------------------------------------- 6. start execd
EPF=$(execd_pidfile)
if pid_alive "$EPF" && [ "$GLOBAL_CHANGED" = 1 ]; then
    # a running execd does not pick up e.g. min_uid changes: restart it
    log "global config changed: restarting sge_execd"
    epid=$(cat "$EPF"); qconf -ke "$HOST" >/dev/null 2>&1 || kill "$epid"
    wait_for 30 "execd exit" bash -c "! kill -0 $epid"
fi
if pid_alive "$EPF"; then
    log "sge_execd already running (pid $(cat "$EPF"))"
else
    log "starting sge_execd"
    install -d -o sgeadmin -g sgeadmin /var/spool/gridengine/execd /run/gridengine
    env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8 SGE_ROOT=$SGE_ROOT SGE_CELL=$SGE_CELL \
        SGE_EXECD_PIDFILE=/run/gridengine/execd.pid /usr/sbin/sge_execd
fi
# exec host object exists once execd registered (or add it explicitly)
wait_for 30 "exec host $HOST registered" bash -c "qconf -sel 2>/dev/null | grep -qx '$HOST'"
qconf -mattr exechost complex_values "$SGE_HOST_CV" "$HOST" >/dev/null 2>&1 || true

# queue instance usable = not in state u(nknown)/E(rror)/d(isabled)
qinst_ok() {
    local st
    st=$(qstat -f -q "all.q@$HOST" 2>/dev/null | awk -v q="all.q@$HOST" '$1==q{print $6}')
    [ -z "$st" ] && qstat -f -q "all.q@$HOST" 2>/dev/null | grep -q "^all.q@$HOST"
}
# clear a possible E(rror) state left over from a previous run (e.g. a failed root job)
qmod -c "all.q@$HOST" >/dev/null 2>&1 || true
qmod -e "all.q@$HOST" >/dev/null 2>&1 || true
wait_for 60 "queue instance all.q@$HOST healthy" qinst_ok

# ------------------------------------------------------ 7. unprivileged user
if [ -n "$SGE_TEST_USER" ] && ! id "$SGE_TEST_USER" >/dev/null 2>&1; then
    log "creating unprivileged user $SGE_TEST_USER"
    useradd -m -s /bin/bash "$SGE_TEST_USER"
fi

T1=$(date +%s.%N)
log "SGE up in $(awk -v a="$T0" -v b="$T1" 'BEGIN{printf "%.1f", b-a}') s"
qstat -f -u '*'
