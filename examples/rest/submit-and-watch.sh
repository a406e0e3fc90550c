#!/usr/bin/env bash
# Submits a ComfyUI workflow_api.json to ComfyMesh over REST, follows its progress (the NDJSON watch stream,
# resumed after a dropped connection), and downloads the outputs.
#
#   examples/rest/submit-and-watch.sh [-o OUT_DIR] [-p PRIORITY] [-i NAME=FILE ...] WORKFLOW_API_JSON
#
#   -o OUT_DIR       where the outputs go (default ./outputs/<execution id>)
#   -p PRIORITY      -100..100 (default 0)
#   -i NAME=FILE     an input file for LoadImage-style nodes, sent inline (base64) as the input NAME; the graph's
#                    LoadImage names it: -i input.png=examples/img2img/input.png
#
# Environment: COMFYMESH_URL (default http://127.0.0.1:8080), COMFYMESH_API_KEY (default: the admin key file
# ${COMFYMESH_HOME:-.comfymesh}/admin.key). Needs bash, curl and jq.
# Exit status: 0 succeeded, 1 the execution failed or was cancelled, 2 bad usage or a refused request.
set -euo pipefail

readonly TERMINAL_KINDS=" succeeded failed cancelled "
readonly MAX_WATCH_ATTEMPTS=20

usage() {
    sed -n '2,/^# Exit status/s/^# \{0,1\}//p' "$0" >&2
    exit 2
}

die() {
    echo "error: $*" >&2
    exit 2
}

# The platform answers errors as a google.rpc.Status; show its message and ErrorInfo reason.
describe_error() {
    jq -r '"\(.message // "no message") (\(.details[0].reason // "no reason"))"' "$1" 2>/dev/null || cat "$1"
}

url="${COMFYMESH_URL:-http://127.0.0.1:8080}"
url="${url%/}"
out_dir=""
priority=0
input_specs=()
while getopts "o:p:i:h" opt; do
    case "$opt" in
        o) out_dir="$OPTARG" ;;
        p) priority="$OPTARG" ;;
        i) input_specs+=("$OPTARG") ;;
        *) usage ;;
    esac
done
shift $((OPTIND - 1))
[[ $# -eq 1 ]] || usage
workflow="$1"
[[ -f "$workflow" ]] || die "no such workflow file: $workflow"
[[ "$priority" =~ ^-?[0-9]+$ ]] || die "the priority must be an integer, not '$priority'"
command -v jq >/dev/null || die "jq is required (apt-get install jq)"

api_key="${COMFYMESH_API_KEY:-}"
if [[ -z "$api_key" ]]; then
    key_file="${COMFYMESH_HOME:-.comfymesh}/admin.key"
    [[ -r "$key_file" ]] || die "set COMFYMESH_API_KEY, or run from where $key_file exists"
    api_key="$(<"$key_file")"
fi

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
# The key travels in a header file, not on curl's command line, where other users could read it.
(umask 077 && printf 'authorization: Bearer %s\n' "$api_key" >"$work/auth")

# curl_json METHOD PATH [BODY_FILE]: the response body in $work/response; prints the HTTP status.
curl_json() {
    local args=(-sS -X "$1" -H @"$work/auth" -o "$work/response" -w '%{http_code}')
    if [[ $# -ge 3 ]]; then
        args+=(-H 'content-type: application/json' --data-binary @"$3")
    fi
    curl "${args[@]}" "$url$2"
}

# The request: the graph as `workflow_json` (exact: ComfyUI seeds can exceed 2^53), plus inline input files.
echo '[]' >"$work/inputs.json"
for spec in "${input_specs[@]}"; do
    name="${spec%%=*}"
    file="${spec#*=}"
    [[ "$name" != "$spec" && -n "$name" && -f "$file" ]] || die "-i wants NAME=FILE with an existing file: $spec"
    base64 -w0 "$file" >"$work/data.b64"
    jq --arg name "$name" --rawfile data "$work/data.b64" '. + [{name: $name, data: $data}]' \
        "$work/inputs.json" >"$work/inputs.next" && mv "$work/inputs.next" "$work/inputs.json"
done
jq -n --rawfile graph "$workflow" --slurpfile inputs "$work/inputs.json" --argjson priority "$priority" \
    '{workflow_json: $graph, priority: $priority, inputs: $inputs[0]}' >"$work/request.json"

status="$(curl_json POST /v1/executions "$work/request.json")"
[[ "$status" == 200 ]] || die "submit refused: HTTP $status: $(describe_error "$work/response")"
id="$(jq -r .id "$work/response")"
echo "submitted $id (queue position $(jq -r '.queue_position // 0' "$work/response"))"

# One line per event; prints the kind of event so the caller knows when the stream is done.
describe_event() {
    jq -r '(.result // .) as $e
        | ($e | keys_unsorted | map(select(. as $k | ["queued","started","nodes_cached","node_started",
            "node_progress","node_executed","preview","retrying","heartbeat","succeeded","failed",
            "cancelled"] | index($k))) | first) as $kind
        | ($e[$kind]) as $d
        | "\($e.event_id)\t\($kind)\t" + (
            if $kind == "queued" then "queued (priority \($d.priority // 0), position \($d.queue_position // 0))"
            elif $kind == "started" then "started on \($d.executor_id // "?")"
            elif $kind == "nodes_cached" then "cached nodes: \($d.node_ids // [] | join(", "))"
            elif $kind == "node_started" then "node \($d.node_id) \($d.class_type) started"
            elif $kind == "node_progress" then "node \($d.node_id) \($d.value // 0)/\($d.max // 0)"
            elif $kind == "node_executed" then "node \($d.node_id) \($d.class_type) done"
            elif $kind == "retrying" then "retrying (attempt \($d.next_attempt)): \($d.error.message // "")"
            elif $kind == "succeeded" then "succeeded: \($d.outputs // [] | length) output(s)"
            elif $kind == "failed" then "failed: \($d.error.message // "") (\($d.error.details[0].reason // ""))"
            elif $kind == "cancelled" then "cancelled: \($d.reason // "")"
            else $kind end)'
}

# Follow the NDJSON stream; after a dropped connection, resume after the last event seen (none is lost or repeated).
last_event=""
finished=""
for ((attempt = 1; attempt <= MAX_WATCH_ATTEMPTS; attempt++)); do
    query=""
    [[ -n "$last_event" ]] && query="?after_event_id=$last_event"
    while IFS= read -r line; do
        [[ -n "${line//[[:space:]]/}" ]] || continue
        IFS=$'\t' read -r event_id kind text < <(describe_event <<<"$line")
        last_event="$event_id"
        [[ "$kind" == heartbeat ]] || echo "  $text"
        if [[ "$TERMINAL_KINDS" == *" $kind "* ]]; then
            finished="$kind"
            break
        fi
    done < <(curl -sSN --fail-with-body -H @"$work/auth" "$url/v1/executions/$id:watch$query" || true)
    [[ -z "$finished" ]] || break
    echo "  (watch connection dropped; resuming after ${last_event:-the start})" >&2
    sleep 1
done
[[ -n "$finished" ]] || die "gave up watching $id after $MAX_WATCH_ATTEMPTS connections"

status="$(curl_json GET "/v1/executions/$id")"
[[ "$status" == 200 ]] || die "reading $id: HTTP $status: $(describe_error "$work/response")"
cp "$work/response" "$work/execution.json"
state="$(jq -r .state "$work/execution.json")"
echo "state: $state"
[[ "$state" == EXECUTION_STATE_SUCCEEDED ]] || exit 1

out_dir="${out_dir:-outputs/$id}"
mkdir -p "$out_dir"
# Each output keeps its subfolder under OUT_DIR (names are the platform's, but never trusted to stay inside it).
while IFS= read -r path; do
    [[ "$path" != /* && "$path" != *..* ]] || die "refusing the output path $path"
    mkdir -p "$(dirname "$out_dir/$path")"
    code="$(curl -sS -H @"$work/auth" -o "$out_dir/$path" -w '%{http_code}' \
        "$url/v1/executions/$id/outputs/$path:download")"
    [[ "$code" == 200 ]] || die "downloading $path: HTTP $code"
    echo "downloaded $out_dir/$path"
done < <(jq -r '.outputs[] | if (.subfolder // "") != "" then "\(.subfolder)/\(.filename)" else .filename end' \
    "$work/execution.json")
