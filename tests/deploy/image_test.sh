#!/usr/bin/env bash
# Builds the CPU image from the top-level Dockerfile without a Docker daemon (buildah, chroot
# isolation, vfs storage, a local debian:12 base made with debootstrap) and runs its default start
# as the image user: health, a Generate, /metrics, then SIGTERM during a Generate and a clean
# exit 0 after the drain; once more with a read-only root and tmpfs at the cache dir, as the
# Kubernetes Deployment runs it. Checks that the image does not run as root and stays within a
# size budget.
#
# usage: tests/deploy/image_test.sh [REPO_ROOT]
# Opt-in (slow: the image compiles the project): SBSERVE_IMAGE_TEST=1, else exit 77 (CTest: skipped).
# Needs root (debootstrap, buildah chroot isolation) and deb.debian.org for the apt-get steps.
# environment:
#   SBSERVE_IMAGE_CACHE      base tarball and buildah storage (default ~/.cache/sbserve-image, about
#                            0.4 GB between runs); the base is reused, the image is rebuilt each run
#   SBSERVE_IMAGE_JOBS       BUILD_JOBS inside the image (default 2)
#   SBSERVE_IMAGE_BUDGET_MB  largest allowed size of the runtime image's filesystem (default 300)
#   SBSERVE_IMAGE_PORT       gRPC port on 127.0.0.1 (default 47351; metrics on the next port)
#   SBSERVE_DEBIAN_MIRROR    debootstrap mirror (default http://deb.debian.org/debian)
# A && B || fail: fail when either check fails; single quotes: Go templates and an inner sh script.
# shellcheck disable=SC2015,SC2016
set -euo pipefail
if [ "${SBSERVE_IMAGE_TEST:-0}" != 1 ]; then
  echo "image test skipped: set SBSERVE_IMAGE_TEST=1 to build and run the image (10-30 min)"
  exit 77
fi
root=$(cd "${1:-$(dirname "$0")/../..}" && pwd)
cache=${SBSERVE_IMAGE_CACHE:-${HOME:-/root}/.cache/sbserve-image}
jobs=${SBSERVE_IMAGE_JOBS:-2}
budget_mb=${SBSERVE_IMAGE_BUDGET_MB:-300}
port=${SBSERVE_IMAGE_PORT:-47351}
mport=$((port + 1))
mirror=${SBSERVE_DEBIAN_MIRROR:-http://deb.debian.org/debian}
image=localhost/sbserve:cpu-test

fail() { echo "FAIL: $*" >&2; exit 1; }
for tool in buildah debootstrap curl; do
  command -v "$tool" >/dev/null || fail "$tool is missing (deploy/setup.sh installs it)"
done
[ "$(id -u)" = 0 ] || fail "needs root: debootstrap and buildah --isolation chroot"
mkdir -p "$cache"
bh() { buildah --root "$cache/storage" --runroot "$cache/run" --storage-driver vfs "$@"; }
now() { date +%s; }
t_start=$(now)

# 1. A local debian:12 base. The Docker Hub images are debootstrap --variant=minbase trees too;
#    this one gets the -slim treatment (no docs, man pages or locales) and serves as both
#    debian:12 and debian:12-slim, so the Dockerfile builds unchanged with --pull=never.
base_tar=$cache/debian12-minbase.tar
if ! bh inspect --type image docker.io/library/debian:12-slim >/dev/null 2>&1; then
  if [ ! -s "$base_tar" ]; then
    if [ ! -d "$cache/rootfs" ]; then
      echo "== debootstrap bookworm (minbase) from $mirror"
      rm -rf "$cache/rootfs.tmp"
      debootstrap --variant=minbase bookworm "$cache/rootfs.tmp" "$mirror" >"$cache/debootstrap.log" 2>&1 ||
        { tail -20 "$cache/debootstrap.log"; fail "debootstrap"; }
      mv "$cache/rootfs.tmp" "$cache/rootfs"
    fi
    cat >"$cache/rootfs/etc/dpkg/dpkg.cfg.d/docker" <<'CFG'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
CFG
    rm -f "$cache/rootfs/etc/apt/sources.list"
    cat >"$cache/rootfs/etc/apt/sources.list.d/debian.sources" <<SRC
Types: deb
URIs: ${mirror}
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
URIs: ${mirror%/debian}/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SRC
    find "$cache/rootfs/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete
    rm -rf "$cache/rootfs/usr/share/man/"* "$cache/rootfs/usr/share/info/"* "$cache/rootfs/usr/share/locale/"* \
      "$cache/rootfs/var/cache/apt/"*.bin "$cache/rootfs/var/cache/apt/archives/"*.deb "$cache/rootfs/var/lib/apt/lists/"*
    tar -C "$cache/rootfs" --numeric-owner -cf "$base_tar.tmp" . && mv "$base_tar.tmp" "$base_tar"
    rm -rf "$cache/rootfs"
  fi
  echo "== importing the base into $cache/storage"
  ctr=$(bh from scratch)
  mnt=$(bh mount "$ctr")
  tar -C "$mnt" --numeric-owner -xpf "$base_tar"
  bh umount "$ctr" >/dev/null
  bh config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd bash "$ctr"
  bh commit -q "$ctr" docker.io/library/debian:12 >/dev/null
  bh tag docker.io/library/debian:12 docker.io/library/debian:12-slim
  bh rm "$ctr" >/dev/null
fi
t_base=$(now)

# 2. The CPU image, exactly as `docker build -t sbserve:cpu .` would build it. No --layers: with
#    vfs every cached step is a full copy of the stage's tree (~840 MiB for the build stage), so a
#    fully cached rebuild measured slower (~15 min) than one working container per stage.
#    The storage is this test's own: containers left by an interrupted run are removed first,
#    the previous image (untagged by the new one) afterwards.
bh rm --all >/dev/null 2>&1 || true
echo "== buildah bud (BUILD_JOBS=$jobs)"
bh bud --isolation chroot --pull=never --build-arg BUILD_JOBS="$jobs" \
  -t "$image" -f "$root/Dockerfile" "$root" >"$cache/build.log" 2>&1 ||
  { tail -40 "$cache/build.log"; fail "image build (log: $cache/build.log)"; }
bh rmi --prune >/dev/null 2>&1 || true
t_build=$(now)

# 3. Static checks on the image: user, volume, environment, contents, size.
cfg() { bh inspect --type image --format "$1" "$image"; }
user=$(cfg '{{.OCIv1.Config.User}}')
[ "$user" = 10001 ] || fail "image USER is '$user', expected 10001"
volumes=$(cfg '{{range $k, $v := .OCIv1.Config.Volumes}}{{$k}} {{end}}')
[[ " $volumes " == *" /var/cache/sbserve "* ]] || fail "no VOLUME /var/cache/sbserve (have: $volumes)"
env_list=$(cfg '{{range .OCIv1.Config.Env}}{{.}}{{"\n"}}{{end}}')
grep -qx 'SBSERVE_CACHE_DIR=/var/cache/sbserve' <<<"$env_list" || fail "SBSERVE_CACHE_DIR not set: $env_list"
mapfile -t image_env < <(sed '/^$/d' <<<"$env_list")
mapfile -t start < <(bh inspect --type image --format '{{range .OCIv1.Config.Entrypoint}}{{.}}{{"\n"}}{{end}}{{range .OCIv1.Config.Cmd}}{{.}}{{"\n"}}{{end}}' "$image" | sed '/^$/d')
[ "${start[0]:-}" = /usr/local/bin/sbserve ] || fail "entrypoint is '${start[*]}'"
if printf '%s\n' "${start[@]}" | grep -q -- '^--model'; then fail "the default start names a model: ${start[*]}"; fi

ctr=$(bh from --pull=never "$image")
cleanup() {
  if [ -n "${server_pid:-}" ] && kill -0 "$server_pid" 2>/dev/null; then kill -KILL "$server_pid"; fi
  bh rm "$ctr" >/dev/null 2>&1 || true
}
trap cleanup EXIT
mnt=$(bh mount "$ctr")
size_mb=$(( $(du -sxb "$mnt" | cut -f1) / 1048576 ))
owner=$(stat -c %u:%g "$mnt/var/cache/sbserve")
[ "$owner" = 10001:10001 ] || fail "/var/cache/sbserve is owned by $owner"
[ ! -e "$mnt/usr/bin/gcc" ] && [ ! -e "$mnt/usr/bin/cmake" ] || fail "a compiler or cmake in the runtime image"
[ ! -d "$mnt/usr/include/grpcpp" ] || fail "-dev headers in the runtime image"
bh umount "$ctr" >/dev/null
echo "image filesystem: ${size_mb} MiB (budget ${budget_mb} MiB)"
[ "$size_mb" -le "$budget_mb" ] || fail "image is ${size_mb} MiB, over the ${budget_mb} MiB budget"

# 4. The default start (ENTRYPOINT + CMD of the image, as the image user, no --model), with host and
#    ports moved to loopback so the test cannot collide with anything on 50051/8080; later flags win.
for p in "$port" "$mport"; do
  if (exec 3<>"/dev/tcp/127.0.0.1/$p") 2>/dev/null; then fail "port $p is in use"; fi
done
echo "== run: ${start[*]} + loopback ports $port, $mport"
bh run --isolation chroot --network host "$ctr" -- "${start[@]}" \
  --host=127.0.0.1 --port="$port" --metrics-host=127.0.0.1 --metrics-port="$mport" \
  >"$cache/server.log" 2>&1 &
run_pid=$!
ready=0
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$mport/ready" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$run_pid" 2>/dev/null || break
  sleep 0.5
done
[ "$ready" = 1 ] || { cat "$cache/server.log"; fail "the server did not become ready within 150 s"; }
t_ready=$(now)
# The sbserve process itself (buildah run's descendant with our metrics port on its command line).
server_pid=
for p in $(pgrep -x sbserve); do
  if tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- "--metrics-port=$mport"; then server_pid=$p; fi
done
[ -n "$server_pid" ] || fail "cannot find the sbserve process"
uids=$(awk '/^Uid:/ {print $2, $3, $4, $5}' "/proc/$server_pid/status")
gids=$(awk '/^Gid:/ {print $2, $3, $4, $5}' "/proc/$server_pid/status")
[ "$uids" = "10001 10001 10001 10001" ] && [ "$gids" = "10001 10001 10001 10001" ] ||
  fail "sbserve runs as uid '$uids' gid '$gids', expected 10001"
grep -q 'demo' "$cache/server.log" || { cat "$cache/server.log"; fail "the log does not mention the demo model"; }

sbctl() { bh run --isolation chroot --network host "$ctr" -- /usr/local/bin/sbctl --addr "127.0.0.1:$port" "$@"; }
sbctl health || fail "sbctl health"
out=$(sbctl generate "hello from the image test" --max-tokens 8 --ignore-eos --temperature 0 --json) ||
  fail "sbctl generate: $out"
echo "$out" | tail -1
grep -q '"completion_tokens": *8[,}]' <<<"$out" || fail "Generate did not return 8 tokens: $out"
metrics=$(curl -fsS "http://127.0.0.1:$mport/metrics") || fail "/metrics"
gen=$(awk '$1 == "sbserve_generation_tokens_total" {print $2}' <<<"$metrics")
[ -n "$gen" ] && awk -v g="$gen" 'BEGIN {exit !(g >= 8)}' || fail "sbserve_generation_tokens_total is '$gen', expected >= 8"
curl -fsS "http://127.0.0.1:$mport/health" >/dev/null || fail "/health"

# 5. SIGTERM while a Generate is in flight: the request finishes (the drain), then exit 0.
long_tokens=1500
sbctl generate "drain" --max-tokens "$long_tokens" --ignore-eos --temperature 0 --json \
  --timeout 60s >"$cache/drain_generate.out" 2>&1 &
gen_pid=$!
running=0
for _ in $(seq 1 100); do
  running=$(curl -fsS "http://127.0.0.1:$mport/metrics" | awk '$1 == "sbserve_num_requests_running" {print $2}')
  [ "${running:-0}" != 0 ] && break
  sleep 0.1
done
echo "in flight at SIGTERM: ${running:-0}"
t_term=$(now)
kill -TERM "$server_pid"
gen_rc=0; wait "$gen_pid" || gen_rc=$?
run_rc=0; wait "$run_pid" || run_rc=$?
t_exit=$(now)
server_pid=
[ "$gen_rc" = 0 ] || { cat "$cache/drain_generate.out"; fail "the in-flight Generate failed during the drain (rc $gen_rc)"; }
grep -q "\"completion_tokens\": *${long_tokens}[,}]" "$cache/drain_generate.out" ||
  { tail -2 "$cache/drain_generate.out"; fail "the in-flight Generate did not finish all $long_tokens tokens"; }
[ "$run_rc" = 0 ] || { tail -20 "$cache/server.log"; fail "sbserve exited $run_rc after SIGTERM"; }
echo "== server log (tail)"; tail -5 "$cache/server.log"

# 6. The Kubernetes way: read-only root filesystem, emptyDir-like tmpfs at the cache dir and /tmp
#    (owned by the pod's fsGroup), no capabilities; buildah run cannot make the root read-only, so
#    this runs the image's mounted tree with util-linux: a private mount namespace, a read-only
#    bind of the tree, chroot as 10001:10001 (no effective capabilities, no_new_privs) with the
#    image's environment. Without the tmpfs at the cache dir the default start fails here.
mnt=$(bh mount "$ctr")
echo "== read-only root: ${start[*]}"
unshare --mount --fork --propagation private sh -c '
  set -e
  r=$1; shift
  mount --bind "$r" "$r" && mount -o remount,bind,ro "$r"
  mount -t tmpfs -o mode=2770,uid=10001,gid=10001,size=1g cache "$r/var/cache/sbserve"
  mount -t tmpfs -o mode=1777,size=256m tmp "$r/tmp"
  mount --rbind /dev "$r/dev" && mount -t proc proc "$r/proc" && mount --rbind /sys "$r/sys"
  exec setpriv --inh-caps=-all --bounding-set=-all,+sys_chroot,+setuid,+setgid --no-new-privs \
    chroot --userspec=10001:10001 --groups=10001 "$r" "$@"
' sh "$mnt" env -i "${image_env[@]}" "${start[@]}" --host=127.0.0.1 --port="$port" --metrics-host=127.0.0.1 \
  --metrics-port="$mport" >"$cache/server_ro.log" 2>&1 &
ro_pid=$!
ready=0
for _ in $(seq 1 300); do
  if curl -fsS "http://127.0.0.1:$mport/ready" >/dev/null 2>&1; then ready=1; break; fi
  kill -0 "$ro_pid" 2>/dev/null || break
  sleep 0.5
done
[ "$ready" = 1 ] || { cat "$cache/server_ro.log"; fail "read-only root: not ready within 150 s"; }
for p in $(pgrep -x sbserve); do
  if tr '\0' ' ' <"/proc/$p/cmdline" | grep -q -- "--metrics-port=$mport"; then server_pid=$p; fi
done
[ -n "$server_pid" ] || fail "read-only root: cannot find the sbserve process"
out=$(sbctl generate "read-only root" --max-tokens 4 --ignore-eos --temperature 0 --json) ||
  fail "read-only root: sbctl generate: $out"
grep -q '"completion_tokens": *4[,}]' <<<"$out" || fail "read-only root: Generate did not return 4 tokens"
kill -TERM "$server_pid"
ro_rc=0; wait "$ro_pid" || ro_rc=$?
server_pid=
[ "$ro_rc" = 0 ] || { tail -20 "$cache/server_ro.log"; fail "read-only root: exit $ro_rc after SIGTERM"; }
bh umount "$ctr" >/dev/null

echo "PASS: base $((t_base - t_start)) s, build $((t_build - t_base)) s, start to ready $((t_ready - t_build)) s," \
  "SIGTERM to exit $((t_exit - t_term)) s, total $((t_exit - t_start)) s; image ${size_mb} MiB" \
  "(budget ${budget_mb} MiB); $(date -u +%Y-%m-%d)"
