#!/usr/bin/env bash
# What a cluster costs: the same workload (tailsift-loadgen gen, realistic rules) through one
# tailsift node and through three nodes with static membership on loopback, the generator's
# connections spread over the nodes as an L4 balancer would (so ~2/3 of the spans are
# forwarded to their owner). Reports, as medians of RUNS runs:
#   - proxy CPU per span (all nodes together) for 1 and 3 nodes,
#   - the share of spans forwarded, and the CPU cost per forwarded span
#     ((cpu/span with 3 nodes - cpu/span with 1) / forwarded share),
#   - mean decision latency (first span to decision, tailsift_decision_latency_seconds),
#   - zero loss: every must-keep trace whole at the sink (tailsift-loadgen check),
#   - config "leave": three nodes, and halfway through the load one of them gets SIGTERM
#     (graceful leave): traces and bytes it handed over, how long the hand-off took, and the
#     run's CPU per span against "three" (requests the generator had in flight to the leaver
#     are refused with UNAVAILABLE and not counted as acknowledged; the generator does not
#     retry).
# All nodes and the load share the same machine; loopback only; every run is bounded.
#
#   scripts/bench-cluster.sh
# Environment (all optional):
#   RUNS=3  DURATION=10s  RATE=60000 (offered spans/s)  CONCURRENCY=6  SEED=1
#   CONFIGS="one three leave"  OUT=/tmp/tailsift-bench-cluster/DATE
#   SKIP_BUILD=1 with TAILSIFT_BIN=... LOADGEN_BIN=... to use prebuilt binaries
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
RUNS=${RUNS:-3}
DURATION=${DURATION:-10s}
RATE=${RATE:-60000}
CONCURRENCY=${CONCURRENCY:-6}
SEED=${SEED:-1}
CONFIGS=${CONFIGS:-one three leave}
OUT=${OUT:-${TMPDIR:-/tmp}/tailsift-bench-cluster/$(date +%Y%m%d-%H%M%S)}
CLK_TCK=$(getconf CLK_TCK)
DUR_S=${DURATION%s}

START_S=$SECONDS
log() { echo "[bench-cluster +$((SECONDS - START_S))s] $*" >&2; }
die() { echo "[bench-cluster] ERROR: $*" >&2; exit 1; }

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building tailsift (release)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target" cargo build --release --bin tailsift)
    log "building tailsift-loadgen (release)"
    (cd "$ROOT/loadgen" && CARGO_TARGET_DIR="$ROOT/loadgen/target" cargo build --release --locked)
fi
TAILSIFT_BIN=${TAILSIFT_BIN:-$ROOT/target/release/tailsift}
LOADGEN_BIN=${LOADGEN_BIN:-$ROOT/loadgen/target/release/tailsift-loadgen}
[[ -x $TAILSIFT_BIN ]] || die "no tailsift binary at $TAILSIFT_BIN"
[[ -x $LOADGEN_BIN ]] || die "no loadgen binary at $LOADGEN_BIN"
mkdir -p "$OUT"
log "results in $OUT"

PIDS=()
alive() { [[ -e /proc/$1 ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
cleanup() { local p; for p in "${PIDS[@]}"; do alive "$p" && kill -TERM "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
wait_for() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        [[ -n "${4:-}" ]] && ! alive "$4" && return 1
        sleep 0.1
    done
    return 1
}
stop() {
    local i
    kill -TERM "$1" 2>/dev/null || true
    for ((i = 0; i < $2 * 10; i++)); do alive "$1" || break; sleep 0.1; done
    alive "$1" && kill -KILL "$1" 2>/dev/null || true
    wait "$1" 2>/dev/null || true
}
sink_spans() { grep -o 'spans=[0-9]*' "$1" 2>/dev/null | tail -1 | cut -d= -f2 || echo 0; }
wait_sink_quiet() {
    local last=-1 same=0 now i
    for ((i = 0; i < $2 * 2; i++)); do
        now=$(sink_spans "$1")
        if [[ "$now" == "$last" ]]; then same=$((same + 1)); ((same >= 3)) && return 0; else same=0; fi
        last=$now
        sleep 0.5
    done
    return 1
}
# metric_sum FILE NAME: the sum of every series of NAME (any labels).
metric_sum() { awk -v n="$2" '$1 == n || index($1, n "{") == 1 {s += $2} END {printf "%.6f\n", s + 0}' "$1"; }

write_rules() {
    cat >"$1" <<'EOF'
[[rule]]
name = "errors"
if = 'span.status = "error"'
sample_rate = 1

[[rule]]
name = "tagged-tenants"
if = 'tenant in ["tenant-1", "tenant-2"]'
sample_rate = 1

[[rule]]
name = "rest"
sample_rate = 10
EOF
}

run_one() { # run_one CONFIG INDEX
    local config=$1 idx=$2 dir="$OUT/$1/run$2" n=1
    [[ $config == three || $config == leave ]] && n=3
    mkdir -p "$dir"
    log "== $config run $idx"
    "$LOADGEN_BIN" sink --listen 127.0.0.1:0 --report-file "$dir/sink.json" --progress \
        >"$dir/sink.out" 2>"$dir/sink.err" &
    local sink_pid=$!
    PIDS+=("$sink_pid")
    wait_for "$dir/sink.out" "sink listening" 15 "$sink_pid" || die "sink did not start"
    local sink_addr
    sink_addr=$(awk '/sink listening/ {print $3}' "$dir/sink.out")
    write_rules "$dir/rules.toml"
    local ports=() peers="" i
    for ((i = 0; i < n; i++)); do ports+=("$(free_port)"); done
    for p in "${ports[@]}"; do peers+="\"127.0.0.1:$p\", "; done
    local node_pids=() targets=() admins=()
    for ((i = 0; i < n; i++)); do
        local cfg="$dir/node$i.toml"
        cat >"$cfg" <<EOF
[receive]
grpc_listen = "127.0.0.1:0"
http_listen = "127.0.0.1:0"
max_request_bytes = "16MiB"
[tenant]
resource_attribute = "tenant.id"
[buffer]
root_grace = "2s"
trace_timeout = "30s"
max_memory = "1GiB"
[rules]
file = "$dir/rules.toml"
[export]
kind = "otlp_grpc"
endpoint = "http://$sink_addr"
batch_max_spans = 8192
[admin]
listen = "127.0.0.1:0"
EOF
        if ((n > 1)); then
            cat >>"$cfg" <<EOF
[cluster]
membership = "static"
peer_listen = "127.0.0.1:${ports[$i]}"
advertise = "127.0.0.1:${ports[$i]}"
peers = [${peers%, }]
EOF
        fi
        "$TAILSIFT_BIN" run --config "$cfg" >"$dir/node$i.out" 2>"$dir/node$i.err" &
        node_pids+=("$!")
        PIDS+=("$!")
    done
    for ((i = 0; i < n; i++)); do
        wait_for "$dir/node$i.err" "tailsift listening" 30 "${node_pids[$i]}" || die "node $i did not start ($dir/node$i.err)"
        local line
        line=$(grep -m1 "tailsift listening" "$dir/node$i.err")
        targets+=("$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")")
        admins+=("$(sed -E 's/.*admin=([^ ]+).*/\1/' <<<"$line")")
    done
    sleep 0.5
    local cpu0=0 cpu1=0 p
    for p in "${node_pids[@]}"; do cpu0=$((cpu0 + $(cpu_ticks "$p"))); done
    local target_list
    target_list=$(IFS=,; echo "${targets[*]}")
    timeout $((${DUR_S%.*} + 60)) "$LOADGEN_BIN" gen --target "$target_list" --spans-per-sec "$RATE" \
        --duration "$DURATION" --concurrency "$CONCURRENCY" --seed "$SEED" \
        --report-file "$dir/gen.json" 2>"$dir/gen.err" &
    local gen_pid=$!
    local leaver_cpu=0
    if [[ $config == leave ]]; then
        sleep "$(python3 -c "print(${DUR_S%.*} / 2)")"
        local last=$((n - 1))
        kill -TERM "${node_pids[$last]}"
        # Its CPU until it exits counts (sampled every 50 ms while it leaves).
        while alive "${node_pids[$last]}"; do
            leaver_cpu=$(cpu_ticks "${node_pids[$last]}")
            sleep 0.05
        done
        wait "${node_pids[$last]}" 2>/dev/null || true
        unset 'admins[last]'
    fi
    wait "$gen_pid" || true
    [[ -f $dir/gen.json ]] || die "gen wrote no report ($dir/gen.err)"
    # Drained: nothing buffered and nothing queued for a peer on any node, sink quiet.
    local tries held
    for ((tries = 0; tries < 80; tries++)); do
        held=0
        for a in "${admins[@]}"; do
            curl -s -m 1 "http://$a/metrics" >"$dir/m.tmp" || true
            held=$(python3 -c "print($held + $(metric_sum "$dir/m.tmp" tailsift_buffered_spans) + $(metric_sum "$dir/m.tmp" tailsift_peer_queue_spans))")
        done
        [[ $held == 0 || $held == 0.0 ]] && break
        sleep 0.5
    done
    wait_sink_quiet "$dir/sink.err" 30 || true
    for p in "${node_pids[@]}"; do
        alive "$p" && cpu1=$((cpu1 + $(cpu_ticks "$p")))
    done
    cpu1=$((cpu1 + leaver_cpu))
    local fwd=0 lat_sum=0 lat_n=0
    for ((i = 0; i < n; i++)); do
        [[ -n "${admins[$i]:-}" ]] || { : >"$dir/metrics$i.txt"; continue; }
        curl -s -m 5 "http://${admins[$i]}/metrics" >"$dir/metrics$i.txt" || true
        fwd=$(python3 -c "print($fwd + $(metric_sum "$dir/metrics$i.txt" tailsift_peer_forwarded_spans_total))")
        lat_sum=$(python3 -c "print($lat_sum + $(metric_sum "$dir/metrics$i.txt" tailsift_decision_latency_seconds_sum))")
        lat_n=$(python3 -c "print($lat_n + $(metric_sum "$dir/metrics$i.txt" tailsift_decision_latency_seconds_count))")
    done
    for p in "${node_pids[@]}"; do stop "$p" 40; done
    wait_sink_quiet "$dir/sink.err" 10 || true
    stop "$sink_pid" 20
    local check_rc=0
    "$LOADGEN_BIN" check --gen-report "$dir/gen.json" --sink-report "$dir/sink.json" \
        --expect must-keep --json-out "$dir/check.json" >"$dir/check.txt" 2>&1 || check_rc=$?
    python3 - "$dir" "$config" "$cpu0" "$cpu1" "$CLK_TCK" "$fwd" "$lat_sum" "$lat_n" "$check_rc" "$((n - 1))" <<'EOF'
import json, re, sys
d, config, cpu0, cpu1, tck, fwd, lat_sum, lat_n, check_rc, last = sys.argv[1:]
gen = json.load(open(f"{d}/gen.json"))
acked = gen.get("acked_spans") or gen.get("spans_acked") or 0
cpu_s = (int(cpu1) - int(cpu0)) / int(tck)
row = {
    "config": config,
    "acked_spans": acked,
    "cpu_s": cpu_s,
    "cpu_us_per_span": cpu_s / acked * 1e6 if acked else None,
    "forwarded_share": float(fwd) / acked if acked else 0.0,
    "decision_latency_mean_s": float(lat_sum) / float(lat_n) if float(lat_n) else None,
    "zero_loss": check_rc == "0",
}
if config == "leave":
    log = open(f"{d}/node{last}.err").read()
    log = re.sub(r"\x1b\[[0-9;]*m", "", log)
    handed = [tuple(int(x) for x in m) for m in re.findall(r"handing buffered traces.*?traces=(\d+) span_bytes=(\d+) decisions=(\d+)", log)]
    done = re.findall(r"everything this node held is with its new owners.*?elapsed_ms=(\d+)", log)
    row["handoff_traces"] = sum(h[0] for h in handed)
    row["handoff_bytes"] = sum(h[1] for h in handed)
    row["handoff_decisions"] = sum(h[2] for h in handed)
    row["handoff_ms"] = int(done[0]) if done else None
json.dump(row, open(f"{d}/row.json", "w"))
print(json.dumps(row))
EOF
}

for config in $CONFIGS; do
    for ((r = 1; r <= RUNS; r++)); do run_one "$config" "$r"; done
done

python3 - "$OUT" "$RATE" "$DURATION" "$RUNS" <<'EOF'
import glob, json, statistics, sys
out, rate, duration, runs = sys.argv[1:]
rows = [json.load(open(p)) for p in sorted(glob.glob(f"{out}/*/run*/row.json"))]
def med(config, key):
    v = [r[key] for r in rows if r["config"] == config and r[key] is not None]
    return statistics.median(v) if v else None
lines = [f"RATE={rate} spans/s offered, {duration} per run, {runs} runs, medians", "",
         "| nodes | CPU µs/span (all nodes) | spans forwarded | mean decision latency | zero loss |",
         "|---|---|---|---|---|"]
for config, n in (("one", 1), ("three", 3)):
    c = med(config, "cpu_us_per_span")
    if c is None:
        continue
    zero = all(r["zero_loss"] for r in rows if r["config"] == config)
    lat = med(config, "decision_latency_mean_s")
    lines.append(f"| {n} | {c:.2f} | {med(config, 'forwarded_share') * 100:.0f}% | "
                 f"{lat * 1000:.0f} ms | {'yes' if zero else 'NO'} |")
one, three, share = med("one", "cpu_us_per_span"), med("three", "cpu_us_per_span"), med("three", "forwarded_share")
if one and three and share:
    lines += ["", f"cost per forwarded span: ({three:.2f} - {one:.2f}) / {share:.2f} = "
              f"{(three - one) / share:.2f} µs"]
leave = [r for r in rows if r["config"] == "leave"]
if leave:
    lines += ["", "graceful leave of one of three nodes halfway through the load (per run):", "",
              "| run | traces handed over | span bytes | decisions | hand-off took | CPU µs/span (whole run) | zero loss |",
              "|---|---|---|---|---|---|---|"]
    for i, r in enumerate(leave, 1):
        ms = f"{r['handoff_ms']} ms" if r.get("handoff_ms") is not None else "did not finish"
        lines.append(f"| {i} | {r.get('handoff_traces', 0):,} | {r.get('handoff_bytes', 0):,} | {r.get('handoff_decisions', 0):,} | {ms} | {r['cpu_us_per_span']:.2f} | {'yes' if r['zero_loss'] else 'NO'} |")
text = "\n".join(lines)
open(f"{out}/summary.md", "w").write(text + "\n")
print(text)
EOF
