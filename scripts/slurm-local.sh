#!/usr/bin/env bash
# A real single-node SLURM cluster on this machine, for the cluster tests and for trying sweeps:
# munge, slurmctld, slurmd, and accounting (slurmdbd on MariaDB), which submitit needs to see job
# states. Debian 12 packages, run as root, no systemd.
#
#   bash scripts/slurm-local.sh up          # install what is missing, (re)start, wait until a job runs
#   bash scripts/slurm-local.sh down        # cancel what is queued, stop every daemon it started
#   SLURM_LOCAL_ACCOUNTING=0 bash scripts/slurm-local.sh up   # the same cluster with accounting off
#
# `up` is idempotent (it restarts the daemons with the same config), resumes a node that an earlier
# run left drained or down, and takes about 3 s once the packages are installed. Requeued jobs may
# start again after 10 s (AuthInfo=cred_expire=10; the default 120 s makes a requeue-and-resume take
# minutes), and the scheduler runs every 2 s.
set -euo pipefail
ACCT=${SLURM_LOCAL_ACCOUNTING:-1}
LOGDIR=${SLURM_LOCAL_LOGDIR:-/tmp/slurm-local}
export DEBIAN_FRONTEND=noninteractive
t0=$(date +%s%N)
log() { local ds=$(( ($(date +%s%N) - t0) / 100000000 )); echo "[slurm-local +$((ds / 10)).$((ds % 10))s] $*"; }
waitfor() {  # waitfor SECONDS CMD...: poll CMD every 0.25 s
  local n=$(( $1 * 4 )); shift
  for _ in $(seq 1 "$n"); do "$@" >/dev/null 2>&1 && return 0; sleep 0.25; done
  echo "slurm-local: timed out waiting for: $*" >&2; return 1
}
stop_pidfile() {  # stop a daemon by its pid file (never by name: other daemons may share it)
  local f=$1 pid
  [ -s "$f" ] || return 0
  pid=$(cat "$f")
  if kill -0 "$pid" 2>/dev/null; then
    kill "$pid"
    for _ in $(seq 1 60); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
  fi
  rm -f "$f"
}

diagnose() {  # say why the node is not taking jobs, then fail
  echo "slurm-local: node state: $(sinfo -h -N -o '%T (%E)' 2>&1 | head -1)" >&2
  for f in /var/log/slurm/slurmctld.log /var/log/slurm/slurmd.log; do
    echo "--- last lines of $f" >&2; tail -n 15 "$f" >&2 2>/dev/null || true
  done
  exit 1
}

down() {
  if command -v squeue >/dev/null && squeue -h >/dev/null 2>&1; then
    ids=$(squeue -h -o %A)
    [ -n "$ids" ] && scancel $ids
    for _ in $(seq 1 30); do [ -z "$(squeue -h 2>/dev/null)" ] && break; sleep 0.5; done
  fi
  for f in /run/slurmd.pid /run/slurmctld.pid /run/slurmdbd.pid /run/mysqld/mysqld.pid /run/munge/munged.pid; do
    stop_pidfile "$f"
  done
  echo "slurm-local: stopped"
}

up() {
  [ "$(id -u)" = 0 ] || { echo "slurm-local: run as root (it installs packages and starts daemons)" >&2; exit 1; }
  mkdir -p "$LOGDIR"
  # 1. packages, only what is missing
  local pkgs="munge slurmctld slurmd slurm-client" missing
  [ "$ACCT" = 1 ] && pkgs="$pkgs slurmdbd mariadb-server"
  missing=$(for p in $pkgs; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || echo "$p"; done)
  if [ -n "$missing" ]; then
    echo "slurm-local: installing $(echo $missing)"
    apt-get update -qq >"$LOGDIR/apt.log" 2>&1
    apt-get install -y -qq --no-install-recommends $missing >>"$LOGDIR/apt.log" 2>&1 \
      || { echo "slurm-local: apt-get failed, see $LOGDIR/apt.log" >&2; exit 1; }
  fi
  log "slurm $(slurmd -V | awk '{print $2}')"

  # 2. munge: the shared secret every daemon and client authenticates with
  [ -s /etc/munge/munge.key ] || mungekey --create --keyfile=/etc/munge/munge.key
  chown munge:munge /etc/munge/munge.key && chmod 0400 /etc/munge/munge.key
  install -d -o munge -g munge -m 0755 /run/munge
  install -d -o munge -g munge -m 0711 /var/lib/munge
  install -d -o munge -g munge -m 0700 /var/log/munge
  if ! munge -n 2>/dev/null | unmunge >/dev/null 2>&1; then
    runuser -u munge -- /usr/sbin/munged --force
    waitfor 10 sh -c 'munge -n | unmunge'
  fi
  log "munged up"

  # 3. slurm.conf: one node, described by `slurmd -C`
  local host node acct_lines
  host=$(hostname -s)
  node=$(slurmd -C | head -1 | sed -E 's/^NodeName=[^ ]+ //')
  install -d /etc/slurm /var/lib/slurm/slurmctld /var/lib/slurm/slurmd /var/log/slurm
  if [ "$ACCT" = 1 ]; then
    acct_lines=$'AccountingStorageType=accounting_storage/slurmdbd\nAccountingStorageHost=localhost\nAccountingStoragePort=6819'
  else
    acct_lines="AccountingStorageType=accounting_storage/none"
  fi
  cat >/etc/slurm/slurm.conf <<EOF
# single-node cluster for autolab's tests (scripts/slurm-local.sh): no cgroups, root daemons
ClusterName=autolab
SlurmctldHost=${host}(127.0.0.1)
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
# cred_expire also sets how long a requeued job waits before it may start again (default 120 s)
AuthInfo=cred_expire=10
CryptoType=crypto/munge
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
${acct_lines}
JobCompType=jobcomp/none
SchedulerType=sched/backfill
SchedulerParameters=bf_interval=1,sched_interval=2
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
StateSaveLocation=/var/lib/slurm/slurmctld
SlurmdSpoolDir=/var/lib/slurm/slurmd
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
MinJobAge=300
KillWait=10
Waittime=0
NodeName=${host} NodeAddr=127.0.0.1 ${node} State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF

  # 4. accounting: MariaDB + slurmdbd (sacct is how submitit sees a job's state)
  if [ "$ACCT" = 1 ]; then
    install -d -o mysql -g mysql -m 0755 /run/mysqld
    if ! mariadb-admin ping >/dev/null 2>&1; then
      setsid -f /usr/sbin/mariadbd --user=mysql </dev/null >"$LOGDIR/mariadbd.log" 2>&1
      waitfor 60 mariadb-admin ping
    fi
    log "mariadb up"
    mariadb -e "CREATE DATABASE IF NOT EXISTS slurm_acct_db;
      CREATE USER IF NOT EXISTS 'slurm'@'localhost' IDENTIFIED BY 'slurmlocal';
      GRANT ALL ON slurm_acct_db.* TO 'slurm'@'localhost'; FLUSH PRIVILEGES;"
    cat >/etc/slurm/slurmdbd.conf <<'EOF'
AuthType=auth/munge
DbdHost=localhost
DbdPort=6819
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=localhost
StorageLoc=slurm_acct_db
StorageUser=slurm
StoragePass=slurmlocal
PidFile=/run/slurmdbd.pid
LogFile=/var/log/slurm/slurmdbd.log
DebugLevel=info
EOF
    chown root:root /etc/slurm/slurmdbd.conf && chmod 0600 /etc/slurm/slurmdbd.conf
    stop_pidfile /run/slurmdbd.pid
    slurmdbd
    waitfor 60 sacctmgr -n show cluster
    sacctmgr -n -P show cluster format=cluster | grep -qx autolab || sacctmgr -i add cluster autolab >/dev/null
    log "slurmdbd up, cluster 'autolab' registered"
  else
    stop_pidfile /run/slurmdbd.pid
  fi

  # 5. controller and node daemon; wait until the node takes jobs
  stop_pidfile /run/slurmd.pid
  stop_pidfile /run/slurmctld.pid
  slurmctld
  slurmd
  # A drain or down set by an earlier run (a job whose tasks would not die, a node that stopped
  # answering) is kept in StateSaveLocation across restarts and never clears by itself.
  local state
  waitfor 60 sh -c '[ -n "$(sinfo -h -N -o %T | head -1)" ]' || diagnose
  state=$(sinfo -h -N -o '%T|%E' | head -1)
  case "${state%%|*}" in
    drain*|down*|fail*)
      log "node was ${state%%|*} (${state#*|}) from an earlier run: resuming it"
      scontrol update nodename="$host" state=resume ;;
  esac
  waitfor 60 sh -c '[ "$(sinfo -h -N -o %T | head -1)" = idle ]' || diagnose
  timeout 60 srun -t 1 true
  log "up: $(sinfo -h -o '%P %D node, %c CPUs, %m MB')"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  *) echo "usage: bash scripts/slurm-local.sh up|down" >&2; exit 2 ;;
esac
