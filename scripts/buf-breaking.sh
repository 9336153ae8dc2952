#!/usr/bin/env bash
# Checks the contract for breaking changes (buf's FILE rules) against the last release: the
# newest `v*` tag reachable from HEAD, else the merge base with main. A checkout with neither (a
# shallow CI clone, an exported tarball) skips with one line instead of failing.
#
# The release's proto/ is extracted to a temp folder and given today's buf.yaml, and today's
# proto/google when it has none, so a release from before those were committed still builds.
#
# One relaxation: a language option (go_package, java_package, ...) that the release did not set
# at all may be set now. FILE's FILE_SAME_<OPTION> rules report "" -> "x" as a change, but for
# go_package there was nothing to break (protoc-gen-go refused the file without it), and for C#,
# PHP and Ruby the values chosen equal what protoc derived from the package. Java, Objective-C
# and Swift names do move once, at the release that first sets them. Once set in a release, an
# option is checked as strictly as the rest: changing it fails here.
set -euo pipefail
cd "$(dirname "$0")/.."
buf="${BUF:-tools/node_modules/.bin/buf}"
ref=""
if git rev-parse --git-dir >/dev/null 2>&1; then
  ref=$(git describe --tags --abbrev=0 --match 'v[0-9]*' HEAD 2>/dev/null) ||
    ref=$(git merge-base HEAD main 2>/dev/null) ||
    ref=$(git merge-base HEAD origin/main 2>/dev/null) || ref=""
fi
if [ -z "$ref" ]; then
  echo "buf breaking: skipped (no release tag and no main branch in this checkout)"
  exit 0
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$tmp/against"
git archive "$ref" proto | tar -x -C "$tmp/against"
[ -d "$tmp/against/proto/google" ] || cp -r proto/google "$tmp/against/proto/"
cp buf.yaml "$tmp/against/"

except=()
for option in csharp_namespace go_package java_multiple_files java_package objc_class_prefix \
  php_namespace ruby_package swift_prefix; do
  if ! grep -rqE "^option $option =" "$tmp/against/proto/llmgateway"; then
    except+=("FILE_SAME_${option^^}")
  fi
done
# buf.yaml stays the one configuration; the exceptions are added to a copy of it.
config="$tmp/buf.yaml"
list=$(printf '%s,' "${except[@]}")
sed "/^breaking:/a\\  except: [${list%,}]" buf.yaml >"$config"
"$buf" breaking --config "$config" --against "$tmp/against" --against-config "$config"
echo "buf breaking: no breaking change against $ref${except:+ (options unset there may be set: ${except[*]})}"
