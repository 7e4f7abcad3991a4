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
# 2. its latest backup (backup ids sort by time); the manifest is plain JSON
latest=$(ls "$dir" | sort | tail -n 1)
manifest="$dir/$latest/manifest.json"
format=$(sed -n 's/^ "object_format": "\(.*\)",$/\1/p' "$manifest")
bare=$(sed -n 's/^ "bare": \(.*\),$/\1/p' "$manifest")
# 3. a new repository, then every bundle of the chain in order (oldest first)
git init -q --bare --object-format="$format" "$dest"
for key in $(grep -o '"key": "[^"]*/bundle.age"' "$manifest" | cut -d'"' -f4); do
  age -d -i "$identity" -o "$dest/restore.bundle" "$store/$key"
  git -C "$dest" bundle verify -q restore.bundle
  git -C "$dest" fetch -q --prune restore.bundle '+refs/*:refs/*'
  rm "$dest/restore.bundle"
done
# 4. HEAD (and any other symbolic ref) from the decrypted refs record
age -d -i "$identity" -o "$dest.refs.json" "$dir/$latest/refs.age"
head=$(sed -n 's/^ "head": "ref:\(.*\)",$/\1/p' "$dest.refs.json")
[ -n "$head" ] && git -C "$dest" symbolic-ref HEAD "$head"
# config, hooks, description and info/ are in files.age, a tar:
#   age -d -i "$identity" "$store/<key of "files" in the manifest>" | tar -x -C "$dest"
# a working copy ("bare": false): clone it from $dest, or move $dest to DIR/.git,
# set core.bare=false and run git reset --hard.
echo "restored $repo into $dest (bare: $bare)"
