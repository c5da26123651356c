#!/usr/bin/env bash
# Re-derive third_party/ from the pristine crates of crates.io plus third_party/patches/.
#
#   scripts/third-party.sh          write third_party/<crate>/ for every crate listed
#   scripts/third-party.sh --check  fail if third_party/ differs from what it would write
#
# third_party/crates.txt lists each vendored crate as `NAME VERSION SHA256` (the .crate's
# checksum, as crates.io's index and a Cargo.lock record it). The patches of a crate are
# third_party/patches/NAME/*.patch, applied in name order with `git apply`. To upgrade
# Pingora: bump it in Cargo.toml, update crates.txt, run this, mend what no longer applies.
set -euo pipefail
cd "$(dirname "$0")/.."

mode=write
[[ "${1:-}" == "--check" ]] && mode=check
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
status=0

while read -r name version sha; do
    [[ -z "$name" || "$name" == \#* ]] && continue
    # Cargo.lock keeps the version of a patched crate; it must be the one patched here.
    locked=$(awk -v n="\"$name\"" '$1 == "name" && $3 == n { getline; gsub(/"/, "", $3); print $3 }' Cargo.lock)
    if [[ "$locked" != "$version" ]]; then
        echo "third_party: Cargo.lock has $name ${locked:-(none)}, crates.txt $version" >&2
        exit 1
    fi
    crate="$work/$name-$version.crate"
    cached=$(ls "${CARGO_HOME:-$HOME/.cargo}"/registry/cache/*/"$name-$version.crate" 2>/dev/null | head -n1 || true)
    if [[ -n "$cached" ]]; then
        cp "$cached" "$crate"
    else
        curl -sSfL --retry 3 -o "$crate" "https://static.crates.io/crates/$name/$name-$version.crate"
    fi
    if ! echo "$sha  $crate" | sha256sum --check --quiet --status; then
        echo "third_party: $name-$version.crate does not match its checksum" >&2
        exit 1
    fi
    tar -xzf "$crate" -C "$work"
    tree="$work/$name-$version"
    for p in third_party/patches/"$name"/*.patch; do
        [[ -e "$p" ]] || continue
        if ! (cd "$tree" && git apply --whitespace=nowarn -p1 "$OLDPWD/$p"); then
            echo "third_party: $p does not apply to $name $version" >&2
            exit 1
        fi
    done
    if [[ "$mode" == check ]]; then
        if ! diff -r "$tree" "third_party/$name" >/dev/null; then
            echo "third_party/$name differs from $name $version plus its patches (make third-party)" >&2
            diff -r "$tree" "third_party/$name" | head -n 20 >&2 || true
            status=1
        fi
    else
        rm -rf "third_party/$name"
        mv "$tree" "third_party/$name"
        echo "third_party/$name: $name $version plus $(ls third_party/patches/"$name"/*.patch 2>/dev/null | wc -l) patches"
    fi
done < third_party/crates.txt

exit $status
