#!/usr/bin/env bash
# CPU per log record and per metric data point through tailsift: the same load generator and
# counting sink as scripts/bench.sh, tailsift with keep-all rules, four configurations:
#   traces            gen → tailsift → sink, traces only at RATE spans/s (the baseline)
#   logs-with-traces  the same traces plus one log record per span carrying its trace and span
#                     id (held with its trace, exported with it): RATE spans/s + RATE records/s
#   logs-untraced     log records without trace ids only (passed straight to export),
#                     LOG_RATE records/s
#   metrics           metrics requests (gauges, sums, histograms; 500 points from 5 resources
#                     each), passed through unchanged, POINT_RATE points/s
# CPU is utime+stime of the tailsift process from just before the load to when everything is
# exported (nothing buffered, the sink quiet), divided by what was acknowledged. The marginal
# cost of a log record held with its trace is (CPU of logs-with-traces − the traces run's CPU
# per span × its spans) ÷ its log records. Each configuration runs RUNS times (interleaved);
# the table reports medians. Loopback only; every run is bounded in time.
#
#   scripts/bench-signals.sh          release builds, RUNS=3, 10 s per run
#   scripts/bench-signals.sh --smoke  CI check of the harness: debug builds, one short run of
#                                     each configuration at a low rate; exits non-zero when
#                                     anything acknowledged is not delivered
#
# Environment (all optional):
#   RUNS=3  DURATION=10s  RATE=80000 (spans/s)  LOG_RATE=$RATE (untraced records/s)
#   POINT_RATE=200000 (metric points/s)  CONCURRENCY=8  SEED=1
#   CONFIGS="traces logs-with-traces logs-untraced metrics"
#   OUT=/tmp/tailsift-bench-signals/DATE (per-run logs, reports, summary.md, summary.json)
#   CARGO_TARGET_DIR (tailsift's build; default target/), LOADGEN_TARGET_DIR (the load
#   generator's; default $CARGO_TARGET_DIR/loadgen when set, else loadgen/target)
#   SKIP_BUILD=1 with TAILSIFT_BIN=... LOADGEN_BIN=... to use prebuilt binaries
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SMOKE=0
if [[ "${1:-}" == "--smoke" ]]; then
    SMOKE=1
elif [[ $# -gt 0 ]]; then
    echo "usage: $0 [--smoke]" >&2
    exit 2
fi

if [[ $SMOKE == 1 ]]; then
    RUNS=${RUNS:-1}
    DURATION=${DURATION:-3s}
    RATE=${RATE:-5000}
    POINT_RATE=${POINT_RATE:-20000}
    PROFILE=debug
else
    RUNS=${RUNS:-3}
    DURATION=${DURATION:-10s}
    RATE=${RATE:-80000}
    POINT_RATE=${POINT_RATE:-200000}
    PROFILE=release
fi
LOG_RATE=${LOG_RATE:-$RATE}
CONFIGS=${CONFIGS:-traces logs-with-traces logs-untraced metrics}
CONCURRENCY=${CONCURRENCY:-8}
SEED=${SEED:-1}
SUFFIX=""
[[ $SMOKE == 1 ]] && SUFFIX=-smoke
OUT=${OUT:-${TMPDIR:-/tmp}/tailsift-bench-signals/$(date +%Y%m%d-%H%M%S)$SUFFIX}
CLK_TCK=$(getconf CLK_TCK)
DUR_S=$(python3 -c "import sys; s=sys.argv[1]; print(float(s[:-2])/1000 if s.endswith('ms') else float(s.rstrip('s')))" "$DURATION")
TS_TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
LG_TARGET=${LOADGEN_TARGET_DIR:-${CARGO_TARGET_DIR:+$CARGO_TARGET_DIR/loadgen}}
LG_TARGET=${LG_TARGET:-$ROOT/loadgen/target}

START_S=$SECONDS
log() { echo "[bench-signals +$((SECONDS - START_S))s] $*" >&2; }
die() { echo "[bench-signals] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- builds
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    flags=(); [[ $PROFILE == release ]] && flags=(--release)
    log "building tailsift ($PROFILE, $TS_TARGET)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$TS_TARGET" cargo build "${flags[@]}" --bin tailsift)
    log "building tailsift-loadgen ($PROFILE, $LG_TARGET)"
    (cd "$ROOT/loadgen" && CARGO_TARGET_DIR="$LG_TARGET" cargo build "${flags[@]}" --locked)
fi
TAILSIFT_DESC="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || TAILSIFT_DESC+=" (with uncommitted changes)"
[[ -n "${TAILSIFT_BIN:-}" ]] && TAILSIFT_DESC="prebuilt $TAILSIFT_BIN (repository now at $TAILSIFT_DESC)"
TAILSIFT_BIN=${TAILSIFT_BIN:-$TS_TARGET/$PROFILE/tailsift}
LOADGEN_BIN=${LOADGEN_BIN:-$LG_TARGET/$PROFILE/tailsift-loadgen}
[[ -x $TAILSIFT_BIN ]] || die "no tailsift binary at $TAILSIFT_BIN"
[[ -x $LOADGEN_BIN ]] || die "no loadgen binary at $LOADGEN_BIN"

mkdir -p "$OUT"
log "results in $OUT"

# ---------------------------------------------------------------- helpers
# Only processes this script started are ever signalled, by their pid.
PIDS=()
# A process counts as gone once it is a zombie: `kill -0` would still succeed on it.
alive() { [[ -e /proc/$1 ]] && [[ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]]; }
cleanup() {
    local p
    for p in "${PIDS[@]}"; do
        alive "$p" && kill -TERM "$p" 2>/dev/null || true
    done
}
trap cleanup EXIT

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
status_kb() { awk -v k="$2:" '$1 == k {print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }

# wait_for FILE PATTERN SECONDS [PID]: until a line matching PATTERN appears (or PID dies).
wait_for() {
    local i
    for ((i = 0; i < $3 * 10; i++)); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        [[ -n "${4:-}" ]] && ! alive "$4" && return 1
        sleep 0.1
    done
    return 1
}

# stop PID SECONDS: SIGTERM, wait up to SECONDS, then SIGKILL; sets STOPPED=exited|killed.
stop() {
    local i
    STOPPED=exited
    kill -TERM "$1" 2>/dev/null || true
    for ((i = 0; i < $2 * 10; i++)); do
        alive "$1" || break
        sleep 0.1
    done
    if alive "$1"; then
        kill -KILL "$1" 2>/dev/null || true
        STOPPED=killed
    fi
    wait "$1" 2>/dev/null || true
}

# The sink's running counts (spans, log records, metric points) from its last progress line.
sink_counts() { grep 'sink progress' "$1" 2>/dev/null | tail -1 | grep -o '\(spans\|log_records\|metric_points\)=[0-9]*' | tr '\n' ' ' || true; }

# wait_sink_quiet FILE SECONDS: until none of the sink's counts has grown for 1.5 s.
wait_sink_quiet() {
    local last=-1 same=0 now i
    for ((i = 0; i < $2 * 2; i++)); do
        now=$(sink_counts "$1")
        if [[ "$now" == "$last" ]]; then
            same=$((same + 1))
            ((same >= 3)) && return 0
        else
            same=0
        fi
        last=$now
        sleep 0.5
    done
    return 1
}

prom() { awk -v k="$2" '$1 == k {print $2}' <<<"$1"; }

# ---------------------------------------------------------------- one run
run_one() { # run_one CONFIG INDEX
    local config=$1 idx=$2 dir="$OUT/$1/run$2"
    mkdir -p "$dir"
    cut -d' ' -f1-3 /proc/loadavg >"$dir/loadavg"
    uptime >"$dir/uptime"
    log "== $config run $idx (load average $(cat "$dir/loadavg"))"
    "$LOADGEN_BIN" sink --listen 127.0.0.1:0 --report-file "$dir/sink.json" --progress \
        --duration $((${DUR_S%.*} + 240))s >"$dir/sink.out" 2>"$dir/sink.err" &
    local sink_pid=$!
    PIDS+=("$sink_pid")
    wait_for "$dir/sink.out" "sink listening" 15 "$sink_pid" || die "sink did not start ($dir/sink.err)"
    local sink_addr
    sink_addr=$(awk '/sink listening/ {print $3}' "$dir/sink.out")

    local gen_args=() rate=$RATE
    case $config in
    traces) gen_args=(--signal traces) ;;
    logs-with-traces) gen_args=(--signal logs) ;;
    logs-untraced) gen_args=(--signal logs --untraced-logs); rate=$LOG_RATE ;;
    metrics) gen_args=(--signal metrics); rate=$POINT_RATE ;;
    *) die "unknown config $config" ;;
    esac

    # Keep-all rules: every record is exported, so CPU per record is the whole path.
    printf '[[rule]]\nname = "all"\nsample_rate = 1\n' >"$dir/rules.toml"
    cat >"$dir/tailsift.toml" <<EOF
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
shards = 0
[rules]
file = "$dir/rules.toml"
[logs]
untraced_sample_rate = 1
[export]
kind = "otlp_grpc"
endpoint = "http://$sink_addr"
batch_max_spans = 8192
[admin]
listen = "127.0.0.1:0"
EOF
    "$TAILSIFT_BIN" run --config "$dir/tailsift.toml" >"$dir/proxy.out" 2>"$dir/proxy.err" &
    local proxy_pid=$!
    PIDS+=("$proxy_pid")
    wait_for "$dir/proxy.err" "tailsift listening" 30 "$proxy_pid" || die "tailsift did not start ($dir/proxy.err)"
    local line target admin
    line=$(grep -m1 "tailsift listening" "$dir/proxy.err")
    target=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")
    admin=$(sed -E 's/.*admin=([^ ]+).*/\1/' <<<"$line")

    sleep 0.5
    local cpu0 rss0
    cpu0=$(cpu_ticks "$proxy_pid")
    rss0=$(status_kb "$proxy_pid" VmRSS)

    log "$config: proxy up, generating load at $target (${gen_args[*]}, $rate/s)"
    local gen_rc=0
    timeout $((${DUR_S%.*} + 60)) "$LOADGEN_BIN" gen --target "$target" "${gen_args[@]}" \
        --spans-per-sec "$rate" --duration "$DURATION" --concurrency "$CONCURRENCY" --seed "$SEED" \
        --report-file "$dir/gen.json" 2>"$dir/gen.err" || gen_rc=$?
    cat "$dir/gen.err" >&2
    [[ -f $dir/gen.json ]] || die "gen wrote no report (exit $gen_rc)"

    # Let the proxy decide and export everything before measuring CPU: nothing buffered, then
    # the sink quiet.
    local drained=yes i m b t
    for ((i = 0; i < 80; i++)); do
        m=$(curl -s -m 1 "http://$admin/metrics" || true)
        b=$(prom "$m" tailsift_buffered_spans)
        t=$(prom "$m" tailsift_buffered_traces)
        [[ "$b" == 0 && "$t" == 0 ]] && break
        sleep 0.5
    done
    [[ "$b" == 0 && "$t" == 0 ]] || drained=no
    wait_sink_quiet "$dir/sink.err" 30 || drained=no
    log "$config: drained=$drained"
    local cpu1 hwm
    cpu1=$(cpu_ticks "$proxy_pid")
    hwm=$(status_kb "$proxy_pid" VmHWM)
    curl -s -m 5 "http://$admin/metrics" >"$dir/metrics.txt" || true
    stop "$proxy_pid" 40
    local exit_how=$STOPPED
    wait_sink_quiet "$dir/sink.err" 10 || true
    stop "$sink_pid" 20
    [[ -f $dir/sink.json ]] || die "sink wrote no report"

    # Traces: every acknowledged trace whole, delivered + dropped = acknowledged.
    local check_rc=0
    if [[ $config == traces || $config == logs-with-traces ]]; then
        "$LOADGEN_BIN" check --gen-report "$dir/gen.json" --sink-report "$dir/sink.json" \
            --expect all --proxy-metrics "$dir/metrics.txt" --json-out "$dir/check.json" \
            >"$dir/check.txt" 2>&1 || check_rc=$?
        tail -n 3 "$dir/check.txt" >&2
    fi

    python3 - "$dir" "$config" "$cpu0" "$cpu1" "$CLK_TCK" "$rss0" "$hwm" "$exit_how" "$drained" "$check_rc" <<'EOF'
import json, sys
d, config, cpu0, cpu1, tck, rss0, hwm, exit_how, drained, check_rc = sys.argv[1:]
gen = json.load(open(f"{d}/gen.json"))
sink = json.load(open(f"{d}/sink.json"))
prom = {}
try:
    for line in open(f"{d}/metrics.txt"):
        if line.startswith("#") or not line.strip():
            continue
        name, value = line.rsplit(" ", 1)
        base = name.split("{")[0]
        prom[base] = prom.get(base, 0) + float(value)
except FileNotFoundError:
    pass
elapsed = gen["elapsed_s"] or float("nan")
cpu_s = (int(cpu1) - int(cpu0)) / int(tck)
spans, logs, points = gen["acked_spans"], gen["acked_log_records"], gen["acked_metric_points"]
offered = gen["offered_spans"] + gen["offered_log_records"] + gen["offered_metric_points"]
acked = spans + logs + points
delivered = sink["spans"] + sink["log_records"] + sink["metric_points"]
failures = []
if config in ("traces", "logs-with-traces"):
    try:
        check = json.load(open(f"{d}/check.json"))
    except Exception:
        check = {"pass": False, "failures": ["checker crashed"]}
    if not check.get("pass") or check_rc != "0":
        failures += ["traces: " + f for f in check.get("failures", ["check failed"])]
if sink["spans"] != spans:
    failures.append(f"spans delivered {sink['spans']} != acknowledged {spans}")
if sink["log_records"] != logs:
    failures.append(f"log records delivered {sink['log_records']} != acknowledged {logs}")
if sink["metric_points"] != points:
    failures.append(f"metric points delivered {sink['metric_points']} != acknowledged {points}")
if config == "logs-with-traces" and sink["logs"]["traced"] != logs:
    failures.append(f"log records with their trace id {sink['logs']['traced']} != acknowledged {logs}")
if config == "logs-untraced" and sink["logs"]["untraced"] != logs:
    failures.append(f"log records without trace id {sink['logs']['untraced']} != acknowledged {logs}")
for name in ("tailsift_spans_dropped_total", "tailsift_log_records_dropped_total",
             "tailsift_metric_points_dropped_total"):
    if prom.get(name, 0) != 0:
        failures.append(f"{name} = {prom[name]:.0f}")
if prom.get("tailsift_log_records_exported_total", 0) != logs:
    failures.append(f"tailsift_log_records_exported_total {prom.get('tailsift_log_records_exported_total')} != {logs}")
if prom.get("tailsift_metric_points_exported_total", 0) != points:
    failures.append(f"tailsift_metric_points_exported_total {prom.get('tailsift_metric_points_exported_total')} != {points}")
if acked == 0:
    failures.append("nothing acknowledged")
if drained != "yes":
    failures.append("proxy did not drain")
load = open(f"{d}/loadavg").read().split()
metric_requests = gen["metrics"]["requests_ok"]
row = {
    "config": config,
    "elapsed_s": elapsed,
    "offered_per_sec": offered / elapsed,
    "acked_per_sec": acked / elapsed,
    "delivered_per_sec": delivered / elapsed,
    "acked_spans": spans, "acked_log_records": logs, "acked_metric_points": points,
    "acked_metric_requests": metric_requests,
    "delivered_spans": sink["spans"], "delivered_log_records": sink["log_records"],
    "delivered_metric_points": sink["metric_points"],
    "failed_requests": (gen["requests_failed"] if gen["signal"] == "traces" or not gen["untraced_logs"] and gen["signal"] == "logs" else 0)
        + gen["logs"]["requests_failed"] + gen["metrics"]["requests_failed"],
    "latency_p99_ms": gen["latency_ms"]["p99"],
    "cpu_s": cpu_s,
    "cpu_s_per_million_records": cpu_s / acked * 1e6 if acked else None,
    "cpu_us_per_span": cpu_s / spans * 1e6 if spans and not logs else None,
    "cpu_us_per_point": cpu_s / points * 1e6 if points else None,
    "cpu_us_per_metric_request": cpu_s / metric_requests * 1e6 if metric_requests else None,
    "cpu_us_per_untraced_log": cpu_s / logs * 1e6 if logs and not spans else None,
    "peak_rss_mb": int(hwm) / 1024,
    "idle_rss_mb": int(rss0) / 1024,
    "loadavg": [float(x) for x in load],
    "proxy_exit": exit_how,
    "zero_loss": not failures,
    "failures": failures,
}
json.dump(row, open(f"{d}/run.json", "w"), indent=1)
print(f"{config}: {acked} acked, {delivered} delivered, CPU {cpu_s:.2f} s, "
      f"{row['cpu_s_per_million_records']:.3f} s/M records, zero loss: {not failures} {failures}",
      file=sys.stderr)
EOF
}

# ---------------------------------------------------------------- runs
FAILED=0
for ((i = 1; i <= RUNS; i++)); do
    for config in $CONFIGS; do
        run_one "$config" "$i"
        if ! python3 -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['zero_loss'] else 1)" \
            "$OUT/$config/run$i/run.json"; then
            log "$config run $i: LOSS OR CHECK FAILURE (see $OUT/$config/run$i/run.json)"
            FAILED=1
        fi
    done
done

# ---------------------------------------------------------------- summary
{
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r)"
    echo "workload: seed $SEED, $RATE spans/s, $LOG_RATE untraced log records/s, $POINT_RATE metric points/s, $DURATION, concurrency $CONCURRENCY, runs $RUNS, $PROFILE builds"
    echo "tailsift: $TAILSIFT_DESC"
} >"$OUT/machine.txt"
python3 - "$OUT" "$CONFIGS" <<'EOF' | tee "$OUT/summary.md"
import json, os, statistics, sys
out, configs = sys.argv[1], sys.argv[2].split()
def med(vals):
    vals = [v for v in vals if isinstance(v, (int, float))]
    return statistics.median(vals) if vals else None
def fmt(x, spec):
    return "-" if x is None else format(x, spec)
res = {}
for c in configs:
    d = os.path.join(out, c)
    rows = []
    for run in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        p = os.path.join(d, run, "run.json")
        if os.path.exists(p):
            rows.append(json.load(open(p)))
    if rows:
        res[c] = rows
print(open(os.path.join(out, "machine.txt")).read())
# Marginal CPU per log record held with its trace: each logs-with-traces run minus the median
# traces-only CPU per span for its spans.
per_span = med([r["cpu_us_per_span"] for r in res.get("traces", [])])
marginal = []
for r in res.get("logs-with-traces", []):
    if per_span is not None and r["acked_log_records"]:
        marginal.append((r["cpu_s"] * 1e6 - per_span * r["acked_spans"]) / r["acked_log_records"])
hdr = ("config", "offered records/s", "acked/s", "delivered/s", "CPU s/M records",
       "µs/span", "µs/log record", "µs/metric point", "µs/metric request", "peak RSS MB",
       "p99 ms", "load avg (1/5/15 min)", "zero loss")
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
summary = {"marginal_us_per_traced_log": med(marginal), "marginal_runs": marginal}
for c, rows in res.items():
    m = lambda k: med([r[k] for r in rows])
    loads = [r["loadavg"] for r in rows]
    load = "; ".join("/".join(f"{x:.1f}" for x in l) for l in loads)
    ok = sum(1 for r in rows if r["zero_loss"])
    if c == "logs-with-traces":
        per_log = med(marginal)
        per_log_s = f"{fmt(per_log, '.2f')} marginal"
    elif c == "logs-untraced":
        per_log = m("cpu_us_per_untraced_log")
        per_log_s = fmt(per_log, ".2f")
    else:
        per_log, per_log_s = None, "-"
    vals = {
        "offered_per_sec": m("offered_per_sec"), "acked_per_sec": m("acked_per_sec"),
        "delivered_per_sec": m("delivered_per_sec"),
        "cpu_s_per_million_records": m("cpu_s_per_million_records"),
        "cpu_us_per_span": m("cpu_us_per_span"), "cpu_us_per_log_record": per_log,
        "cpu_us_per_point": m("cpu_us_per_point"),
        "cpu_us_per_metric_request": m("cpu_us_per_metric_request"),
        "peak_rss_mb": m("peak_rss_mb"), "latency_p99_ms": m("latency_p99_ms"),
        "loadavg": loads, "runs": len(rows), "zero_loss_runs": ok,
    }
    summary[c] = vals
    print("| " + " | ".join([
        c, fmt(vals["offered_per_sec"], ",.0f"), fmt(vals["acked_per_sec"], ",.0f"),
        fmt(vals["delivered_per_sec"], ",.0f"), fmt(vals["cpu_s_per_million_records"], ".3f"),
        fmt(vals["cpu_us_per_span"], ".2f"), per_log_s, fmt(vals["cpu_us_per_point"], ".3f"),
        fmt(vals["cpu_us_per_metric_request"], ".0f"), fmt(vals["peak_rss_mb"], ".0f"),
        fmt(vals["latency_p99_ms"], ".1f"), load, f"{ok}/{len(rows)}",
    ]) + " |")
print()
if marginal:
    print("marginal µs per log record held with its trace, per run: " +
          ", ".join(f"{x:.2f}" for x in marginal) +
          f" (traces-only median {per_span:.2f} µs/span)")
for c, rows in res.items():
    for i, r in enumerate(rows, 1):
        print(f"  {c} run {i}: CPU {r['cpu_s']:.2f} s for {r['acked_spans']} spans + "
              f"{r['acked_log_records']} log records + {r['acked_metric_points']} points"
              f" ({r['acked_metric_requests']} metric requests); failed requests "
              f"{r['failed_requests']}; proxy {r['proxy_exit']}")
        if r["failures"]:
            print(f"  {c} run {i}: FAILED: " + "; ".join(r["failures"]))
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
EOF

if [[ $FAILED != 0 ]]; then
    log "some runs lost records or failed their checks"
    exit 1
fi
log "done: $OUT/summary.md"
