#!/usr/bin/env bash
# Compare freshly generated protobuf code with the repository's (`make proto-check` calls this).
#
#   tools/proto-check.sh SCRATCH
#
# SCRATCH holds what `make proto PROTO_OUT=SCRATCH` wrote, at the same relative paths as in
# the tree. Each of those files must exist in the work tree with the same bytes and be tracked
# by git (so a clean clone has it). Only these files are compared: other uncommitted work in
# the tree does not matter. In a clean clone the work tree is the commit, so the check is exact.
set -euo pipefail

scratch="${1:?usage: tools/proto-check.sh SCRATCH}"
cd "$(dirname "$0")/.."

mapfile -t generated < <(cd "$scratch" && find . -type f | sed 's|^\./||' | LC_ALL=C sort)
[ ${#generated[@]} -gt 0 ] || { echo "proto-check: make proto generated nothing into $scratch" >&2; exit 1; }

stale=()
for f in "${generated[@]}"; do
    if [ ! -f "$f" ]; then
        stale+=("$f (missing)")
    elif ! cmp -s "$scratch/$f" "$f"; then
        stale+=("$f (differs)")
    elif ! git ls-files --error-unmatch -- "$f" >/dev/null 2>&1; then
        stale+=("$f (not in git)")
    fi
done

if [ ${#stale[@]} -gt 0 ]; then
    {
        echo "proto-check: the generated code is not what proto/ generates now:"
        printf '  %s\n' "${stale[@]}"
        echo "Run 'make proto' and commit these files."
        for f in "${generated[@]}"; do
            [ -f "$f" ] && ! cmp -s "$scratch/$f" "$f" && diff -u "$f" "$scratch/$f" | head -n 20
        done
    } >&2
    exit 1
fi
echo "proto-check: ${#generated[@]} generated files are current"
