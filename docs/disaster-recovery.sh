#!/bin/sh
# Restore one repository from a custode store with only age, git, coreutils, sed and awk.
# Usage: disaster-recovery.sh STORE_DIR REPOSITORY IDENTITY_FILE DEST.git [HOST]
#   STORE_DIR   a local copy of the store (for S3: aws s3 sync s3://bucket/prefix STORE_DIR)
#   REPOSITORY  its path relative to its root, as `custode snapshots --json` lists it
# Restores the repository's latest backup; writes its refs to DEST.git.refs (oid name).
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
field() { grep -o "\"$1\":[^,}]*" "$2" | head -n 1 | cut -d: -f2 | tr -d '"'; }
format=$(field object_format "$manifest")
bare=$(field bare "$manifest")
# 3. the chain: each manifest (format 3) names the one it builds on in "base"; follow
#    them back to the first (a format 1/2 manifest lists its whole chain itself)
chain=$manifest at=$manifest
while base=$(grep -o '"base":{"key":"[^"]*"' "$at" | cut -d'"' -f6) && [ -n "$base" ]; do
  at="$store/$base" chain="$at $chain"
done
# 4. a new repository, then every bundle's objects in chain order (oldest first)
git init -q --bare --object-format="$format" "$dest"
# a shallow repository: its shallow commits (in the chain's last bundle) before any unbundle
for m in $chain; do cat "$m"; done | grep -o '"shallow":\[[^]]*\]' | tail -n 1 \
  | tr -c '0-9a-f' '\n' | grep -E '^[0-9a-f]{40}([0-9a-f]{24})?$' > "$dest/shallow" \
  || rm "$dest/shallow"
#    A large bundle (format 4) is stored as parts, listed after its own key in the
#    manifest (bundle.<8 hex>.part0001.age, ...): each an age file of the next slice of
#    the bundle, so the parts decrypted one after another, in order, are the bundle.
for m in $chain; do
  keys=$(grep -o '"key":"[^"]*/bundle[.a-z0-9]*[.]age"' "$m" | cut -d'"' -f4)
  for key in $keys; do
    case $key in *.part[0-9]*.age) continue ;; esac  # a part: read with its bundle
    parts=$(printf '%s\n' $keys | grep -F "${key%.age}." | grep '[.]part[0-9]*[.]age$' || :)
    if [ -n "$parts" ]; then
      : > "$dest/restore.bundle"
      for part in $parts; do
        age -d -i "$identity" "$store/$part" >> "$dest/restore.bundle"
      done
    else
      age -d -i "$identity" -o "$dest/restore.bundle" "$store/$key"
    fi
    git -C "$dest" bundle unbundle restore.bundle > /dev/null
    rm "$dest/restore.bundle"
  done
done
# 5. the refs: each manifest's refs.age holds every ref ("refs_delta":false) or what
#    changed since its parent ("set" and "delete"): applied in chain order
pairs() {  # the "name":"oid" members of JSON object $1 in file $2, as "oid name" lines
  grep -o "\"$1\":{[^}]*}" "$2" | head -n 1 | sed -e "s/^\"$1\":{//" -e 's/}$//' \
    -e 's/","/"\n"/g' | sed -n 's/^"\(.*\)":"\([0-9a-f]*\)"$/\2 \1/p'
}
: > "$dest.refs"
for m in $chain; do
  key=$(grep -o '"refs":{"key":"[^"]*"' "$m" | cut -d'"' -f6)
  age -d -i "$identity" -o "$dest.refs.json" "$store/$key"
  if grep -q '"refs_delta":true' "$m"; then
    grep -o '"delete":\[[^]]*\]' "$dest.refs.json" | sed -e 's/^"delete":\[//' -e 's/\]$//' \
      -e 's/","/"\n"/g' | sed -n 's/^"\(.*\)"$/\1/p' > "$dest.gone"
    pairs set "$dest.refs.json" > "$dest.set"
    awk 'FILENAME == ARGV[1] { drop[$0] = 1; next } FILENAME == ARGV[2] { drop[$2] = 1; next }
         !($2 in drop)' "$dest.gone" "$dest.set" "$dest.refs" > "$dest.kept"
    cat "$dest.kept" "$dest.set" > "$dest.refs"
    rm "$dest.gone" "$dest.set" "$dest.kept"
  else
    pairs refs "$dest.refs.json" > "$dest.refs"
  fi
done
awk '{ print "update " $2 " " $1 }' "$dest.refs" | git -C "$dest" update-ref --stdin
# 6. HEAD from the last refs record (JSON: head, refs or set/delete, symrefs)
head=$(grep -o '"head":"ref:[^"]*"' "$dest.refs.json" | cut -d'"' -f4 | cut -c5-)
[ -n "$head" ] && git -C "$dest" symbolic-ref HEAD "$head"
detached=$(grep -o '"head":"[0-9a-f]*"' "$dest.refs.json" | cut -d'"' -f4)
[ -n "$detached" ] && git -C "$dest" update-ref --no-deref HEAD "$detached"
rm "$dest.refs.json"
# 7. config, hooks, description and info/: files.age, a gzipped tar
files=$(grep -o '"files":{[^}]*}' "$manifest" | grep -o '"key":"[^"]*"' | cut -d'"' -f4)
age -d -i "$identity" "$store/$files" | tar -xz -C "$dest"
# a working copy ("bare": false): clone it from $dest, or move $dest to DIR/.git,
# set core.bare=false and run git reset --hard.
echo "restored $repo into $dest (bare: $bare)"
