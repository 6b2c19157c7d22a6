#!/usr/bin/env bash
# Federated training with Flower's deployment runtime, all on this machine, with TLS:
# one SuperLink, one SuperNode per site file (each with its own --node-config data-path and Runtime API port),
# then `flwr run` of the Flower App in this folder, streaming its log; checks the run completed and that the
# model file loads into xgboost. Every process it starts is stopped on exit (also on error or Ctrl-C).
#
# Usage:
#   deploy/flower/run_local_deployment.sh --data site0.csv --data site1.csv --label outcome --out model.json \
#       [--run-config "n-estimators=10 max-depth=6 learning-rate=0.3 max-bin=256"] \
#       [--workdir DIR] [--advertise-host IP] [--timeout SECONDS]
#
#   --run-config      extra run-config overrides (TOML values: strings quoted), see pyproject.toml
#   --workdir         keep certificates, Flower homes and logs here (default: a temp dir, removed on success)
#   --advertise-host  bind the SuperLink on 0.0.0.0 and have the SuperNodes reach it at this IP/host name
#                     (what separate hosts do); default: everything on 127.0.0.1
#   --timeout         give up on the run after this many seconds (default 3600)
#
# Needs privboost (and so flwr) installed in the current Python environment; nothing is downloaded.
set -euo pipefail

APP_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
PYTHON="${PYTHON:-python}"
DATA=()
LABEL=""
OUT=""
EXTRA_CONFIG=""
WORK=""
KEEP_WORK=0
ADVERTISE=""
TIMEOUT=3600

die() { echo "run_local_deployment: $*" >&2; exit 2; }
while [[ $# -gt 0 ]]; do
    case "$1" in
        --data) DATA+=("$2"); shift 2 ;;
        --label) LABEL="$2"; shift 2 ;;
        --out) OUT="$2"; shift 2 ;;
        --run-config) EXTRA_CONFIG="$2"; shift 2 ;;
        --workdir) WORK="$2"; KEEP_WORK=1; shift 2 ;;
        --advertise-host) ADVERTISE="$2"; shift 2 ;;
        --timeout) TIMEOUT="$2"; shift 2 ;;
        -h|--help) sed -n '2,19p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $1 (see --help)" ;;
    esac
done
[[ ${#DATA[@]} -ge 2 ]] || die "give at least two --data files (one SuperNode each)"
[[ -n "$LABEL" ]] || die "--label is required"
[[ -n "$OUT" ]] || die "--out is required"
for i in "${!DATA[@]}"; do
    [[ -f "${DATA[$i]}" ]] || die "no such data file: ${DATA[$i]}"
    DATA[$i]="$(cd "$(dirname "${DATA[$i]}")" && pwd)/$(basename "${DATA[$i]}")"  # SuperNodes need absolute paths
done
mkdir -p "$(dirname "$OUT")"
OUT="$(cd "$(dirname "$OUT")" && pwd)/$(basename "$OUT")"  # written by the ServerApp, whose cwd is not ours
if [[ -z "$WORK" ]]; then WORK="$(mktemp -d -t privboost-flower.XXXXXX)"; fi
mkdir -p "$WORK/logs"
WORK="$(cd "$WORK" && pwd)"

# Keep Flower from phoning home (telemetry, update check) and from writing to ~/.flwr.
export FLWR_TELEMETRY_ENABLED=0 FLWR_DISABLE_UPDATE_CHECK=1
export PYTHONUNBUFFERED=1

# ------------------------------------------------------------------ process bookkeeping and cleanup
PIDS=()
descendants() {  # every process below $1 (Flower's SuperExec and ServerApp/ClientApp processes)
    local child
    for child in $(pgrep -P "$1" 2>/dev/null); do
        echo "$child"
        descendants "$child"
    done
}
cleanup() {
    local status=$? all=() pid
    trap - EXIT INT TERM
    for pid in "${PIDS[@]}"; do
        all+=("$pid" $(descendants "$pid"))
    done
    if [[ ${#all[@]} -gt 0 ]]; then
        kill -TERM "${all[@]}" 2>/dev/null || true
        for _ in $(seq 50); do
            # still running (zombies, which an init that does not reap may leave, count as gone)
            ps -o stat= -p "$(IFS=,; echo "${all[*]}")" 2>/dev/null | grep -qv '^Z' || break
            sleep 0.2
        done
        kill -KILL "${all[@]}" 2>/dev/null || true
        wait "${PIDS[@]}" 2>/dev/null || true
    fi
    if [[ $status -ne 0 ]]; then
        echo "run_local_deployment: failed (exit $status); logs in $WORK/logs:" >&2
        for log in "$WORK"/logs/*.log; do
            [[ -f "$log" ]] || continue
            echo "----- $(basename "$log") (last 25 lines)" >&2
            tail -n 25 "$log" >&2
        done
    elif [[ $KEEP_WORK -eq 0 ]]; then
        rm -rf "$WORK"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# ------------------------------------------------------------------ ports and certificates
read -r -a PORTS <<< "$("$PYTHON" - "$(( ${#DATA[@]} + 1 ))" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
)"
LINK_PORT="${PORTS[0]}"
if [[ -n "$ADVERTISE" ]]; then
    BIND_HOST="0.0.0.0"; LINK_ADDRESS="$ADVERTISE:$LINK_PORT"; CERT_HOSTS=(--host "$ADVERTISE")
else
    BIND_HOST="127.0.0.1"; LINK_ADDRESS="127.0.0.1:$LINK_PORT"; CERT_HOSTS=()
fi
CERTS="$WORK/certs"
# superlink: the SuperLink's HTTPS API (Fleet, Control, Runtime); supernode: each SuperNode's local Runtime API
privboost certs --out "$CERTS" --role superlink --role supernode "${CERT_HOSTS[@]}" 2>"$WORK/logs/certs.log"

# ------------------------------------------------------------------ SuperLink
mkdir -p "$WORK/superlink"
(cd "$WORK/superlink" && FLWR_HOME="$WORK/superlink/flwr-home" exec flower-superlink \
    --ssl-ca-certfile "$CERTS/ca.pem" --ssl-certfile "$CERTS/superlink.pem" --ssl-keyfile "$CERTS/superlink.key" \
    --host "$BIND_HOST" --port "$LINK_PORT" \
    --disable-runtime-dependency-installation \
    >"$WORK/logs/superlink.log" 2>&1) &
PIDS+=($!)
echo "SuperLink on $LINK_ADDRESS (TLS), pid $!" >&2

# ------------------------------------------------------------------ SuperNodes, one per site
for i in "${!DATA[@]}"; do
    port="${PORTS[$((i + 1))]}"
    mkdir -p "$WORK/supernode$i"
    (cd "$WORK/supernode$i" && FLWR_HOME="$WORK/supernode$i/flwr-home" exec flower-supernode \
        --superlink "$LINK_ADDRESS" --root-certificates "$CERTS/ca.pem" \
        --port "$port" \
        --ssl-certfile "$CERTS/supernode.pem" --ssl-keyfile "$CERTS/supernode.key" --ssl-ca-certfile "$CERTS/ca.pem" \
        --node-config "data-path='${DATA[$i]}'" \
        >"$WORK/logs/supernode$i.log" 2>&1) &
    PIDS+=($!)
    echo "SuperNode $i: data ${DATA[$i]}, Runtime API 127.0.0.1:$port (TLS), pid $!" >&2
done

# ------------------------------------------------------------------ the Flower CLI's connection
export FLWR_HOME="$WORK/cli"
mkdir -p "$FLWR_HOME"
cat >"$FLWR_HOME/config.toml" <<EOF
[superlink]
default = "privboost-local"

[superlink.privboost-local]
address = "$LINK_ADDRESS"
root-certificates = "$CERTS/ca.pem"
EOF

json_field() {  # json_field FILE PYTHON-EXPRESSION-ON-d: print it, fail if the file is no JSON or lacks it
    "$PYTHON" -c 'import json, sys; d = json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2" 2>/dev/null
}

# wait until the SuperLink answers the CLI over TLS (`flwr ls --format json` exits 0 even when it cannot connect)
for attempt in $(seq 60); do
    flwr ls privboost-local --format json >"$WORK/probe.json" 2>&1 || true
    if [[ "$(json_field "$WORK/probe.json" 'd["success"]')" == "True" ]]; then break; fi
    [[ $attempt -lt 60 ]] || { echo "run_local_deployment: the SuperLink did not come up" >&2; exit 1; }
    for pid in "${PIDS[@]}"; do kill -0 "$pid" 2>/dev/null || { echo "process $pid died" >&2; exit 1; }; done
    sleep 1
done

# ------------------------------------------------------------------ the run
CONFIG="label='$LABEL' out='$OUT' min-sites=${#DATA[@]}"
echo "flwr run $APP_DIR privboost-local --run-config \"$CONFIG${EXTRA_CONFIG:+ $EXTRA_CONFIG}\" --stream" >&2
started=$(date +%s)
touch "$WORK/run-started"  # the model must be newer than this
# in the background + wait, so that a signal to this script runs the cleanup at once
(timeout "$TIMEOUT" flwr run "$APP_DIR" privboost-local \
    --run-config "$CONFIG" ${EXTRA_CONFIG:+--run-config "$EXTRA_CONFIG"} --stream 2>&1 \
    | tee "$WORK/logs/flwr-run.log") &
PIDS+=($!)
run_status=0
wait $! || run_status=$?
unset 'PIDS[-1]'
[[ $run_status -eq 0 ]] || { echo "run_local_deployment: flwr run failed or timed out (exit $run_status)" >&2; exit 1; }
RUN_ID=$(sed -n 's/.*Successfully started run \([0-9][0-9]*\).*/\1/p' "$WORK/logs/flwr-run.log" | head -n 1)
[[ -n "$RUN_ID" ]] || { echo "run_local_deployment: the run did not start" >&2; exit 1; }
flwr ls privboost-local --run-id "$RUN_ID" --format json >"$WORK/run-status.json" 2>&1 || true
STATUS=$(json_field "$WORK/run-status.json" 'd["runs"][0]["status"]') \
    || STATUS="unknown ($(cat "$WORK/run-status.json"))"
echo "run $RUN_ID: $STATUS after $(( $(date +%s) - started )) s" >&2
[[ "$STATUS" == "finished:completed" ]] || { echo "run_local_deployment: run $RUN_ID $STATUS" >&2; exit 1; }

# ------------------------------------------------------------------ the model
[[ -s "$OUT" && "$OUT" -nt "$WORK/run-started" ]] || { echo "run_local_deployment: no new model at $OUT" >&2; exit 1; }
"$PYTHON" - "$OUT" <<'EOF'
import sys
import xgboost
booster = xgboost.Booster(model_file=sys.argv[1])
print(f"model {sys.argv[1]}: {booster.num_boosted_rounds()} trees, {booster.num_features()} features",
      file=sys.stderr)
EOF
