# Shared settings of tests/kind/{up,down,build-tools,build-node-image}. Sourced, not run.
# shellcheck shell=bash disable=SC2034 # the settings are used by the scripts that source this
kind_here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# The Kubernetes version (and its binaries' cache) is the test cluster's: one pin for both.
# shellcheck source=../cluster/lib.sh
source "$kind_here/../cluster/lib.sh"

# kind v0.29.0: its default node image is v1.33.1, so its node layout (containerd config v2,
# /kind/manifests, kubeadm v1beta4 config) is the one made for Kubernetes v1.33.
KIND_VERSION="${KIND_VERSION:-v0.29.0}"
# What kubeadm v1.33 expects (`kubeadm config images list`), and the CNI/storage images kind
# v0.29.0's manifests name (pkg/build/nodeimage/const_*.go).
ETCD_VERSION="${ETCD_VERSION:-3.5.24}"
KUBEADM_COREDNS_TAG="v1.12.0"
PAUSE_TAG="3.10"
KINDNETD_REF="docker.io/kindest/kindnetd:v20250512-df8de77b"
LOCAL_PATH_REF="docker.io/kindest/local-path-provisioner:v20250214-acbabc1a"
LOCAL_PATH_HELPER_REF="docker.io/kindest/local-path-helper:v20241212-8ac705d0"
# kind's images/local-path-provisioner/Makefile at KIND_VERSION builds this rancher tag.
LOCAL_PATH_VERSION="v0.0.30"
# The Debian release the node image (and the images that need iptables) are made from.
DEBIAN_SUITE="${KDEV_KIND_DEBIAN_SUITE:-bookworm}"
DEBIAN_MIRROR="${KDEV_KIND_DEBIAN_MIRROR:-http://deb.debian.org/debian}"

KIND_CACHE="$KDEV_CACHE/kind"
KIND_BIN="$KIND_CACHE/kind-$KIND_VERSION/kind"
# kubeadm, etcd: built from their Go modules, keyed by the versions they are built at.
TOOLS_DIR="$KIND_CACHE/tools"
KUBEADM_BIN="$TOOLS_DIR/kubeadm-$K8S_VERSION"
ETCD_BIN="$TOOLS_DIR/etcd-v$ETCD_VERSION"
LOCAL_PATH_BIN="$TOOLS_DIR/local-path-provisioner-$LOCAL_PATH_VERSION"

# The node image: podman finds it with `podman inspect`, so kind never pulls it.
NODE_IMAGE_REPO="localhost/kdev-kind-node"

CLUSTER_NAME="${KDEV_KIND_CLUSTER:-kdev}"
KIND_KUBECONFIG="$KIND_CACHE/kubeconfig-$CLUSTER_NAME"
# The podman network kind creates (and `down` removes), and the chain that keeps its containers
# (the node, and the pods behind it) from reaching anything but this machine.
KIND_NETWORK="kind"
KIND_ISOLATE_CHAIN="KDEV-KIND-ISOLATE"

export KIND_EXPERIMENTAL_PROVIDER=podman
# up writes it; with it podman reads no other containers.conf (see up for why).
KIND_CONTAINERS_CONF="$KDEV_CACHE/kind/containers.conf"
[[ -f $KIND_CONTAINERS_CONF ]] && export CONTAINERS_CONF="$KIND_CONTAINERS_CONF"

klog() { printf '[kind %s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
kdie() { printf 'kind: error: %s\n' "$*" >&2; exit 1; }

# What `up` records for `down`: the iptables chains that existed before it, ip_forward, whether
# it created the podman network.
KIND_STATE="$KIND_CACHE/state-$CLUSTER_NAME"
# The kind network's subnet (fixed, so the isolation rules can name it before any node starts).
KIND_SUBNET="${KDEV_KIND_SUBNET:-10.89.42.0/24}"

kind_cmd() { "$KIND_BIN" "$@"; }
cluster_exists() { [[ -x $KIND_BIN ]] && kind_cmd get clusters 2>/dev/null | grep -qxF "$CLUSTER_NAME"; }
