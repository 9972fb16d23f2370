#!/usr/bin/env bash
# Prepares a Wine environment that runs Deno's Windows build, so that the
# Windows backend can be tested on Linux. Idempotent and non-interactive.
#
# Everything lands in .wine/ under the repository (gitignored):
#   .wine/prefix/        the private WINEPREFIX
#   .wine/deno/deno.exe  Deno for Windows (npm @deno/win32-x64, same version
#                        as the Linux deno), patched as below
#   .wine/env            variables for scripts/test-wine.sh to source
#
# Two workarounds for Debian's Wine 8.0 (measured, see issue 6):
# 1. Wine 8.0 has no bcryptprimitives.dll, which deno.exe imports for
#    ProcessPrng. A 4 KB DLL forwarding ProcessPrng to
#    advapi32.SystemFunction036 (RtlGenRandom), built with mingw, fixes it.
# 2. V8 aborts in SegmentedTable::InitializeTable because Wine 8.0 rejects
#    MapViewOfFile3 placeholders. Renaming the one "MapViewOfFile3\0" import
#    in a copy of deno.exe (to a name kernelbase lacks, resolved lazily)
#    makes V8 take its fallback path.
#
# Exit status 0 when ready; otherwise it prints what is missing and exits 2.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
dir="$root/.wine"
mkdir -p "$dir"

missing() {
  echo "wine-setup: $*" >&2
  exit 2
}

if ! command -v wine64 >/dev/null 2>&1 && ! command -v wine >/dev/null 2>&1 ||
  ! command -v x86_64-w64-mingw32-dlltool >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "wine-setup: installing wine and binutils-mingw-w64 with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get install -y wine wine64 binutils-mingw-w64-x86-64 >/dev/null 2>&1 ||
      { apt-get update >/dev/null 2>&1 &&
        apt-get install -y wine wine64 binutils-mingw-w64-x86-64 >/dev/null; } ||
      missing "apt-get could not install wine and binutils-mingw-w64"
  else
    missing "wine64 and x86_64-w64-mingw32-dlltool are required (apt-get install wine wine64 binutils-mingw-w64-x86-64)"
  fi
fi
wine=$(command -v wine64 || true)
[ -x /usr/lib/wine/wine64 ] && wine=/usr/lib/wine/wine64
[ -n "$wine" ] || wine=$(command -v wine)

version=$(deno --version | head -1 | awk '{print $2}')
exe="$dir/deno/deno.exe"
if [ ! -f "$exe" ] || [ "$(cat "$dir/deno/version" 2>/dev/null)" != "$version" ]; then
  command -v npm >/dev/null 2>&1 || missing "npm is required to fetch @deno/win32-x64"
  echo "wine-setup: fetching @deno/win32-x64@$version from npm"
  rm -rf "$dir/npm" "$dir/deno"
  mkdir -p "$dir/npm" "$dir/deno"
  (cd "$dir/npm" && npm pack --silent "@deno/win32-x64@$version" >/dev/null) ||
    missing "npm pack @deno/win32-x64@$version failed"
  tar -xzf "$dir"/npm/*.tgz -C "$dir/npm"
  original=$(find "$dir/npm/package" -name deno.exe | head -1)
  [ -n "$original" ] || missing "no deno.exe in @deno/win32-x64@$version"
  # Workaround 2: one import name, same length, so nothing else moves.
  python3 - "$original" "$exe" <<'PY'
import sys
data = open(sys.argv[1], "rb").read()
old = b"MapViewOfFile3\x00"
count = data.count(old)
if count != 1:
    sys.exit(f"expected one MapViewOfFile3 import, found {count}")
open(sys.argv[2], "wb").write(data.replace(old, b"MapViewOfFileX\x00"))
PY
  echo "$version" >"$dir/deno/version"
  rm -rf "$dir/npm"
fi

# Workaround 1: bcryptprimitives.dll next to deno.exe.
dll="$dir/deno/bcryptprimitives.dll"
if [ ! -f "$dll" ]; then
  work=$(mktemp -d)
  cat >"$work/bcryptprimitives.def" <<'DEF'
LIBRARY bcryptprimitives.dll
EXPORTS
ProcessPrng=advapi32.SystemFunction036
DEF
  printf 'int __stdcall DllMainCRTStartup(void *h, unsigned r, void *p) { return 1; }\n' >"$work/stub.c"
  if command -v x86_64-w64-mingw32-gcc >/dev/null 2>&1; then
    x86_64-w64-mingw32-gcc -shared -nostdlib -e DllMainCRTStartup -o "$dll" \
      "$work/stub.c" "$work/bcryptprimitives.def"
  else
    # Only binutils: an export-only DLL with a forwarder and no code.
    x86_64-w64-mingw32-dlltool -d "$work/bcryptprimitives.def" -e "$work/exports.o"
   
      x86_64-w64-mingw32-ld -shared -e 0 -o "$dll" "$work/exports.o"
  fi
  rm -rf "$work"
fi

export WINEPREFIX="$dir/prefix" WINEDEBUG=-all WINEDLLOVERRIDES="mscoree,mshtml="
if [ ! -f "$WINEPREFIX/system.reg" ]; then
  echo "wine-setup: creating the Wine prefix"
  "$wine" wineboot --init >/dev/null 2>&1 || true
  wineserver -w 2>/dev/null || true
fi

cat >"$dir/env" <<ENV
export WINEPREFIX="$WINEPREFIX"
export WINEDEBUG=-all
export WINEDLLOVERRIDES="mscoree,mshtml="
export DENO_DISABLE_NODE_SHIM=1
WINE="$wine"
DENO_EXE="$exe"
ENV

out=$(DENO_DISABLE_NODE_SHIM=1 "$wine" "$exe" eval 'console.log(Deno.build.os)' 2>&1 | tr -d '\r' | tail -1)
if [ "$out" != "windows" ]; then
  echo "$out" >&2
  missing "deno.exe does not run under Wine"
fi
echo "wine-setup: ready ($("$wine" --version 2>/dev/null), deno $version)"
