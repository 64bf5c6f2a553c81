#!/usr/bin/env bash
# Side-by-side NBD benchmark of a tiered hv-storage volume against qemu-nbd and nbdkit, all driven by
# the same fio job (nbd ioengine, Unix socket):
#   fio --ioengine=nbd --rw=randread --bs=4k --iodepth=32 --random_distribution=zipf:1.2
# Fast tier: a file on tmpfs holding 10 % of the volume. Slow tier: a file on disk, opened O_DIRECT.
#
# Usage (from the repository root):
#   cargo build --release -p hv-storage
#   SIZE=8G RUNTIME=30 WARMUP=30 storage-tier/benches/bench.sh > results.md
# Defaults: SIZE=2G RUNTIME=20 WARMUP=20. Needs fio, qemu-utils (qemu-nbd, qemu-img), nbdkit, python3.
set -euo pipefail

SIZE=${SIZE:-2G}
RUNTIME=${RUNTIME:-20}
WARMUP=${WARMUP:-20}
DISK_DIR=${DISK_DIR:-/var/tmp/hv-storage-bench}
SHM_DIR=${SHM_DIR:-/dev/shm/hv-storage-bench}
BIN=${BIN:-$(pwd)/target/release/hv-storage-fabric}
SOCK=$DISK_DIR/nbd.sock

size_bytes=$(numfmt --from=iec "$SIZE")
mib=$((1 << 20))
fast_bytes=$(( (size_bytes / 10 + mib - 1) / mib * mib ))
server_pid=""

log() { echo "$*" >&2; }
# fio's nbd engine prints "fio: connected to NBD server" before the JSON document.
iops_from_json() {
    python3 -c 'import json,sys; t=sys.stdin.read(); print(round(json.loads(t[t.index("{"):])["jobs"][0]["read"]["iops"]))'
}
cleanup() {
    stop_server
    rm -rf "$SHM_DIR"
}
trap cleanup EXIT

stop_server() {
    if [ -n "$server_pid" ]; then
        kill "$server_pid" 2>/dev/null || true
        wait "$server_pid" 2>/dev/null || true
        server_pid=""
    fi
    rm -f "$SOCK"
}

wait_socket() {
    for _ in $(seq 200); do [ -S "$SOCK" ] && return 0; sleep 0.05; done
    log "server did not create $SOCK"; exit 1
}

# fio_iops URI DISTRIBUTION SECONDS -> prints read IOPS
fio_iops() {
    fio --name=bench --ioengine=nbd --uri="$1" --rw=randread --bs=4k --iodepth=32 \
        --random_distribution="$2" --size="$SIZE" --runtime="$3" --time_based \
        --output-format=json 2>/dev/null |
        iops_from_json
}

rss_mib() { awk '/VmRSS/ {print int($2/1024)}' "/proc/$1/status"; }

mkdir -p "$DISK_DIR" "$SHM_DIR"
if [ "$(stat -c %s "$DISK_DIR/slow.raw" 2>/dev/null || echo 0)" != "$size_bytes" ]; then
    log "preparing $SIZE of random data in $DISK_DIR/slow.raw"
    rm -f "$DISK_DIR/slow.raw"
    fio --name=fill --filename="$DISK_DIR/slow.raw" --rw=write --bs=1M --size="$SIZE" --direct=1 \
        --refill_buffers --buffer_compress_percentage=0 --randrepeat=0 >/dev/null
fi

# --- peers ---------------------------------------------------------------------------------------
log "fio io_uring O_DIRECT on the file itself"
fio_direct=$(fio --name=direct --filename="$DISK_DIR/slow.raw" --ioengine=io_uring --direct=1 --rw=randread \
    --bs=4k --iodepth=32 --random_distribution=zipf:1.2 --size="$SIZE" --runtime="$RUNTIME" --time_based \
    --output-format=json 2>/dev/null | iops_from_json)

log "qemu-nbd --cache=none --aio=io_uring on the slow file"
qemu-nbd --cache=none --aio=io_uring -f raw -x vol -k "$SOCK" -t "$DISK_DIR/slow.raw" & server_pid=$!
wait_socket
qemu_slow=$(fio_iops "nbd+unix:///vol?socket=$SOCK" zipf:1.2 "$RUNTIME")
qemu_slow_uniform=$(fio_iops "nbd+unix:///vol?socket=$SOCK" random "$RUNTIME")
stop_server

log "qemu-nbd on a tmpfs copy"
cp "$DISK_DIR/slow.raw" "$SHM_DIR/all.raw"
qemu-nbd -f raw -x vol -k "$SOCK" -t "$SHM_DIR/all.raw" & server_pid=$!
wait_socket
qemu_tmpfs=$(fio_iops "nbd+unix:///vol?socket=$SOCK" zipf:1.2 "$RUNTIME")
stop_server
rm -f "$SHM_DIR/all.raw"

log "nbdkit file through the page cache (file read into the cache first)"
cat "$DISK_DIR/slow.raw" >/dev/null
nbdkit -f -U "$SOCK" file file="$DISK_DIR/slow.raw" & server_pid=$!
wait_socket
nbdkit_cache=$(fio_iops "nbd+unix:///?socket=$SOCK" zipf:1.2 "$RUNTIME")
stop_server

# --- hv-storage ----------------------------------------------------------------------------------
# new_volume NAME FAST_BYTES [EXTENT_SIZE]: creates and fills a volume from slow.raw, leaves nothing running.
new_volume() {
    local name=$1 fast=$2 extent=${3:-1M}
    rm -rf "${DISK_DIR:?}/$name" "$DISK_DIR/$name.slow" "$SHM_DIR/$name.fast"
    if [ "$fast" -ge "$size_bytes" ]; then
        "$BIN" create --volume "$DISK_DIR/$name" --size "$size_bytes" --extent-size "$extent" \
            --tier "fast=$SHM_DIR/$name.fast:$fast" >/dev/null
    else
        "$BIN" create --volume "$DISK_DIR/$name" --size "$size_bytes" --extent-size "$extent" \
            --tier "fast=$SHM_DIR/$name.fast:$fast" --tier "slow=$DISK_DIR/$name.slow:$size_bytes" >/dev/null
    fi
    "$BIN" serve --volume "$DISK_DIR/$name" --unix "$SOCK" --move-budget-mib 0 2>/dev/null & server_pid=$!
    wait_socket
    qemu-img convert -n -f raw -O raw -W "$DISK_DIR/slow.raw" "nbd+unix:///?socket=$SOCK"
    stop_server
}

# run_tiered NAME POLICY DISTRIBUTION: warm-up, then a measured run sampling stats.json every second.
# Prints "IOPS RSS_MIB PROMOTIONS_PER_S DEMOTIONS_PER_S HIT_RATIO_TIMELINE".
run_tiered() {
    local name=$1 policy=$2 distribution=$3
    "$BIN" serve --volume "$DISK_DIR/$name" --unix "$SOCK" --policy "$policy" --stats-interval-ms 1000 \
        --half-life-secs 10 2>/dev/null & server_pid=$!
    wait_socket
    [ "$WARMUP" -gt 0 ] && fio_iops "nbd+unix:///?socket=$SOCK" "$distribution" "$WARMUP" >/dev/null
    local samples="$DISK_DIR/$name.samples"
    : >"$samples"
    (for _ in $(seq "$RUNTIME"); do sleep 1; cat "$DISK_DIR/$name/stats.json" >>"$samples"; echo >>"$samples"; done) &
    local sampler=$!
    local iops
    iops=$(fio_iops "nbd+unix:///?socket=$SOCK" "$distribution" "$RUNTIME")
    local rss
    rss=$(rss_mib "$server_pid")
    wait "$sampler" || true
    stop_server
    python3 - "$samples" "$iops" "$rss" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
first, last = rows[0], rows[-1]
secs = max(len(rows) - 1, 1)
timeline = []
for a, b in zip(rows, rows[1:]):
    ios = [tb["ios"] - ta["ios"] for ta, tb in zip(a["tiers"], b["tiers"])]
    total = sum(ios)
    timeline.append(f'{100.0 * ios[0] / total:.0f}' if total else '-')
print(sys.argv[2], sys.argv[3],
      f'{(last["promotions"] - first["promotions"]) / secs:.1f}',
      f'{(last["demotions"] - first["demotions"]) / secs:.1f}',
      ' '.join(timeline))
PY
}

log "hv-storage tiered volume, decaying-counter policy"
new_volume tiered "$fast_bytes"
read -r hv_heat hv_heat_rss hv_heat_prom hv_heat_dem hv_heat_timeline < <(run_tiered tiered decaying-counter zipf:1.2)
log "hv-storage tiered volume, uniform random (mover must not hurt)"
read -r hv_uniform _ hv_uni_prom hv_uni_dem _ < <(WARMUP=$WARMUP run_tiered tiered decaying-counter random)
rm -rf "$DISK_DIR/tiered" "$DISK_DIR/tiered.slow" "$SHM_DIR/tiered.fast"

log "hv-storage tiered volume, LRU baseline policy"
new_volume lru "$fast_bytes"
read -r hv_lru hv_lru_rss hv_lru_prom hv_lru_dem hv_lru_timeline < <(run_tiered lru lru zipf:1.2)
rm -rf "$DISK_DIR/lru" "$DISK_DIR/lru.slow" "$SHM_DIR/lru.fast"

log "hv-storage tiered volume, decaying-counter policy, 64 KiB extents"
new_volume small "$fast_bytes" 64K
read -r hv_small hv_small_rss hv_small_prom hv_small_dem hv_small_timeline < <(run_tiered small decaying-counter zipf:1.2)
rm -rf "$DISK_DIR/small" "$DISK_DIR/small.slow" "$SHM_DIR/small.fast"

log "hv-storage with everything on the fast tier"
new_volume allfast "$size_bytes"
read -r hv_allfast _ _ _ _ < <(run_tiered allfast decaying-counter zipf:1.2)
rm -rf "$DISK_DIR/allfast" "$SHM_DIR/allfast.fast"

ratio() { python3 -c "print(f'{$1 / $2:.2f}')"; }
cat <<MD
Volume $SIZE of random data, fio randread 4k iodepth 32 over a Unix socket, ${WARMUP}s warm-up, ${RUNTIME}s measured.
Fast tier: tmpfs, $((fast_bytes / mib)) MiB (10 %). Slow tier: ext4 file opened O_DIRECT.

| server | workload | IOPS | note |
|---|---|---:|---|
| fio io_uring O_DIRECT on the file (no NBD) | zipf:1.2 | $fio_direct | |
| qemu-nbd --cache=none --aio=io_uring, slow file | zipf:1.2 | $qemu_slow | |
| qemu-nbd, tmpfs copy of the whole volume | zipf:1.2 | $qemu_tmpfs | RAM: $((size_bytes / mib)) MiB tmpfs |
| nbdkit file, page cache (file cached first) | zipf:1.2 | $nbdkit_cache | RAM: $((size_bytes / mib)) MiB page cache |
| **hv-storage tiered, decaying-counter** | zipf:1.2 | **$hv_heat** | RAM: $((fast_bytes / mib)) MiB tmpfs + ${hv_heat_rss} MiB RSS; promotions $hv_heat_prom/s, demotions $hv_heat_dem/s |
| hv-storage tiered, decaying-counter, 64 KiB extents | zipf:1.2 | $hv_small | promotions $hv_small_prom/s, demotions $hv_small_dem/s, ${hv_small_rss} MiB RSS |
| hv-storage tiered, LRU baseline | zipf:1.2 | $hv_lru | promotions $hv_lru_prom/s, demotions $hv_lru_dem/s, ${hv_lru_rss} MiB RSS |
| hv-storage, everything on the fast tier | zipf:1.2 | $hv_allfast | |
| qemu-nbd --cache=none --aio=io_uring, slow file | uniform | $qemu_slow_uniform | |
| hv-storage tiered, decaying-counter | uniform | $hv_uniform | promotions $hv_uni_prom/s, demotions $hv_uni_dem/s |

| target | measured | ratio |
|---|---|---:|
| tiered (1 MiB extents, the default) ≥ 2× qemu-nbd --cache=none (slow file) | $hv_heat vs $qemu_slow | $(ratio "$hv_heat" "$qemu_slow") |
| tiered ≥ 0.8× all-fast, after warm-up | $hv_heat vs $hv_allfast | $(ratio "$hv_heat" "$hv_allfast") |
| tiered ≥ 0.9× nbdkit file (page cache) | $hv_heat vs $nbdkit_cache | $(ratio "$hv_heat" "$nbdkit_cache") |
| uniform: tiered ≥ 0.9× slow tier alone | $hv_uniform vs $qemu_slow_uniform | $(ratio "$hv_uniform" "$qemu_slow_uniform") |
| decaying-counter vs LRU | $hv_heat vs $hv_lru | $(ratio "$hv_heat" "$hv_lru") |

Fast-tier hit ratio (% of tier I/Os served by the fast tier), one value per second of the measured run:
- decaying-counter: $hv_heat_timeline
- decaying-counter, 64 KiB extents: $hv_small_timeline
- LRU: $hv_lru_timeline
MD
