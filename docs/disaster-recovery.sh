#!/bin/sh
# Restore one repository from a custode store with only age, git and coreutils.
# Usage: disaster-recovery.sh STORE_DIR REPOSITORY IDENTITY_FILE DEST.git [HOST]
#   STORE_DIR   a local copy of the store (for S3: aws s3 sync s3://bucket/prefix STORE_DIR)
#   REPOSITORY  its path relative to its root, as `custode snapshots --json` lists it
# Restores the repository's latest backup; writes its refs record to DEST.git.refs.json.
set -eu
store=$1 repo=$2 identity=$3 dest=$4
host=${5:-$(ls "$store/hosts" | head -n 1)}
# 1. the repository's directory is the first 24 hex digits of the SHA-256 of its path
dir="$store/hosts/$host/repos/$(printf %s "$repo" | sha256sum | cut -c1-24)"
# 2. its latest backup with a manifest (backup ids sort by time; the manifest, written
#    last, is one line of plain JSON)
latest=
for id in $(ls "$dir" | sort -r); do
  if [ -f "$dir/$id/manifest.json" ]; then latest=$id; break; fi
done
[ -n "$latest" ] || { echo "no backup of $repo in $dir" >&2; exit 1; }
manifest="$dir/$latest/manifest.json"
field() { grep -o "\"$1\":[^,}]*" "$manifest" | head -n 1 | cut -d: -f2 | tr -d '"'; }
format=$(field object_format)
bare=$(field bare)
# 3. a new repository, then every bundle of the chain in order (oldest first)
git init -q --bare --object-format="$format" "$dest"
# a shallow repository: its shallow commits (in the manifest's chain) before any fetch
grep -o '"shallow":\[[^]]*\]' "$manifest" | tail -n 1 | tr -c '0-9a-f' '\n' \
  | grep -E '^[0-9a-f]{40}([0-9a-f]{24})?$' > "$dest/shallow" || rm "$dest/shallow"
for key in $(grep -o '"key":"[^"]*/bundle.age"' "$manifest" | cut -d'"' -f4); do
  age -d -i "$identity" -o "$dest/restore.bundle" "$store/$key"
  git -C "$dest" bundle verify -q restore.bundle
  git -C "$dest" fetch -q --prune restore.bundle '+refs/*:refs/*'
  rm "$dest/restore.bundle"
done
# 4. HEAD from the decrypted refs record (JSON: head, refs, symrefs)
age -d -i "$identity" -o "$dest.refs.json" "$dir/$latest/refs.age"
head=$(grep -o '"head":"ref:[^"]*"' "$dest.refs.json" | cut -d'"' -f4 | cut -c5-)
[ -n "$head" ] && git -C "$dest" symbolic-ref HEAD "$head"
detached=$(grep -o '"head":"[0-9a-f]*"' "$dest.refs.json" | cut -d'"' -f4)
[ -n "$detached" ] && git -C "$dest" update-ref --no-deref HEAD "$detached"
# 5. config, hooks, description and info/: files.age, a gzipped tar
files=$(grep -o '"files":{[^}]*}' "$manifest" | grep -o '"key":"[^"]*"' | cut -d'"' -f4)
age -d -i "$identity" "$store/$files" | tar -xz -C "$dest"
# a working copy ("bare": false): clone it from $dest, or move $dest to DIR/.git,
# set core.bare=false and run git reset --hard.
echo "restored $repo into $dest (bare: $bare)"
