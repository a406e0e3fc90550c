#!/usr/bin/env bash
# `buf breaking` of proto/ against the `main` branch, offline.
# buf cannot read `.git#branch=main` here: googleapis is vendored into the ignored third_party/ (no network for
# the BSR), so main's tree alone does not build. We export main's proto/ beside today's third_party/, build an
# image of it, and compare the working tree's proto module with that image.
set -euo pipefail
cd "$(dirname "$0")/.."
BUF=${BUF:-node_modules/.bin/buf}
REF=${1:-main}
if ! git rev-parse --verify --quiet "$REF^{commit}" >/dev/null; then
  echo "buf breaking: no '$REF' ref to compare against"; exit 0
fi
if ! git cat-file -e "$REF:proto" 2>/dev/null; then
  echo "buf breaking: '$REF' has no proto/ yet"; exit 0
fi
base=$(mktemp -d)
trap 'rm -rf "$base"' EXIT
git archive "$REF" proto buf.yaml | tar -x -C "$base"
cp -r third_party "$base/"
(cd "$base" && "$OLDPWD/$BUF" build proto -o image.binpb)
"$BUF" breaking proto --against "$base/image.binpb"
echo "buf breaking: proto/ is compatible with $REF"
