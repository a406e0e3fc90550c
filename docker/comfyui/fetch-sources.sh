#!/bin/sh
# fetch-sources.sh REPOSITORY COMMIT NODES_FILE DEST
#
# Checks out ComfyUI at COMMIT into DEST, and every custom node pack that NODES_FILE declares (`<git URL> <commit>`
# per line, # comments) into DEST/custom_nodes/<repository name>, each at its own commit. Used by the comfyui-sources
# stage of docker/Dockerfile.executor.
#
# Each checkout fetches exactly one commit by its full sha (shallow, no branch or tag that could move), verifies
# that HEAD is that commit, records it in .comfymesh-commit and drops .git: the image carries sources, not history.
set -euf  # -f: no globbing, the fields of a line are split but never expanded as file names

fail() {
    echo "fetch-sources: $*" >&2
    exit 1
}

# checkout URL COMMIT DIR
checkout() {
    url=$1 commit=$2 dir=$3
    case "$commit" in
        *[!0-9a-f]*) fail "$url: commit '$commit' is not a full lowercase sha (40 hex characters)" ;;
    esac
    [ "${#commit}" -eq 40 ] || fail "$url: commit '$commit' is not a full lowercase sha (40 hex characters)"
    [ ! -e "$dir" ] || fail "$dir already exists (is a custom node pack declared twice?)"
    git init --quiet "$dir"
    git -C "$dir" remote add origin "$url"
    git -C "$dir" fetch --quiet --depth 1 origin "$commit" || fail "$url: cannot fetch commit $commit"
    git -C "$dir" -c advice.detachedHead=false checkout --quiet FETCH_HEAD
    actual=$(git -C "$dir" rev-parse HEAD)
    [ "$actual" = "$commit" ] || fail "$url: checked out $actual instead of $commit"
    rm -rf "$dir/.git"
    printf '%s %s\n' "$url" "$commit" > "$dir/.comfymesh-commit"
    echo "fetch-sources: $url at $commit"
}

[ "$#" -eq 4 ] || fail "usage: fetch-sources.sh REPOSITORY COMMIT NODES_FILE DEST"
repository=$1 commit=$2 nodes_file=$3 dest=$4
[ -f "$nodes_file" ] || fail "no custom node list at $nodes_file"

checkout "$repository" "$commit" "$dest"
mkdir -p "$dest/custom_nodes"

line_number=0
while IFS= read -r line || [ -n "$line" ]; do
    line_number=$((line_number + 1))
    line=${line%%#*}  # comments, whole-line or trailing
    # shellcheck disable=SC2086 # split on whitespace on purpose: the fields of the line
    set -- $line
    [ "$#" -eq 0 ] && continue
    [ "$#" -eq 2 ] || fail "$nodes_file:$line_number: expected '<git URL> <commit sha>'"
    name=$(basename "$1" .git)
    case "$name" in
        '' | . | .. | *[!A-Za-z0-9._-]*) fail "$nodes_file:$line_number: cannot name a directory after '$1'" ;;
    esac
    checkout "$1" "$2" "$dest/custom_nodes/$name"
done < "$nodes_file"
