#!/usr/bin/env bash
# Starts a real one-node SLURM cluster on this machine (Debian's slurm-wlm and munge), for the tests:
# one node with this machine's cores, one default partition. Run as root; idempotent: where the node
# already answers, it does nothing. Installs the packages where they are missing.
set -euo pipefail
node=$(hostname)
if sinfo -h -o %T 2>/dev/null | grep -q -E "idle|mixed|allocated"; then
  echo "== SLURM already up on $node"; exit 0
fi
if [ "$(id -u)" != 0 ]; then echo "start_local_cluster.sh: needs root" >&2; exit 1; fi
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
  echo "== installing slurm-wlm and munge"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null
fi

# munge: a key owned by munge, mode 400, and the daemon running as munge.
mkdir -p /etc/munge /run/munge /var/lib/munge /var/log/munge
[ -s /etc/munge/munge.key ] || mungekey -c -f
chown -R munge:munge /etc/munge /run/munge /var/lib/munge /var/log/munge
chmod 400 /etc/munge/munge.key
chmod 755 /run/munge
pgrep -x munged >/dev/null || runuser -u munge -- /usr/sbin/munged
for _ in $(seq 50); do munge -n >/dev/null 2>&1 && break; sleep 0.1; done
munge -n | unmunge >/dev/null

# slurm.conf: this node, its cores, one partition.
state=/var/spool/slurm-local
mkdir -p /etc/slurm "$state/ctld" "$state/d" /var/log/slurm
cat > /etc/slurm/slurm.conf <<CONF
ClusterName=dsurf-local
SlurmctldHost=$node
AuthType=auth/munge
CryptoType=crypto/munge
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
SlurmUser=root
SlurmdUser=root
ReturnToService=2
MpiDefault=none
StateSaveLocation=$state/ctld
SlurmdSpoolDir=$state/d
SlurmctldPidFile=/run/slurmctld.pid
SlurmdPidFile=/run/slurmd.pid
SlurmctldLogFile=/var/log/slurm/slurmctld.log
SlurmdLogFile=/var/log/slurm/slurmd.log
JobRequeue=1
KillWait=10
MinJobAge=600
SchedulerParameters=defer_batch
NodeName=$node CPUs=$(nproc) State=UNKNOWN
PartitionName=debug Nodes=$node Default=YES MaxTime=INFINITE State=UP OverSubscribe=YES
CONF

pgrep -x slurmctld >/dev/null || slurmctld
pgrep -x slurmd >/dev/null || slurmd
for _ in $(seq 100); do
  if sinfo -h -o %T 2>/dev/null | grep -q -E "idle|mixed|allocated"; then
    echo "== SLURM up: $(sinfo -h -o '%P %D %T %c')"; exit 0
  fi
  sleep 0.3
done
echo "start_local_cluster.sh: the node did not become idle; see /var/log/slurm/" >&2
sinfo >&2 || true
exit 1
