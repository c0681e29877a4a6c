#!/usr/bin/env bash
# Side-by-side benchmark of tailsift: the same workload (tailsift-loadgen gen), the same
# counting sink (tailsift-loadgen sink), the same machine, four configurations:
#   direct    gen → sink                           (the harness's own ceiling)
#   rotel     gen → rotel-agent (pass-through) → sink
#   keepall   gen → tailsift, keep-all rules → sink
#   realistic gen → tailsift, errors + tagged tenants + 1-in-10 → sink
# Each runs RUNS times; the table reports medians. Loopback only; every run is bounded in time.
#
#   scripts/bench.sh            full run (release builds, installs rotel with pip)
#   scripts/bench.sh --smoke    CI check of the harness: debug builds, keepall only, ~3 s at a
#                               low rate; exits non-zero when nothing is delivered or the
#                               completeness / zero-loss check fails
#
# Environment (all optional):
#   RUNS=3  DURATION=10s  RATE=80000 (offered spans/s; 0 = as fast as acknowledged)
#   CONCURRENCY=8  SEED=1  CONFIGS="direct rotel keepall realistic"
#   OUT=/tmp/tailsift-bench/DATE (per-run logs, reports, summary.md, summary.json)
#   SKIP_BUILD=1 with TAILSIFT_BIN=... LOADGEN_BIN=... to use prebuilt binaries
#   PERF=1 (PERF_FREQ=1999, PERF_OPTS="--call-graph dwarf"): record a flat perf profile of the proxy during the load, summary
#   in OUT/<config>/run<N>/perf.txt (the profiler's own CPU is not the proxy's)
#   ROTEL_BIN=... to use an installed rotel-agent; ROTEL_PIP_SPEC=rotel (what pip installs)
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
    RATE=${RATE:-20000}
    CONFIGS=${CONFIGS:-keepall}
    PROFILE=debug
else
    RUNS=${RUNS:-3}
    DURATION=${DURATION:-10s}
    RATE=${RATE:-80000}
    CONFIGS=${CONFIGS:-direct rotel keepall realistic}
    PROFILE=release
fi
CONCURRENCY=${CONCURRENCY:-8}
SEED=${SEED:-1}
SUFFIX=""
[[ $SMOKE == 1 ]] && SUFFIX=-smoke
OUT=${OUT:-${TMPDIR:-/tmp}/tailsift-bench/$(date +%Y%m%d-%H%M%S)$SUFFIX}
CLK_TCK=$(getconf CLK_TCK)
DUR_S=$(python3 -c "import sys; s=sys.argv[1]; print(float(s[:-2])/1000 if s.endswith('ms') else float(s.rstrip('s')))" "$DURATION")

START_S=$SECONDS
log() { echo "[bench +$((SECONDS - START_S))s] $*" >&2; }
die() { echo "[bench] ERROR: $*" >&2; exit 1; }

# ---------------------------------------------------------------- builds
if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    flags=(); [[ $PROFILE == release ]] && flags=(--release)
    log "building tailsift ($PROFILE)"
    (cd "$ROOT" && CARGO_TARGET_DIR="$ROOT/target" cargo build "${flags[@]}" --bin tailsift)
    log "building tailsift-loadgen ($PROFILE)"
    (cd "$ROOT/loadgen" && CARGO_TARGET_DIR="$ROOT/loadgen/target" cargo build "${flags[@]}" --locked)
fi
# Which tailsift was measured: the tree it was built from, or the prebuilt binary given.
TAILSIFT_DESC="$(git -C "$ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)"
git -C "$ROOT" diff --quiet HEAD 2>/dev/null || TAILSIFT_DESC+=" (with uncommitted changes)"
[[ -n "${TAILSIFT_BIN:-}" ]] && TAILSIFT_DESC="prebuilt $TAILSIFT_BIN (repository now at $TAILSIFT_DESC)"
TAILSIFT_BIN=${TAILSIFT_BIN:-$ROOT/target/$PROFILE/tailsift}
LOADGEN_BIN=${LOADGEN_BIN:-$ROOT/loadgen/target/$PROFILE/tailsift-loadgen}
[[ -x $TAILSIFT_BIN ]] || die "no tailsift binary at $TAILSIFT_BIN"
[[ -x $LOADGEN_BIN ]] || die "no loadgen binary at $LOADGEN_BIN"

if [[ " $CONFIGS " == *" rotel "* && -z "${ROTEL_BIN:-}" ]]; then
    log "installing rotel with pip (${ROTEL_PIP_SPEC:-rotel})"
    python3 -m pip install --quiet --disable-pip-version-check "${ROTEL_PIP_SPEC:-rotel}" >&2
    ROTEL_BIN=$(command -v rotel-agent || true)
    if [[ -z $ROTEL_BIN ]]; then
        # The wheel keeps the binary inside the package directory.
        ROTEL_BIN=$(python3 -c 'import os, rotel; print(os.path.join(os.path.dirname(rotel.__file__), "rotel-agent"))')
    fi
    [[ -x $ROTEL_BIN ]] || die "rotel-agent not found after pip install"
fi

mkdir -p "$OUT"
log "results in $OUT"

# ---------------------------------------------------------------- helpers
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

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

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

wait_port() {
    local i
    for ((i = 0; i < $2 * 10; i++)); do
        (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
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

sink_spans() { grep -o 'spans=[0-9]*' "$1" 2>/dev/null | tail -1 | cut -d= -f2 || echo 0; }

# wait_quiet FILE SECONDS: until the sink's span count stops growing for 1.5 s.
wait_sink_quiet() {
    local last=-1 same=0 now i
    for ((i = 0; i < $2 * 2; i++)); do
        now=$(sink_spans "$1")
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

write_rules() { # write_rules FILE keepall|realistic
    if [[ $2 == keepall ]]; then
        printf '[[rule]]\nname = "all"\nsample_rate = 1\n' >"$1"
    else
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
    fi
}

# ---------------------------------------------------------------- one run
run_one() { # run_one CONFIG INDEX
    local config=$1 idx=$2 dir="$OUT/$1/run$2"
    mkdir -p "$dir"
    log "== $config run $idx (load average $(cut -d' ' -f1-3 /proc/loadavg))"
    cut -d' ' -f1 /proc/loadavg >"$dir/loadavg"
    "$LOADGEN_BIN" sink --listen 127.0.0.1:0 --report-file "$dir/sink.json" --progress \
        >"$dir/sink.out" 2>"$dir/sink.err" &
    local sink_pid=$!
    PIDS+=("$sink_pid")
    wait_for "$dir/sink.out" "sink listening" 15 "$sink_pid" || die "sink did not start ($dir/sink.err)"
    local sink_addr
    sink_addr=$(awk '/sink listening/ {print $3}' "$dir/sink.out")

    local proxy_pid="" target="" admin="" expect=all
    case $config in
    direct)
        target=$sink_addr
        ;;
    rotel)
        local gp hp
        gp=$(free_port)
        hp=$(free_port)
        # Pass-through: OTLP in, OTLP/gRPC out, no compression (tailsift exports uncompressed
        # too), receive limit as large as tailsift's.
        "$ROTEL_BIN" start \
            --otlp-grpc-endpoint "127.0.0.1:$gp" --otlp-http-endpoint "127.0.0.1:$hp" \
            --otlp-grpc-max-recv-msg-size-mib 16 \
            --exporter otlp --otlp-exporter-endpoint "http://$sink_addr" \
            --otlp-exporter-protocol grpc --otlp-exporter-compression none \
            >"$dir/proxy.out" 2>"$dir/proxy.err" &
        proxy_pid=$!
        PIDS+=("$proxy_pid")
        wait_port "$gp" 20 || die "rotel did not start ($dir/proxy.err)"
        target=127.0.0.1:$gp
        ;;
    keepall | realistic)
        write_rules "$dir/rules.toml" "$config"
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
[export]
kind = "otlp_grpc"
endpoint = "http://$sink_addr"
batch_max_spans = 8192
[admin]
listen = "127.0.0.1:0"
EOF
        "$TAILSIFT_BIN" run --config "$dir/tailsift.toml" >"$dir/proxy.out" 2>"$dir/proxy.err" &
        proxy_pid=$!
        PIDS+=("$proxy_pid")
        wait_for "$dir/proxy.err" "tailsift listening" 30 "$proxy_pid" || die "tailsift did not start ($dir/proxy.err)"
        local line
        line=$(grep -m1 "tailsift listening" "$dir/proxy.err")
        target=$(sed -E 's/.*grpc=([^ ]+).*/\1/' <<<"$line")
        admin=$(sed -E 's/.*admin=([^ ]+).*/\1/' <<<"$line")
        [[ $config == realistic ]] && expect=must-keep
        ;;
    *) die "unknown config $config" ;;
    esac

    # Baseline, then a monitor that samples RSS (and tailsift's buffered spans) 4x a second.
    local cpu0=0 rss0=0 mon_pid=""
    if [[ -n $proxy_pid ]]; then
        sleep 0.5
        cpu0=$(cpu_ticks "$proxy_pid")
        rss0=$(status_kb "$proxy_pid" VmRSS)
        (
            while alive "$proxy_pid"; do
                rss=$(status_kb "$proxy_pid" VmRSS)
                buf=nan bbytes=nan
                if [[ -n $admin ]]; then
                    m=$(curl -s -m 1 "http://$admin/metrics" || true)
                    buf=$(awk '$1 == "tailsift_buffered_spans" {print $2}' <<<"$m")
                    bbytes=$(awk '$1 == "tailsift_buffered_bytes" {print $2}' <<<"$m")
                fi
                echo "$(date +%s.%N) ${rss:-0} ${buf:-nan} ${bbytes:-nan}"
                sleep 0.25
            done
        ) >"$dir/monitor.tsv" 2>/dev/null &
        mon_pid=$!
        PIDS+=("$mon_pid")
    fi

    # PERF=1: a flat profile of the proxy while the load runs (perf report -i $dir/perf.data).
    local perf_pid=""
    if [[ ${PERF:-0} == 1 && -n $proxy_pid && $config != direct ]]; then
        perf record -F "${PERF_FREQ:-1999}" ${PERF_OPTS:-} -p "$proxy_pid" -o "$dir/perf.data" \
            >"$dir/perf.out" 2>&1 &
        perf_pid=$!
    fi

    log "$config: proxy up, generating load at $target"
    local gen_rc=0
    timeout $((${DUR_S%.*} + 60)) "$LOADGEN_BIN" gen --target "$target" --spans-per-sec "$RATE" \
        --duration "$DURATION" --concurrency "$CONCURRENCY" --seed "$SEED" \
        --report-file "$dir/gen.json" 2>"$dir/gen.err" || gen_rc=$?
    cat "$dir/gen.err" >&2
    [[ -f $dir/gen.json ]] || die "gen wrote no report (exit $gen_rc)"
    if [[ -n $perf_pid ]]; then
        kill -INT "$perf_pid" 2>/dev/null || true
        wait "$perf_pid" 2>/dev/null || true
        perf report -i "$dir/perf.data" --no-children --sort dso,symbol --percent-limit 0.5 \
            --stdio --width 120 2>/dev/null | grep -v '^#' | grep -v '^$' | head -n 60 >"$dir/perf.txt" || true
        log "$config: profile in $dir/perf.txt"
    fi

    local cpu1=0 hwm=0 exit_how=none drained=yes
    if [[ -n $proxy_pid ]]; then
        # Let the proxy decide and export what it holds before measuring CPU: tailsift until
        # nothing is buffered and the sink is quiet; rotel until the sink is quiet.
        if [[ -n $admin ]]; then
            local i b
            for ((i = 0; i < 80; i++)); do
                b=$(curl -s -m 1 "http://$admin/metrics" | awk '$1 == "tailsift_buffered_spans" {print $2}')
                [[ "$b" == 0 ]] && break
                sleep 0.5
            done
            [[ "$b" == 0 ]] || drained=no
        fi
        wait_sink_quiet "$dir/sink.err" 30 || drained=no
        log "$config: drained=$drained"
        cpu1=$(cpu_ticks "$proxy_pid")
        hwm=$(status_kb "$proxy_pid" VmHWM)
        if [[ -n $admin ]]; then
            curl -s -m 5 "http://$admin/metrics" >"$dir/metrics.txt" || true
        fi
        stop "$proxy_pid" 40
        exit_how=$STOPPED
        [[ -n $mon_pid ]] && { kill "$mon_pid" 2>/dev/null || true; wait "$mon_pid" 2>/dev/null || true; }
        # Whatever the proxy flushed at shutdown has to reach the sink before it reports.
        wait_sink_quiet "$dir/sink.err" 10 || true
    fi
    log "$config: proxy $exit_how, stopping the sink"
    stop "$sink_pid" 20
    [[ -f $dir/sink.json ]] || die "sink wrote no report"

    local check_args=(--gen-report "$dir/gen.json" --sink-report "$dir/sink.json" --expect "$expect"
        --json-out "$dir/check.json")
    [[ -s $dir/metrics.txt ]] && check_args+=(--proxy-metrics "$dir/metrics.txt")
    local check_rc=0
    "$LOADGEN_BIN" check "${check_args[@]}" >"$dir/check.txt" 2>&1 || check_rc=$?
    tail -n 6 "$dir/check.txt" >&2

    python3 - "$dir" "$config" "$cpu0" "$cpu1" "$CLK_TCK" "$rss0" "$hwm" "$exit_how" "$drained" "$check_rc" <<'EOF'
import json, math, re, sys
d, config, cpu0, cpu1, tck, rss0, hwm, exit_how, drained, check_rc = sys.argv[1:]
gen = json.load(open(f"{d}/gen.json"))
sink = json.load(open(f"{d}/sink.json"))
try:
    check = json.load(open(f"{d}/check.json"))
except Exception:
    check = {"pass": False, "failures": ["checker crashed"], "tenants": {}}
acked = gen["acked_spans"]
elapsed = gen["elapsed_s"] or float("nan")
cpu_s = (int(cpu1) - int(cpu0)) / int(tck)
row = {
    "config": config,
    "offered_spans_per_sec": gen["offered_spans"] / elapsed,
    "acked_spans_per_sec": acked / elapsed,
    "delivered_spans_per_sec": sink["spans"] / elapsed,
    "acked_spans": acked,
    "delivered_spans": sink["spans"],
    "failed_requests": gen["requests_failed"],
    "failures_by_reason": gen["failures_by_reason"],
    "latency_p99_ms": gen["latency_ms"]["p99"],
    "check_pass": bool(check.get("pass")) and check_rc == "0",
    "check_failures": check.get("failures", []),
    "check_warnings": check.get("warnings", []),
    "sink_gzip_requests": sink.get("gzip_requests", 0),
    "kept_fraction": {t: v["kept_fraction"] for t, v in check.get("tenants", {}).items()},
    "proxy_exit": exit_how,
    "loadavg_at_start": float(open(f"{d}/loadavg").read()),
    "drained": drained == "yes",
}
if config != "direct":
    row["cpu_s"] = cpu_s
    row["cpu_s_per_million_spans"] = cpu_s / acked * 1e6 if acked else float("nan")
    row["peak_rss_mb"] = int(hwm) / 1024
    row["idle_rss_mb"] = int(rss0) / 1024
    best = None
    for line in open(f"{d}/monitor.tsv"):
        parts = line.split()
        if len(parts) < 4 or parts[2] in ("nan", ""):
            continue
        rss_kb, buf, bbytes = int(parts[1]), float(parts[2]), float(parts[3])
        if buf > 0 and (best is None or buf > best[1]):
            best = (rss_kb, buf, bbytes)
    if best:
        row["max_buffered_spans"] = best[1]
        row["rss_bytes_per_buffered_span"] = (best[0] - int(rss0)) * 1024 / best[1]
        row["accounted_bytes_per_buffered_span"] = best[2] / best[1]
    acc = check.get("accounting")
    if acc:
        row["zero_loss"] = acc
    m = None
    try:
        for line in open(f"{d}/proxy.err"):
            if "stopped" in line and "received=" in line:
                m = line
    except FileNotFoundError:
        pass
    if m:
        clean = re.sub(r"\x1b\[[0-9;]*m", "", m)
        row["proxy_final"] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", clean)}
json.dump(row, open(f"{d}/run.json", "w"), indent=1)
EOF
}

# ---------------------------------------------------------------- runs
FAILED=0
for ((i = 1; i <= RUNS; i++)); do
    for config in $CONFIGS; do
        run_one "$config" "$i"
        if ! python3 -c "import json,sys; sys.exit(0 if json.load(open(sys.argv[1]))['check_pass'] else 1)" \
            "$OUT/$config/run$i/run.json"; then
            log "$config run $i: CHECK FAILED (see $OUT/$config/run$i/check.txt)"
            FAILED=1
        fi
    done
done

# ---------------------------------------------------------------- summary
{
    echo "machine: $(nproc) cores, $(free -g | awk '/Mem:/ {print $2}') GiB, Linux $(uname -r)"
    echo "workload: seed $SEED, offered $RATE spans/s (0 = max), $DURATION, concurrency $CONCURRENCY, runs $RUNS"
    [[ -n "${ROTEL_BIN:-}" ]] && echo "rotel: $("$ROTEL_BIN" --version 2>&1 | head -1)"
    echo "tailsift: $TAILSIFT_DESC"
} >"$OUT/machine.txt"
python3 - "$OUT" "$CONFIGS" <<'EOF' | tee "$OUT/summary.md"
import json, os, statistics, sys
out, configs = sys.argv[1], sys.argv[2].split()
def med(rows, key):
    vals = [r[key] for r in rows if isinstance(r.get(key), (int, float))]
    return statistics.median(vals) if vals else None
def fmt(x, spec):
    return "-" if x is None else format(x, spec)
res = {}
for c in configs:
    rows = []
    d = os.path.join(out, c)
    for run in sorted(os.listdir(d)) if os.path.isdir(d) else []:
        p = os.path.join(d, run, "run.json")
        if os.path.exists(p):
            rows.append(json.load(open(p)))
    res[c] = rows
print(open(os.path.join(out, "machine.txt")).read())
rotel_cpu = med(res.get("rotel", []), "cpu_s_per_million_spans")
hdr = ("config", "offered/s", "acked/s", "delivered/s", "CPU s/M spans", "÷ rotel", "peak RSS MB",
       "RSS B/buffered span", "max buffered", "p99 ms", "load avg", "checks")
print("| " + " | ".join(hdr) + " |")
print("|" + "---|" * len(hdr))
summary = {}
for c, rows in res.items():
    if not rows:
        continue
    cpu = med(rows, "cpu_s_per_million_spans")
    ratio = cpu / rotel_cpu if (cpu is not None and rotel_cpu and c not in ("direct", "rotel")) else None
    passed = sum(1 for r in rows if r["check_pass"])
    vals = {
        "offered": med(rows, "offered_spans_per_sec"),
        "acked": med(rows, "acked_spans_per_sec"),
        "delivered": med(rows, "delivered_spans_per_sec"),
        "cpu": cpu, "ratio": ratio,
        "rss": med(rows, "peak_rss_mb"),
        "rss_per_span": med(rows, "rss_bytes_per_buffered_span"),
        "max_buffered": med(rows, "max_buffered_spans"),
        "p99": med(rows, "latency_p99_ms"),
        "load": med(rows, "loadavg_at_start"),
    }
    summary[c] = vals | {"runs": len(rows), "checks_passed": passed}
    print("| " + " | ".join([
        c, fmt(vals["offered"], ",.0f"), fmt(vals["acked"], ",.0f"), fmt(vals["delivered"], ",.0f"),
        fmt(cpu, ".3f"), fmt(ratio, ".2f"), fmt(vals["rss"], ".0f"), fmt(vals["rss_per_span"], ".0f"),
        fmt(vals["max_buffered"], ",.0f"), fmt(vals["p99"], ".1f"), fmt(vals["load"], ".1f"),
        f"{passed}/{len(rows)} pass",
    ]) + " |")
print()
for c, rows in res.items():
    if not rows:
        continue
    tenants = sorted({t for r in rows for t in r["kept_fraction"]}, key=lambda t: int(t.split("-")[1]))
    kept = {t: statistics.median([r["kept_fraction"][t] for r in rows if t in r["kept_fraction"]]) for t in tenants}
    summary[c]["kept_fraction"] = kept
    print(f"kept fraction per tenant, {c} (median): " +
          ", ".join(f"{t.split('-')[1]}={v:.3f}" for t, v in kept.items()))
    for r in rows:
        z = r.get("zero_loss")
        if z:
            print(f"  zero-loss {c}: delivered+dropped={z['delivered_plus_dropped']} acked={z['acknowledged']} "
                  f"balanced={z['balanced']} proxy_final={r.get('proxy_final')}")
        if r["check_failures"]:
            print(f"  {c}: FAILED: " + "; ".join(r["check_failures"]))
        if r.get("check_warnings"):
            print(f"  {c}: warning: " + "; ".join(r["check_warnings"]))
        if r.get("failed_requests"):
            print(f"  {c}: {r['failed_requests']} failed requests {r['failures_by_reason']}")
        if r.get("proxy_exit") == "killed" or not r.get("drained", True):
            print(f"  {c}: proxy exit={r.get('proxy_exit')} drained={r.get('drained')}")
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=1)
EOF

if [[ $SMOKE == 1 ]]; then
    delivered=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['delivered_spans'])" "$OUT/keepall/run1/run.json")
    [[ "$delivered" -gt 0 ]] || { log "smoke: no spans delivered"; exit 1; }
fi
if [[ $FAILED != 0 ]]; then
    log "some checks failed"
    exit 1
fi
log "done: $OUT/summary.md"
