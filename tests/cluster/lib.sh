# Shared settings of tests/cluster/up, down, build-k8s, build-coredns and build-images. Sourced,
# not run.
# shellcheck shell=bash disable=SC2034 # the settings are used by the scripts that source this

# The one place the cluster's Kubernetes version is pinned (build-k8s builds it, up runs it).
K8S_VERSION="${K8S_VERSION:-v1.33.13}"
KDEV_CACHE="${KDEV_CACHE:-$HOME/.cache/kdev}"
K8S_BIN="$KDEV_CACHE/k8s/$K8S_VERSION/bin"

# Everything the running cluster owns lives below these two directories; `down` removes both.
STATE="${KDEV_CLUSTER_STATE:-/var/lib/kdev-cluster}"
RUN="${KDEV_CLUSTER_RUN:-/run/kdev-cluster}"

NODE_NAME="kdev-node"
# The pods' bridge. Its address is also the node IP and the API server's advertised address, so
# nothing the cluster does needs the VM's own network interface.
BRIDGE="kdev0"
POD_CIDR="10.244.0.0/24"
NODE_IP="10.244.0.1"
SERVICE_CIDR="10.96.0.0/24"
KUBERNETES_SVC_IP="10.96.0.1"
# Cluster DNS: CoreDNS (built by build-coredns into a cache keyed by version, its image by
# build-images) serves the cluster zone behind the kube-dns Service at the conventional 10th
# address of the service range; kubelet hands it to pods as their name server.
COREDNS_VERSION="${COREDNS_VERSION:-v1.14.7}"
COREDNS_BIN="$KDEV_CACHE/coredns/$COREDNS_VERSION/coredns"
COREDNS_IMAGE="kdev.local/coredns:$COREDNS_VERSION"
DNS_SVC_IP="10.96.0.10"
CLUSTER_DOMAIN="cluster.local"
# Volumes: the default StorageClass, served by tests/cluster/provisioner (WaitForFirstConsumer;
# one directory per claim below VOLUMES_DIR, removed with the claim).
STORAGE_CLASS="kdev-local"
PROVISIONER_NAME="kdev.dev/test-cluster-dir"
VOLUMES_DIR="$STATE/volumes"
APISERVER_PORT=6443
ETCD_CLIENT_PORT=23790
ETCD_PEER_PORT=23800
CONTAINERD_SOCK="$RUN/containerd/containerd.sock"
ISOLATE_CHAIN="KDEV-ISOLATE"

# kubelet's cgroupRoot: pods' cgroups live in /sys/fs/cgroup/<hierarchy>/$CGROUP_ROOT/kubepods/…
# (cgroup v1) or /sys/fs/cgroup/$CGROUP_ROOT/kubepods/… (v2). `up` creates it, `down` kills what
# still runs below it and removes it; no other cgroup is touched.
CGROUP_ROOT="kdev-test"
# The iptables chains that existed before `up` started, one file per command and table
# (iptables.filter, ip6tables.nat, …): `down` removes only chains not listed there.
CHAINS_BEFORE="$STATE/chains-before"
IPTABLES_CMDS=(iptables ip6tables)
IPTABLES_TABLES=(filter nat mangle)

# Every mounted cgroup hierarchy (v1: one per controller, plus name=systemd and the hybrid
# `unified`; v2: /sys/fs/cgroup).
cgroup_hierarchies() { findmnt -rn -t cgroup,cgroup2 -o TARGET; }

# user_chains CMD TABLE: the table's user-defined chains (built-in ones have a policy, not `-`),
# one per line. Fails when the table cannot be read (e.g. no IPv6 in the kernel).
user_chains() {
  local save
  save="$("$1-save" -t "$2" 2>/dev/null)" || return 1
  sed -nE 's/^:([^ ]+) - .*/\1/p' <<<"$save"
}

# record_chains DIR: each table's user-defined chains now, in DIR/CMD.TABLE (a table that cannot
# be read gets no record): what existed before a cluster made its own, for remove_new_chains.
record_chains() {
  local dir=$1 cmd table listed
  mkdir -p "$dir"
  for cmd in "${IPTABLES_CMDS[@]}"; do
    for table in "${IPTABLES_TABLES[@]}"; do
      if listed="$(user_chains "$cmd" "$table")"; then
        printf '%s\n' "$listed" >"$dir/$cmd.$table"
      fi
    done
  done
}

# remove_new_chains DIR OURS LOG: in every table recorded in DIR (record_chains), the chains
# made since then for which the function OURS (given the chain's name) succeeds, with every
# rule of an older chain that jumps to one of them; LOG is the caller's log function. A chain
# in the record stays, with its rules. One transaction per table; should it fail, every rule and
# chain is tried on its own.
remove_new_chains() {
  local dir=$1 ours=$2 logf=$3 cmd table record save chain rule line
  for cmd in "${IPTABLES_CMDS[@]}"; do
    for table in "${IPTABLES_TABLES[@]}"; do
      record="$dir/$cmd.$table"
      [[ -f $record ]] || continue
      save="$("$cmd-save" -t "$table" 2>/dev/null)" || continue
      local -A old=() new=()
      while read -r chain; do [[ -n $chain ]] && old[$chain]=1; done <"$record"
      while read -r chain; do
        [[ -n $chain && -z ${old[$chain]:-} ]] && "$ours" "$chain" && new[$chain]=1
      done < <(sed -nE 's/^:([^ ]+) - .*/\1/p' <<<"$save")
      if (( ${#new[@]} )); then
        local ops=()
        while read -r rule; do
          chain=${rule#-A }; chain=${chain%% *}
          [[ -z ${new[$chain]:-} && $rule =~ \ -[jg]\ ([^ ]+) && -n ${new[${BASH_REMATCH[1]}]:-} ]] &&
            ops+=("-D ${rule#-A }")
        done < <(grep -E '^-A ' <<<"$save")
        for chain in "${!new[@]}"; do ops+=("-F $chain"); done
        for chain in "${!new[@]}"; do ops+=("-X $chain"); done
        if ! printf '*%s\n%s\nCOMMIT\n' "$table" "$(printf '%s\n' "${ops[@]}")" |
          "$cmd-restore" -w --noflush 2>/dev/null; then
          for line in "${ops[@]}"; do
            printf '*%s\n%s\nCOMMIT\n' "$table" "$line" | "$cmd-restore" -w --noflush ||
              "$logf" "$cmd -t $table: could not apply: $line"
          done
        fi
        "$logf" "$cmd -t $table: removed ${!new[*]}"
      fi
      unset old new
    done
  done
}

ctr_k8s() { ctr --address "$CONTAINERD_SOCK" --namespace k8s.io "$@"; }

log() { printf '[cluster %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { printf 'cluster: error: %s\n' "$*" >&2; exit 1; }
