#!/usr/bin/env bash
# Build the local stack's binaries from their Go modules, once, cached by version.
#
#   hack/build-binaries.sh            build what is missing, print the bin directory
#   KUBEFT_CACHE=/path hack/build-binaries.sh
#
# Recipes (why each is built the way it is): docs/local-stack.md.
set -euo pipefail

KUBE_VERSION="${KUBE_VERSION:-v1.36.3}"
ETCD_VERSION="${ETCD_VERSION:-v3.6.16}"
KWOK_VERSION="${KWOK_VERSION:-v0.8.0}"
HELM_VERSION="${HELM_VERSION:-v3.19.0}"
# MinIO has no semver tags; this pseudo-version is the last release commit we pin.
MINIO_VERSION="${MINIO_VERSION:-v0.0.0-20260212201848-7aac2a2c5b7c}"  # `latest` resolves and records the newest
KUEUE_VERSION="${KUEUE_VERSION:-v0.17.0}"
REGISTRY_VERSION="${REGISTRY_VERSION:-v3.1.2}"  # CNCF distribution: the OCI registry the exports push to

CACHE="${KUBEFT_CACHE:-$HOME/.cache/kubeft}"
BIN="$CACHE/bin"
export GOMODCACHE="${GOMODCACHE:-$CACHE/go/mod}"
export GOCACHE="${GOCACHE:-$CACHE/go/build}"
export GOWORK=off CGO_ENABLED=0 GOFLAGS=-mod=mod
mkdir -p "$BIN" "$CACHE/src"

log() { echo "[build-binaries] $*" >&2; }

# build NAME VERSION: skip when $BIN/NAME-VERSION exists, link $BIN/NAME to it.
have() { [[ -x "$BIN/$1-$2" ]]; }
link() { ln -sfn "$1-$2" "$BIN/$1"; }

build_kubernetes() {
  local names=(kube-apiserver kube-scheduler kube-controller-manager kubectl) missing=0
  for n in "${names[@]}"; do have "$n" "$KUBE_VERSION" || missing=1; done
  if (( missing )); then
    log "building Kubernetes $KUBE_VERSION (kube-apiserver, kube-scheduler, kube-controller-manager, kubectl)"
    local dir="$CACHE/src/kubernetes-$KUBE_VERSION" minor staging
    rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    minor="${KUBE_VERSION#v1.}"; minor="${minor%%.*}"
    staging="v0.${KUBE_VERSION#v1.}"
    go mod download -json "k8s.io/kubernetes@$KUBE_VERSION" >/dev/null
    local kmod="$GOMODCACHE/cache/download/k8s.io/kubernetes/@v/$KUBE_VERSION.mod"
    {
      echo "module kubeft.local/kubebuild"
      echo
      grep '^go ' "$kmod"
      grep '^godebug ' "$kmod" || true
      echo
      echo "require k8s.io/kubernetes $KUBE_VERSION"
      echo
      echo "replace ("
      # every staging module => its published twin at v0.<minor>.<patch>
      sed -n '/^replace (/,/^)/p' "$kmod" | awk -v v="$staging" '/=> \.\/staging/ {print "\t" $1 " => " $1 " " v}'
      echo ")"
    } > go.mod
    cat > tools.go <<'GO'
//go:build tools

package tools

import (
	_ "k8s.io/kubernetes/cmd/kube-apiserver"
	_ "k8s.io/kubernetes/cmd/kube-controller-manager"
	_ "k8s.io/kubernetes/cmd/kube-scheduler"
	_ "k8s.io/kubernetes/cmd/kubectl"
)
GO
    go mod tidy -e >/dev/null 2>&1 || true
    local ld="-s -w -X k8s.io/component-base/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/client-go/pkg/version.gitVersion=$KUBE_VERSION -X k8s.io/component-base/version.gitTreeState=clean"
    for n in "${names[@]}"; do
      have "$n" "$KUBE_VERSION" && continue
      log "  go build $n"
      go build -tags tools -trimpath -ldflags "$ld" -o "$BIN/$n-$KUBE_VERSION.tmp" "k8s.io/kubernetes/cmd/$n"
      mv "$BIN/$n-$KUBE_VERSION.tmp" "$BIN/$n-$KUBE_VERSION"
    done
  fi
  for n in "${names[@]}"; do link "$n" "$KUBE_VERSION"; done
}

build_etcd() {
  if ! have etcd "$ETCD_VERSION"; then
    log "building etcd $ETCD_VERSION"
    local dir="$CACHE/src/etcd-$ETCD_VERSION"
    rm -rf "$dir"; mkdir -p "$dir"; cd "$dir"
    go mod init kubeft.local/etcdbuild >/dev/null 2>&1
    go get "go.etcd.io/etcd/server/v3@$ETCD_VERSION" >/dev/null 2>&1
    go build -trimpath -ldflags "-s -w" -o "$BIN/etcd-$ETCD_VERSION.tmp" go.etcd.io/etcd/server/v3
    mv "$BIN/etcd-$ETCD_VERSION.tmp" "$BIN/etcd-$ETCD_VERSION"
  fi
  link etcd "$ETCD_VERSION"
}

# go install MODULE/cmd/NAME@VERSION into the cache under NAME-VERSION
go_install() {
  local name="$1" pkg="$2" version="$3"
  if ! have "$name" "$version"; then
    log "building $name $version"
    local tmp="$CACHE/src/gobin-$name-$version"
    rm -rf "$tmp"; mkdir -p "$tmp"
    GOBIN="$tmp" go install -trimpath -ldflags "-s -w ${4:-}" "$pkg@$version"
    mv "$tmp/$name" "$BIN/$name-$version"
  fi
  link "$name" "$version"
}

build_minio() {
  local version="$MINIO_VERSION"
  if [[ "$version" == latest ]]; then
    version="$(cat "$CACHE/minio.version" 2>/dev/null || true)"
    if [[ -z "$version" ]]; then
      version="$(cd "$CACHE/src" && go list -m -f '{{.Version}}' github.com/minio/minio@latest)"
      echo "$version" > "$CACHE/minio.version"
    fi
  fi
  go_install minio github.com/minio/minio "$version"
}

# Kueue's manager (cmd/kueue): its go.mod has no replace directives, so plain `go install`.
# Its CRDs are read by `kubeft dev up` from the same module in $GOMODCACHE (config/components/crd/bases).
build_kueue() {
  go_install kueue sigs.k8s.io/kueue/cmd/kueue "$KUEUE_VERSION" \
    "-X sigs.k8s.io/kueue/pkg/version.GitVersion=$KUEUE_VERSION -X sigs.k8s.io/kueue/pkg/version.GitCommit=$KUEUE_VERSION"
  # the CRDs' source for `kubeft dev up` (a no-op when cached); outside any module's directory
  (cd "$CACHE/src" && go mod download "sigs.k8s.io/kueue@$KUEUE_VERSION")
}

# CNCF distribution's registry (cmd/registry): no replace directives, so plain `go install`;
# basic auth (htpasswd, bcrypt) is compiled in. The binary is named `registry`.
build_registry() {
  go_install registry github.com/distribution/distribution/v3/cmd/registry "$REGISTRY_VERSION" \
    "-X github.com/distribution/distribution/v3/version.version=$REGISTRY_VERSION"
}

what="${1:-all}"
case "$what" in
  all)  build_etcd; go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION"; build_minio; build_kubernetes
        go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
        build_kueue; build_registry ;;
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  kwok) go_install kwok sigs.k8s.io/kwok/cmd/kwok "$KWOK_VERSION" ;;
  minio) build_minio ;;
  kueue) build_kueue ;;
  registry) build_registry ;;
  helm) go_install helm helm.sh/helm/v3/cmd/helm "$HELM_VERSION" "-X helm.sh/helm/v3/internal/version.version=$HELM_VERSION" ;;
  *) echo "usage: $0 [all|kubernetes|etcd|kwok|minio|helm|kueue|registry]" >&2; exit 2 ;;
esac
echo "$BIN"
