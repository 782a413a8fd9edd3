#!/usr/bin/env bash
# A throw-away single-node SLURM cluster on this machine, for developers and CI.
#
#   scripts/slurm/local-cluster.sh start [--fake-gpus N] [--state DIR]
#   scripts/slurm/local-cluster.sh stop  [--state DIR]   (default: the last one started)
#   scripts/slurm/local-cluster.sh status [--state DIR]
#
# start: installs Debian's slurm-wlm and munge when missing (apt), wipes the state folder
# (default /tmp/bilora-slurm, or $BILORA_SLURM_STATE), makes a root-owned munge key, writes
# /etc/slurm/slurm.conf (jobs' nested `srun` only finds it there) with this machine's
# geometry from `slurmd -C`, starts munged, slurmctld and slurmd as plain root daemons and
# waits until the node is idle. --fake-gpus N (or $BILORA_SLURM_FAKE_GPUS) declares N GPUs
# backed by character devices, enough to schedule `--gpus` requests; nothing computes on them.
# stop: ends the three daemons by their pid files (slurmd, slurmctld, munged) and removes the
# config files it wrote; idempotent.
# Needs root. Refuses to touch a /etc/slurm/slurm.conf it did not write.
set -euo pipefail

STATE=${BILORA_SLURM_STATE:-/tmp/bilora-slurm}
FAKE_GPUS=${BILORA_SLURM_FAKE_GPUS:-0}
CONF_DIR=/etc/slurm
CONF=$CONF_DIR/slurm.conf
GRES_CONF=$CONF_DIR/gres.conf
MARKER="# written by bilora-bench scripts/slurm/local-cluster.sh"
WAIT_S=${BILORA_SLURM_WAIT_S:-60}

die() { echo "local-cluster: $*" >&2; exit 1; }

usage() { sed -n '2,16p' "$0" | sed 's/^# \{0,1\}//'; exit "${1:-0}"; }

cmd=${1:-}
STATE_GIVEN=
[ -n "$cmd" ] || usage 2
shift
while [ $# -gt 0 ]; do
    case $1 in
        --fake-gpus) FAKE_GPUS=${2:?--fake-gpus needs a number}; shift 2 ;;
        --fake-gpus=*) FAKE_GPUS=${1#*=}; shift ;;
        --state) STATE=${2:?--state needs a folder}; STATE_GIVEN=1; shift 2 ;;
        --state=*) STATE=${1#*=}; STATE_GIVEN=1; shift ;;
        -h|--help) usage 0 ;;
        *) die "unknown argument: $1" ;;
    esac
done
[[ $FAKE_GPUS =~ ^[0-9]+$ ]] || die "--fake-gpus: not a number: $FAKE_GPUS"
if [ -z "${BILORA_SLURM_STATE:-}" ] && [ -z "$STATE_GIVEN" ] && [ -f "$CONF" ]; then
    # no folder given: the one of the cluster this script started last
    recorded=$(sed -n 's/^# state folder: \(.*\) (wiped on every start)$/\1/p' "$CONF")
    if [ "$cmd" != start ] && [ -n "$recorded" ]; then STATE=$recorded; fi
fi
STATE=$(realpath -m "$STATE")
case $STATE in /|/tmp|/etc*|/usr*|/var|/root|/home) die "--state $STATE: refusing to use a system folder" ;; esac

stop_pidfile() {  # stop_pidfile NAME FILE: SIGTERM, then SIGKILL after 10 s
    local name=$1 file=$2 pid
    [ -f "$file" ] || return 0
    pid=$(cat "$file" 2>/dev/null || true)
    if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
        kill "$pid" 2>/dev/null || true
        for _ in $(seq 100); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
        if kill -0 "$pid" 2>/dev/null; then
            echo "local-cluster: $name ($pid) ignored SIGTERM for 10 s: SIGKILL" >&2
            kill -9 "$pid" 2>/dev/null || true
        fi
    fi
    rm -f "$file"
}

do_stop_in() {  # do_stop_in STATE_FOLDER
    stop_pidfile slurmd "$1/run/slurmd.pid"
    stop_pidfile slurmctld "$1/run/slurmctld.pid"
    stop_pidfile munged "$1/run/munged.pid"
}

do_stop() {
    do_stop_in "$STATE"
    # no config left behind: with a slurm.conf and no controller, every `scontrol` (and so
    # every Snakemake start with the SLURM plugin installed) waits 10 s for an answer
    local f
    for f in "$CONF" "$GRES_CONF"; do
        if [ -f "$f" ] && grep -qF "$MARKER" "$f"; then rm -f "$f"; fi
    done
}

show_logs() {
    for f in "$STATE"/log/*.log; do
        [ -f "$f" ] || continue
        echo "---- $f (last 20 lines)" >&2
        tail -n 20 "$f" >&2
    done
}

fail_start() {
    echo "local-cluster: $*" >&2
    echo "local-cluster: logs are in $STATE/log/" >&2
    show_logs
    do_stop
    exit 1
}

install_packages() {
    local missing=()
    command -v slurmctld >/dev/null || missing+=(slurmctld)
    command -v slurmd >/dev/null || missing+=(slurmd)
    command -v sbatch >/dev/null || missing+=(slurm-client)
    command -v munged >/dev/null || missing+=(munge)
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null || die "missing ${missing[*]} and no apt-get to install them"
    echo "local-cluster: installing slurmctld slurmd slurm-client munge (apt)" >&2
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2 || die "apt-get update failed"
    apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >&2 \
        || die "apt-get install slurmctld slurmd slurm-client munge failed"
}

node_line() {  # this machine's geometry, RealMemory 1 GiB below what slurmd sees
    local line mem
    line=$(slurmd -C | head -n 1)
    [[ $line == NodeName=* ]] || die "slurmd -C printed no node line: $line"
    mem=$(sed -n 's/.*RealMemory=\([0-9]*\).*/\1/p' <<<"$line")
    [ -n "$mem" ] && [ "$mem" -gt 1536 ] || die "slurmd -C: RealMemory too small or missing: $line"
    line=$(sed "s/RealMemory=[0-9]*/RealMemory=$((mem - 1024))/" <<<"$line")
    echo "$line NodeAddr=127.0.0.1 State=UNKNOWN"
}

do_start() {
    [ "$(id -u)" -eq 0 ] || die "needs root (it writes $CONF and runs the daemons as root)"
    if [ -f "$CONF" ] && ! grep -qF "$MARKER" "$CONF"; then
        die "$CONF exists and was not written by this script: refusing to replace it"
    fi
    install_packages
    if [ -e "$STATE" ] && [ ! -f "$STATE/.bilora-slurm" ] && [ -n "$(ls -A "$STATE")" ]; then
        die "$STATE is not empty and not a bilora-slurm state folder: refusing to wipe it"
    fi
    # a cluster this script started before, from another state folder: stop it first
    local prev
    prev=$(sed -n 's/^# state folder: \(.*\) (wiped on every start)$/\1/p' "$CONF" 2>/dev/null || true)
    if [ -n "$prev" ] && [ "$prev" != "$STATE" ]; then
        do_stop_in "$prev"
    fi
    do_stop
    local d pid
    d=$(dirname "$STATE")
    while [ "$d" != / ]; do  # munged wants its socket's folders searchable by everyone
        [ -e "$d" ] && [ $(( 0$(stat -c %a "$d") & 1 )) -eq 0 ] \
            && die "--state $STATE: $d is not searchable by others (munged needs it): pick another folder"
        d=$(dirname "$d")
    done
    for d in slurmctld slurmd; do
        pid=$(pgrep -x "$d" | head -n 1 || true)
        [ -z "$pid" ] || die "a $d not started by this script is running (pid $pid): stop it first"
    done
    rm -rf "$STATE"
    mkdir -p "$STATE"/{run,log,munge,spool/ctld,spool/d,dev}
    chmod 0755 "$STATE"
    chmod 0755 "$STATE/munge"  # munged: the socket folder must be searchable by all
    touch "$STATE/.bilora-slurm"

    local node host name
    node=$(node_line)
    name=$(sed -n 's/^NodeName=\([^ ]*\).*/\1/p' <<<"$node")
    host=$(hostname -s)
    mkdir -p "$CONF_DIR"
    rm -f "$GRES_CONF"
    local gres_types="" 
    if [ "$FAKE_GPUS" -gt 0 ]; then
        for i in $(seq 0 $((FAKE_GPUS - 1))); do
            mknod -m 666 "$STATE/dev/nvidia$i" c 1 3 || die "mknod $STATE/dev/nvidia$i failed"
        done
        node="$node Gres=gpu:fake:$FAKE_GPUS"
        gres_types="GresTypes=gpu"
        printf '%s\nNodeName=%s Name=gpu Type=fake File=%s/dev/nvidia[0-%d]\n' \
            "$MARKER" "$name" "$STATE" "$((FAKE_GPUS - 1))" >"$GRES_CONF"
    fi
    cat >"$CONF" <<EOF
$MARKER
# state folder: $STATE (wiped on every start)
ClusterName=bilora-local
SlurmctldHost=$host(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$STATE/munge/munge.socket
MpiDefault=none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/backfill
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# the Snakemake plugin polls squeue: a finished job must stay visible (>= 3x its first wait)
MinJobAge=300
# seconds between SIGTERM and SIGKILL when a job hits its time limit or is cancelled
KillWait=30
StateSaveLocation=$STATE/spool/ctld
SlurmdSpoolDir=$STATE/spool/d
SlurmctldPidFile=$STATE/run/slurmctld.pid
SlurmdPidFile=$STATE/run/slurmd.pid
SlurmctldLogFile=$STATE/log/slurmctld.log
SlurmdLogFile=$STATE/log/slurmd.log
$gres_types
$node
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

    mungekey --create --keyfile="$STATE/munge/munge.key" >/dev/null 2>&1 \
        || fail_start "mungekey --create failed"
    chown root:root "$STATE/munge/munge.key"
    chmod 0400 "$STATE/munge/munge.key"
    munged --socket="$STATE/munge/munge.socket" --key-file="$STATE/munge/munge.key" \
        --pid-file="$STATE/run/munged.pid" --log-file="$STATE/log/munged.log" \
        --seed-file="$STATE/munge/munge.seed" 2>>"$STATE/log/munged.log" \
        || fail_start "munged did not start"
    slurmctld 2>>"$STATE/log/slurmctld.log" || fail_start "slurmctld did not start"
    slurmd 2>>"$STATE/log/slurmd.log" || fail_start "slurmd did not start"

    local deadline=$((SECONDS + WAIT_S)) st=""
    while [ $SECONDS -lt $deadline ]; do
        st=$(sinfo -h -n "$name" -o %t 2>/dev/null | head -n 1 || true)
        [ "$st" = idle ] && break
        sleep 0.2
    done
    [ "$st" = idle ] || fail_start "node $name is not idle after ${WAIT_S}s (state: ${st:-no answer})"
    echo "local-cluster: up: node $name idle, ${FAKE_GPUS} fake GPU(s), conf $CONF, logs $STATE/log/"
}

do_status() {
    local d pid up=0
    for d in munged slurmctld slurmd; do
        pid=$(cat "$STATE/run/$d.pid" 2>/dev/null || true)
        if [[ $pid =~ ^[0-9]+$ ]] && kill -0 "$pid" 2>/dev/null; then
            echo "$d: running ($pid)"; up=$((up + 1))
        else
            echo "$d: stopped"
        fi
    done
    [ $up -eq 3 ] && sinfo
}

case $cmd in
    start) do_start ;;
    stop) do_stop; echo "local-cluster: stopped (state in $STATE)" ;;
    status) do_status ;;
    -h|--help|help) usage 0 ;;
    *) usage 2 ;;
esac
