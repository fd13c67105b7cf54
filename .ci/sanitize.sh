#!/usr/bin/env bash
# Sanitizer run: builds a private copy of the C core with AddressSanitizer and
# UndefinedBehaviorSanitizer, proves both are armed (planted faults must be
# caught), then runs the C-level tests, the torture test and the fuzzers
# (longer than in the suite) under them. Exits non-zero on any report.
#
# Self-contained: its own venv and build tree in a temp dir, removed at the
# end; the developer's in-place extension is never touched.
#   SHMGUARD_FUZZ_EXAMPLES   hypothesis examples per fuzz test (default 1500)
#   SAN_KEEP=1               keep the temp dir (venv, build, logs) for a look
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
work=$(mktemp -d "${TMPDIR:-/tmp}/shmguard-san.XXXXXX")
trap '[ -n "${SAN_KEEP:-}" ] || rm -rf "$work"' EXIT

echo "== sanitize: venv and ASan/UBSan build in $work"
python3 -m venv "$work/venv"
py="$work/venv/bin/python"
"$py" -m pip install -q --disable-pip-version-check 'setuptools>=77' 'cffi>=2.0' \
    'posix-ipc>=1.1' 'psutil>=5.9' 'pytest>=8' 'pytest-xdist>=3' 'hypothesis>=6'
mkdir "$work/tree"
cp -r src csrc setup.py pyproject.toml MANIFEST.in "$work/tree/"
if [ -f README.md ]; then cp README.md "$work/tree/"; else touch "$work/tree/README.md"; fi
find "$work/tree" \( -name '*.so' -o -name '*.o' -o -name '_core.c' -o -name __pycache__ \) \
    -prune -exec rm -rf {} +
SHMGUARD_CFLAGS="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-omit-frame-pointer -fno-wrapv -O1 -g" \
SHMGUARD_LDFLAGS="-fsanitize=address,undefined" \
    "$py" -m pip install -q --disable-pip-version-check --no-build-isolation "$work/tree"
core=$(find "$work/venv" -name '_core*.so' | head -1)
libs=$(ldd "$core")
if [[ "$libs" != *libasan* || "$libs" != *libubsan* ]]; then
    echo "sanitize: $core is not linked with libasan and libubsan" >&2
    exit 1
fi

export LD_PRELOAD
LD_PRELOAD=$(gcc -print-file-name=libasan.so)
export PYTHONMALLOC=malloc   # every allocation through ASan's malloc (cffi buffers too)
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=1"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1"
export SHMGUARD_FUZZ_EXAMPLES="${SHMGUARD_FUZZ_EXAMPLES:-1500}"
# Reports go to stderr (libubsan ignores log_path beside a preloaded libasan),
# so all output is kept in logs and searched for these.
signature='ERROR: AddressSanitizer|runtime error:|SUMMARY: (Address|UndefinedBehavior)Sanitizer'

# -- 1. the sanitizers are armed: planted faults must stop with a report -----
canary() {  # $1: name, $2: python code with a fault, $3: the report it must give
    local log="$work/canary-$1.log"
    if ASAN_OPTIONS="$ASAN_OPTIONS:abort_on_error=0" "$py" -c "$2" >"$log" 2>&1; then
        echo "sanitize: the planted $1 fault ran to completion: sanitizer not armed" >&2
        exit 1
    fi
    if ! grep -q "$3" "$log"; then
        echo "sanitize: the planted $1 fault was not reported as '$3'" >&2
        cat "$log" >&2
        exit 1
    fi
    echo "== sanitize: planted $1 fault caught ($3)"
}
prelude='
import ctypes
from shmguard._capi import ffi, lib
def alloc(n):  # exactly n bytes, 64-byte aligned: ASan redzones right after
    p = ctypes.c_void_p()
    assert ctypes.CDLL(None).posix_memalign(ctypes.byref(p), 64, n) == 0
    return ffi.cast("void *", p.value)
one = lib.SG_HEADER_SIZE + lib.SG_SLOT_SIZE     # a header and one slot
base = alloc(one)
assert lib.sg_segment_init(base, one, 1, 0, 1, 0, 0) == 0
'
canary overflow "$prelude
short = alloc(lib.SG_HEADER_SIZE)                # a header only: no room for its slot
ffi.memmove(short, base, lib.SG_HEADER_SIZE)
lib.sg_slot_snapshot(short, one, 0, ffi.new('struct sg_slot_view *'))  # a length it lacks
" "heap-buffer-overflow"
canary misaligned "$prelude
lib.sg_segment_check(ffi.cast('char *', base) + 8, one - 8, ffi.new('struct sg_header_view *'))
" "misaligned address"

# -- 2. the C-level tests and the fuzzers under the sanitizers ---------------
echo "== sanitize: tests (fuzz examples per test: $SHMGUARD_FUZZ_EXAMPLES)"
tests=()
for t in tests/crash/test_fuzz.py tests/crash/test_fuzz_keyed.py tests/core/test_keyed_steps.py \
         tests/core/test_keyed_rate.py \
         tests/core/test_gcra_steps.py tests/core/test_breaker_steps.py tests/core/test_bulkhead_steps.py \
         tests/core/test_segment.py tests/core/test_names_security.py tests/core/test_hardening_*.py \
         tests/core/test_breaker_trust.py tests/core/test_limiter_trust.py \
         tests/crash/test_torture.py tests/core/test_budget_steps.py tests/crash/test_budget_*.py \
         tests/core/test_throttle.py tests/core/test_predict.py \
         tests/core/test_host_identity.py tests/crash/test_half_created.py \
         tests/fleet/test_fleet_c.py \
         tests/crash/test_stalls.py tests/core/test_endpoint_lifecycle.py \
         tests/crash/test_close_concurrent.py; do
    if [ -f "$t" ]; then tests+=("$t"); fi
done
set +e
# --capture=sys: a report written to fd 2 reaches the log even if its process dies
(cd "$root" && "$py" -m pytest -n 2 -q -p no:cacheprovider --capture=sys "${tests[@]}") 2>&1 |
    tee "$work/tests.log"
rc=${PIPESTATUS[0]}
set -e
if grep -Eq "$signature" "$work/tests.log"; then
    echo "sanitize: sanitizer report(s):" >&2
    grep -E -A12 "$signature" "$work/tests.log" >&2
    exit 1
fi
if [ "$rc" -ne 0 ]; then
    echo "sanitize: tests failed under the sanitizers (exit $rc)" >&2
    exit "$rc"
fi
echo "== sanitize: no sanitizer report"
