#!/usr/bin/env bash
# Live volume migration over NVMe/TCP, with faults, in one command.
#
#   A  stock nvmf_tgt: exports the source volume (an aio bdev over src.img) over NVMe/TCP.
#   B  bdev_clone_tgt: attaches A's namespace (bdev_nvme_attach_controller -> Srcn1), clones it
#      into a local destination (aio over dst.img) with metadata (aio over meta.img), and exports
#      the clone over NVMe/TCP.
#   C  stock bdevperf: attached to B's export, runs a `verify` workload on the first eighth of the
#      volume (a bdev_split part: C's writes stay inside a known range) in phases, from before
#      hydration starts until after A is gone.
#
# The run: C runs with hydration paused -> hydration starts -> A is killed with SIGKILL in the
# middle (C keeps running on hydrated regions; a read of an unhydrated region fails with an I/O
# error, a read of a hydrated region returns the source's bytes) -> A is restarted over the same
# file and B reconnects by itself -> B is restarted (SIGTERM, then `-c` its save_config) -> the
# clone completes -> B releases the source -> A is stopped -> C goes on -> byte-level check.
#
# Why the source survives A's death: B attaches it with ctrlr_loss_timeout_sec=-1 (never delete
# the controller, so Srcn1 -- and the clone claiming it -- stay registered; a removed base bdev
# would make the clone unregister itself), reconnect_delay_sec=1 (retry every second), and
# fast_io_fail_timeout_sec=1 (after one second of disconnection I/O fails at once instead of
# queueing until A returns). A's namespace has a fixed UUID, so the restarted A presents the same
# namespace and the clone's metadata (which records the source's UUID) still matches after B's
# restart. `--enable-flush` is only needed for an NVMe *destination*; here the source is read-only.
#
# Environment: BDEV_CLONE_TGT (the target app; default: found under $CARGO_TARGET_DIR or target/,
# else built with cargo --release), PORT_A / PORT_B (default 34420 / 34421), SIZE_MIB (32),
# RATE_MB (hydration bandwidth until B's restart, 1; unlimited after it), KEEP=1 keeps the work
# directory (under TMPDIR, default /tmp). SPDK's nvmf_tgt, bdevperf, spdk_dd and spdk-rpc come
# from PATH. After a successful run the timeline is written as CSV to TIMELINE_CSV (default
# bench/results/live_migration.csv; empty: none) and drawn by bench/charts.py into TIMELINE_PNG
# (default bench/charts/live_migration.png; empty: none; needs matplotlib, see
# bench/requirements.txt).
set -euo pipefail

here=$(cd "$(dirname "$0")/.." && pwd)
PORT_A=${PORT_A:-34420}
PORT_B=${PORT_B:-34421}
SIZE_MIB=${SIZE_MIB:-32}
RATE_MB=${RATE_MB:-1}
PHASE_SEC=${PHASE_SEC:-2}
NQN_A=nqn.2026-11.io.bdev-clone:node-a
NQN_B=nqn.2026-11.io.bdev-clone:node-b
NS_UUID=6b1c7a52-3c0e-4d55-9a43-0a1b2c3d4e5f
APP=(--no-pci --no-huge -s 1024 --disable-cpumask-locks)
TIMELINE_CSV=${TIMELINE_CSV-$here/bench/results/live_migration.csv}
TIMELINE_PNG=${TIMELINE_PNG-$here/bench/charts/live_migration.png}
export PYTHONPATH="$here/python${PYTHONPATH:+:$PYTHONPATH}"

find_tgt() {
    [[ -n ${BDEV_CLONE_TGT:-} ]] && { echo "$BDEV_CLONE_TGT"; return; }
    local t
    for t in "${CARGO_TARGET_DIR:-$here/target}"/{release,debug}/bdev_clone_tgt; do
        [[ -x $t ]] && { echo "$t"; return; }
    done
    (cd "$here" && cargo build --release -q -p bdev-clone-tgt) >&2
    echo "${CARGO_TARGET_DIR:-$here/target}/release/bdev_clone_tgt"
}
TGT=$(find_tgt)
for tool in nvmf_tgt bdevperf spdk_dd spdk-rpc jq; do
    command -v "$tool" >/dev/null || { echo "missing $tool in PATH" >&2; exit 2; }
done

W=$(mktemp -d "${TMPDIR:-/tmp}/live-migration.XXXXXX")
declare -A PID=()
cleanup() {
    local n
    for n in "${!PID[@]}"; do kill -9 "${PID[$n]}" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [[ ${KEEP:-0} == 1 ]]; then echo "work directory: $W"; else rm -rf "$W"; fi
}
trap cleanup EXIT

T0=$(date +%s.%N)
now() { echo "$(date +%s.%N) - $T0" | bc | xargs printf '%6.1f'; }
die() {
    echo "FAILED: $*" >&2
    for f in "$W"/*.log; do echo "--- $f (tail)" >&2; tail -n 15 "$f" >&2; done
    exit 1
}
rpc() { local s=$1; shift; spdk-rpc -s "$W/$s.sock" -t 30 "$@"; }
clone_rpc() { rpc b --plugin bdev_clone_rpc "$@"; }
info() { clone_rpc bdev_clone_get_clones -b vol | jq -c '.[0]'; }
field() { info | jq -r ".$1"; }

start() { # name, then the command; waits for its RPC socket
    local n=$1; shift
    rm -f "$W/$n.sock"
    "$@" -r "$W/$n.sock" >>"$W/$n.log" 2>&1 &
    PID[$n]=$!
    local i
    for i in $(seq 150); do
        rpc "$n" spdk_get_version >/dev/null 2>&1 && return
        kill -0 "${PID[$n]}" 2>/dev/null || die "$n exited at start"
        sleep 0.2
    done
    die "$n did not come up"
}
stop() { # SIGTERM (clean shutdown) or SIGKILL, and wait
    local n=$1 sig=${2:-TERM}
    kill -"$sig" "${PID[$n]}" 2>/dev/null || true
    wait "${PID[$n]}" 2>/dev/null || true
    unset "PID[$n]"
}

# One timeline line: time, phase, hydration %, C's IOPS and errors of the phase, a note; and
# the same as a CSV row in $W/timeline.csv, with the row's kind ($6: "probe", "check"; else
# "phase" for a line with C's IOPS, whose phase began at $PHASE_START, or "event").
csv_field() { local v=${1//\"/\"\"}; printf '"%s"' "$v"; }
line() {
    local pct=$2 t kind=${6:-} start=""
    t=$(now)
    [[ $pct == [0-9]* ]] && pct="$pct%"
    printf '%ss  %-22s %7s  %8s  %6s  %s\n' "$t" "$1" "$pct" "$3" "$4" "$5"
    if [[ -z $kind ]]; then
        if [[ $3 == [0-9]* ]]; then kind=phase; start=${PHASE_START// /}; else kind=event; fi
    fi
    num() { if [[ $1 == [0-9]* ]]; then echo "${1%\%}"; fi; }
    printf '%s,%s,%s,%s,%s,%s,%s,%s\n' "${t// /}" "$start" "$(csv_field "$1")" "$kind" "$(num "$2")" \
        "$(num "$3")" "$(num "$4")" "$(csv_field "$5")" >>"$W/timeline.csv"
}
header() { printf '%7s  %-22s %7s  %8s  %6s  %s\n' time phase hydrated iops errors note; }

# bdevperf's perform_tests over its JSON-RPC socket ($1), waiting up to $2 seconds for the
# results; prints them as JSON. (A plain socket client: no SPDK Python package needed.)
perform_tests() {
    python3 - "$1" "$2" <<'PY'
import json, socket, sys
s = socket.socket(socket.AF_UNIX)
s.settimeout(float(sys.argv[2]))
s.connect(sys.argv[1])
s.sendall(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "perform_tests"}).encode())
buf = b""
while True:
    chunk = s.recv(65536)
    if not chunk:
        sys.exit("connection closed before the results")
    buf += chunk
    try:
        r = json.loads(buf)
        break
    except ValueError:
        continue
if "error" in r:
    sys.exit(json.dumps(r["error"]))
print(json.dumps(r["result"]))
PY
}

# A C phase: bdevperf verify for PHASE_SEC seconds; sets IOPS and ERRS.
phase() {
    local out
    PHASE_START=$(now)
    out=$(perform_tests "$W/c.sock" 120 2>&1) || die "perform_tests: $out"
    IOPS=$(jq -r '[.results[].iops] | add | floor' <<<"$out")
    ERRS=$(jq -r '[.results[].io_failed] | add' <<<"$out")
}

# A one-shot read of one 64 KiB region through B's export with spdk_dd: region index, output
# file. spdk_dd ignores failed reads (it copies whatever its buffer holds), so it only serves to
# fetch bytes that must match the source; errors are probed with bdevperf (probe_errors).
probe() {
    spdk_dd "${APP[@]}" -m 0x2 --json "$W/dd.json" --ib Proben1 --of "$2" --bs 65536 \
        --skip "$1" --count 1 >"$2.log" 2>&1
}
# bdevperf reads (each 64 KiB region once per pass, for 1 s) through B's export in two jobs:
# "hydrated" = 16 regions right after C's range, "unhydrated" = the last 16 regions. Prints
# "<hydrated io_failed> <hydrated iops> <unhydrated io_failed> <unhydrated iops>".
probe_errors() {
    cat >"$W/probe.job" <<EOF
[global]
filename=Proben1
bs=65536
iodepth=1
rw=read
[hydrated]
offset=$(((C_REGIONS + 1) * 128))
length=$((16 * 128))
[unhydrated]
offset=$(((REGIONS - 16) * 128))
length=$((16 * 128))
EOF
    start p bdevperf "${APP[@]}" -m 0x2 -z --json "$W/dd.json" -j "$W/probe.job" -t 1 -f
    local out
    out=$(perform_tests "$W/p.sock" 60 2>&1) || die "probe: $out"
    stop p TERM
    # results are in the order of the jobs (both are named after the bdev)
    jq -r '[.results[0].io_failed, (.results[0].iops|floor),
            .results[1].io_failed, (.results[1].iops|floor)] | @tsv' <<<"$out"
}
region_of_src() { dd if="$W/src.img" bs=64K skip="$1" count=1 status=none; }

wait_connected() { # the controller named $2 of app $1 is enabled again
    local i
    for i in $(seq 150); do
        [[ $(rpc "$1" bdev_nvme_get_controllers -n "$2" 2>/dev/null |
            jq -r '.[0].ctrlrs[0].state') == enabled ]] && return
        sleep 0.2
    done
    die "$1's controller $2 did not reconnect"
}
wait_percent() { # until hydration >= $1 %, running C phases meanwhile (at most 3 minutes)
    local deadline=$((SECONDS + 180))
    while (($(echo "$(field percent) < $1" | bc))); do
        ((SECONDS < deadline)) || die "hydration stuck at $(field percent)% while $2"
        phase
        [[ $ERRS == 0 ]] || die "C saw $ERRS errors while $2"
        line "$2" "$(field percent)" "$IOPS" "$ERRS" ""
    done
}

# ---------------------------------------------------------------- the volumes
head -c $((SIZE_MIB << 20)) /dev/urandom >"$W/src.img"
truncate -s $((SIZE_MIB << 20)) "$W/dst.img"
truncate -s 1M "$W/meta.img"
REGIONS=$((SIZE_MIB * 16)) # 64 KiB regions
C_REGIONS=$((REGIONS / 8)) # C works on the first eighth

cat >"$W/a.json" <<EOF
{"subsystems": [
 {"subsystem": "bdev", "config": [
  {"method": "bdev_aio_create", "params": {"name": "vol", "filename": "$W/src.img",
   "block_size": 512, "uuid": "$NS_UUID"}}]},
 {"subsystem": "nvmf", "config": [
  {"method": "nvmf_create_transport", "params": {"trtype": "TCP"}},
  {"method": "nvmf_create_subsystem", "params": {"nqn": "$NQN_A", "allow_any_host": true,
   "serial_number": "SRC00000000000001"}},
  {"method": "nvmf_subsystem_add_ns", "params": {"nqn": "$NQN_A",
   "namespace": {"bdev_name": "vol", "uuid": "$NS_UUID"}}},
  {"method": "nvmf_subsystem_add_listener", "params": {"nqn": "$NQN_A", "listen_address":
   {"trtype": "TCP", "adrfam": "IPv4", "traddr": "127.0.0.1", "trsvcid": "$PORT_A"}}}]}]}
EOF
attach_b() { # $1 = controller name, $2 = json file
    cat >"$2" <<EOF
{"subsystems": [{"subsystem": "bdev", "config": [
  {"method": "bdev_nvme_attach_controller", "params": {"name": "$1", "trtype": "tcp",
   "adrfam": "ipv4", "traddr": "127.0.0.1", "trsvcid": "$PORT_B", "subnqn": "$NQN_B",
   "ctrlr_loss_timeout_sec": -1, "reconnect_delay_sec": 1}}$3]}]}
EOF
}
attach_b Clone "$W/c.json" ',
  {"method": "bdev_split_create", "params": {"base_bdev": "Clonen1", "split_count": 8}}'
attach_b Probe "$W/dd.json" ""

echo "live migration of a ${SIZE_MIB} MiB volume: A 127.0.0.1:$PORT_A -> B 127.0.0.1:$PORT_B (work: $W)"
header
echo "t_sec,t_start_sec,phase,kind,percent_hydrated,iops,errors,note" >"$W/timeline.csv"

# ---------------------------------------------------------------- A, B, C
start a nvmf_tgt "${APP[@]}" -m 0x2 -c "$W/a.json"
start b "$TGT" "${APP[@]}" -m 0x1
rpc b bdev_nvme_attach_controller -b Src -t tcp -a 127.0.0.1 -s "$PORT_A" -f ipv4 -n "$NQN_A" \
    --ctrlr-loss-timeout-sec -1 --reconnect-delay-sec 1 --fast-io-fail-timeout-sec 1 >/dev/null
rpc b bdev_aio_create "$W/dst.img" dst 512 >/dev/null
rpc b bdev_aio_create "$W/meta.img" meta 512 >/dev/null
clone_rpc bdev_clone_create -b vol -s Srcn1 -d dst -m meta -r 64 --no-hydration \
    --max-bandwidth-mb-sec "$RATE_MB" --commit-interval-ms 500 >/dev/null
rpc b nvmf_create_transport -t TCP >/dev/null
rpc b nvmf_create_subsystem "$NQN_B" -a -s CLONE0000000000001 >/dev/null
rpc b nvmf_subsystem_add_ns "$NQN_B" vol >/dev/null
rpc b nvmf_subsystem_add_listener "$NQN_B" -t tcp -a 127.0.0.1 -s "$PORT_B" -f ipv4 >/dev/null
start c bdevperf "${APP[@]}" -m 0x2 -z --json "$W/c.json" -q 16 -o 4096 -w verify \
    -t "$PHASE_SEC" -f -T Clonen1p0
line "A, B, C up" "$(field percent)" - - "clone $(field state), exported by B"

# ---------------------------------------------------------------- before hydration
phase
[[ $ERRS == 0 ]] || die "C saw $ERRS errors before hydration"
line "before hydration" "$(field percent)" "$IOPS" "$ERRS" "C's writes hydrate only what they touch"

clone_rpc bdev_clone_set_hydration -b vol -e >/dev/null
wait_percent 35 "hydrating"

# ---------------------------------------------------------------- fault 1: A dies
stop a KILL
sleep 2 # fast_io_fail_timeout_sec=1: source I/O now fails at once
committed=$(field regions_committed)
hydrated=$(field regions_hydrated)
state=$(field state)
[[ $state == hydrating ]] || die "clone state $state after A died (expected hydrating)"
line "A killed (SIGKILL)" "$(field percent)" - - "clone $state, Srcn1 still registered, $committed regions committed"
phase
[[ $ERRS == 0 ]] || die "C saw $ERRS errors on hydrated regions while A was down"
line "A down" "$(field percent)" "$IOPS" "$ERRS" "C's range is hydrated: no errors"
# Reads of unhydrated regions (the last 16) must fail with an I/O error; reads of hydrated
# regions outside C's range must succeed, and return the source's bytes.
read -r h_fail h_iops u_fail u_iops < <(probe_errors)
((h_fail == 0 && h_iops > 0)) || die "reads of hydrated regions failed while A was down ($h_fail failed)"
((u_fail > 0 && u_iops == 0)) || die "reads of unhydrated regions did not fail ($u_fail failed, $u_iops IOPS)"
probe $((C_REGIONS + 1)) "$W/probe_hydrated" || die "spdk_dd of a hydrated region failed"
cmp -s "$W/probe_hydrated" <(region_of_src $((C_REGIONS + 1))) || die "hydrated region read wrong data"
errors=$(field hydration_errors)
stalled=$(field regions_hydrated)
line "A down: read probe" "$(field percent)" "$h_iops" "$h_fail" "hydrated regions: source bytes, no errors" probe
line "A down: read probe" "$(field percent)" "$u_iops" "$u_fail" "unhydrated regions: every read an I/O error ($errors copy errors)" probe
((stalled <= hydrated + 32)) || die "hydration progressed without a source ($hydrated -> $stalled)"

# ---------------------------------------------------------------- A comes back
start a nvmf_tgt "${APP[@]}" -m 0x2 -c "$W/a.json"
wait_connected b Src
p1=$(field percent)
line "A restarted" "$p1" - - "B reconnected to A by itself"
after=$(field regions_hydrated)
((after >= committed)) || die "lost committed regions: $committed -> $after"
phase
[[ $ERRS == 0 ]] || die "C saw $ERRS errors after A came back"
p2=$(field percent)
line "hydrating again" "$p2" "$IOPS" "$ERRS" "the clone resumed"
(($(echo "$p2 > $p1" | bc))) || die "hydration did not resume after A came back"
(($(echo "$p2 < 95" | bc))) || die "hydration finished before B's restart: lower RATE_MB"

# ---------------------------------------------------------------- fault 2: B restarts
rpc b save_config >"$W/b.json"
n=$(jq '[.subsystems[] | select(.subsystem=="bdev") | .config[] |
    select(.method=="bdev_clone_create")] | length' "$W/b.json")
[[ $n == 1 ]] || die "B's saved config has no bdev_clone_create"
committed=$(field regions_committed)
stop b TERM # a clean shutdown commits: its last progress is on the metadata bdev
line "B stopped (SIGTERM)" - - - "config saved with save_config"
start b "$TGT" "${APP[@]}" -m 0x1 -c "$W/b.json"
grep -q "bdev_clone vol: resumed from metadata" "$W/b.log" || die "B did not resume from its metadata"
after=$(field regions_hydrated)
((after >= committed)) || die "B lost committed regions over its restart: $committed -> $after"
wait_connected c Clone
line "B restarted (-c)" "$(field percent)" - - "$(grep -o 'resumed from.*hydrated' "$W/b.log" | tail -1); C reconnected"
clone_rpc bdev_clone_set_hydration -b vol --max-bandwidth-mb-sec 0 >/dev/null
wait_percent 100 "hydrating (unlimited)"

# ---------------------------------------------------------------- release, A goes away
for i in $(seq 100); do [[ $(field state) == hydrated ]] && break; sleep 0.1; done
clone_rpc bdev_clone_release_source -b vol >/dev/null || die "release_source refused"
rpc b bdev_nvme_detach_controller Src >/dev/null
stop a TERM
line "source released" "$(field percent)" - - "state $(field state); B detached A; A stopped"
phase
[[ $ERRS == 0 ]] || die "C saw $ERRS errors after A was gone"
line "after migration" "$(field percent)" "$IOPS" "$ERRS" "served from B's local destination only"
stop c TERM

# ---------------------------------------------------------------- byte-level check
# 1. Read the whole clone back through B's NVMe/TCP export (C stopped: nothing changes it).
# 2. Stop B cleanly (its final commit), then compare:
#    - the destination file equals what the clone returned, byte for byte: the destination is
#      the volume now, nothing was left in a cache or on the source;
#    - outside C's range (the first eighth) the destination equals the source image: every
#      region there was copied by hydration -- across A's death, A's restart and B's restart --
#      and never written, so any byte that differs is a lost, torn or misplaced copy;
#    - inside C's range the data is C's: bdevperf verified every block it wrote when it read it
#      back (errors 0 above), and the range differs from the source (C really wrote there).
spdk_dd "${APP[@]}" -m 0x2 --json "$W/dd.json" --ib Proben1 --of "$W/clone.img" --bs 1048576 \
    >>"$W/dd.log" 2>&1 || die "reading the clone failed"
stop b TERM
c_bytes=$((C_REGIONS << 16))
cmp -s "$W/clone.img" "$W/dst.img" || die "destination differs from what the clone returns"
cmp -s <(tail -c +$((c_bytes + 1)) "$W/dst.img") <(tail -c +$((c_bytes + 1)) "$W/src.img") ||
    die "destination differs from the source outside C's range"
if cmp -s <(head -c "$c_bytes" "$W/dst.img") <(head -c "$c_bytes" "$W/src.img"); then
    die "C's range equals the source: C wrote nothing?"
fi
line "check" 100 - - "dst == clone read; dst == source outside C's $((c_bytes >> 20)) MiB: OK" check
if [[ -n $TIMELINE_CSV ]]; then
    mkdir -p "$(dirname "$TIMELINE_CSV")"
    cp "$W/timeline.csv" "$TIMELINE_CSV"
    echo "timeline: $TIMELINE_CSV"
    if [[ -n $TIMELINE_PNG ]]; then
        python3 "$here/bench/charts.py" --live-migration "$TIMELINE_CSV" "$TIMELINE_PNG" ||
            echo "timeline chart not drawn (python3 -m pip install -r bench/requirements.txt)"
    fi
fi
echo "PASS"
