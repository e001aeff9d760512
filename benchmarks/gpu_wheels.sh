#!/usr/bin/env bash
# Wheels for running benchmarks/bench_gpu.py on the device tool's GPU machine (no network
# there; its python3 is CPython 3.12 with torch, numpy, pyarrow, scikit-learn, rich, psutil
# and dask's small dependencies already installed, see /work/.library/device/KINDS.md).
#
#   benchmarks/gpu_wheels.sh download    here (PyPI reachable): the wheels the machine lacks,
#                                        pinned to the versions in .venv, into .whl/ (small
#                                        ones) and .whl-xgb1/, .whl-xgb2/ (the xgboost wheel,
#                                        recompressed and cut into parts that fit a call's
#                                        64 MiB upload); prints the device calls to make
#   benchmarks/gpu_wheels.sh plan        here: print the sizes and the calls again
#   benchmarks/gpu_wheels.sh stash DIR   there: copy the xgboost parts carried in this call to DIR
#   benchmarks/gpu_wheels.sh install [--parts DIR] [--target DIR] [--require-xgboost]
#                                        there: reassemble xgboost when every part is at hand
#                                        (carried or stashed in DIR), pip install everything
#                                        into --target (default /tmp/site), check the imports
#
# Why the xgboost wheel is special: its CUDA build (3.2.0) is 126 MiB compressed
# (libxgboost.so is 226 MiB), twice a call's upload. Rezipped without compression and then
# xz-compressed it is 93 MiB, so two parts of at most PART_MIB: one call carries and stashes
# the first, the next call carries the second. nvidia-nccl-cu12 (xgboost's requirement,
# ~200 MB) is left out: this xgboost loads NCCL at run time (dlopen) for GPU communication
# between workers, and a run on the machine's one GPU has a single worker; should it be
# asked for anyway, xgboost finds the image's own nvidia-nccl-cu13.
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"

# Packages on the training path (analysis.train: runner, xgb, mlp; core.cluster, config and
# tests/_train_helpers, with their requirements) that the machine's image lacks. Found by
# walking the Requires-Dist of xgboost, dask[array,dataframe] (xgboost.dask imports
# dask.dataframe), distributed, pydantic, rich, pyarrow, numpy, scikit-learn, scipy and
# psutil in .venv against the image's package list.
SMALL=(dask distributed tornado tblib zict partd locket
       pydantic pydantic-core annotated-types typing-inspection)
BIG=xgboost
PART_MIB=${PART_MIB:-54}  # a part + .whl (~6 MiB) + the working tree (~1 MiB) < 64 MiB
VENV_PY=${VENV_PY:-.venv/bin/python}
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64
           --platform manylinux1_x86_64)

die() { echo "gpu_wheels.sh: $*" >&2; exit 1; }
mib() { awk -v b="$1" 'BEGIN { if (b < 1048576) printf "%.0f KiB", b / 1024; else printf "%.1f MiB", b / 1048576 }'; }
size() { stat -c %s "$1"; }

pinned() {  # NAME -> the version installed in .venv
    "$VENV_PY" -c 'import importlib.metadata as m, sys; print(m.version(sys.argv[1]))' "$1" \
        || die "$1 is not installed in $VENV_PY (run make install first)"
}

fetch() {  # NAME==VERSION DIR: the CPython 3.12 x86_64 wheel (or a pure-Python one)
    "$VENV_PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 \
        --implementation cp "${PLATFORMS[@]}" -d "$2" "$1"
}

tree_bytes() {  # what a device call uploads besides the carried folders
    git ls-files -co --exclude-standard -z | du -cb --files0-from=- 2>/dev/null | tail -1 | cut -f1
}

download() {
    [ -x "$VENV_PY" ] || die "$VENV_PY not found: run make install first (the pins come from .venv)"
    rm -rf .whl .whl-xgb[0-9]*
    mkdir -p .whl
    for name in "${SMALL[@]}"; do
        fetch "$name==$(pinned "$name")" .whl
    done
    local version wheel xz_file digest parts k
    tmp=$(mktemp -d)  # global: the EXIT trap reads it after this function returns
    trap 'rm -rf "$tmp"' EXIT
    version=$(pinned "$BIG")
    fetch "$BIG==$version" "$tmp"
    wheel=$(cd "$tmp" && ls "$BIG"-"$version"-*.whl)
    # Stored (uncompressed) members: xz then sees the raw library and packs it far better
    # than the wheel's deflate. The archive is still a valid wheel (RECORD hashes are of the
    # members' contents), so pip installs it as it is.
    "$VENV_PY" - "$tmp/$wheel" "$tmp/stored.whl" <<'EOF'
import copy, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as src, zipfile.ZipFile(sys.argv[2], "w", zipfile.ZIP_STORED) as dst:
    for info in src.infolist():
        stored = copy.copy(info)  # src's own ZipInfo must keep its method for the read
        stored.compress_type = zipfile.ZIP_STORED
        dst.writestr(stored, src.read(info))
EOF
    xz_file="$wheel.xz"
    xz -T1 -6 -c "$tmp/stored.whl" > "$tmp/$xz_file"
    digest=$(sha256sum "$tmp/$xz_file" | cut -d' ' -f1)
    (cd "$tmp" && split -b "${PART_MIB}m" -d -a 1 "$xz_file" "$xz_file.part")
    parts=$(cd "$tmp" && ls "$xz_file".part* | wc -l)
    k=0
    for part in $(cd "$tmp" && ls "$xz_file".part*); do
        k=$((k + 1))
        mkdir -p ".whl-xgb$k"
        mv "$tmp/$part" ".whl-xgb$k/"
        # The manifest travels with every part: any call can tell what is missing.
        printf 'wheel=%s\nxz=%s\nsha256=%s\nparts=%s\n' "$wheel" "$xz_file" "$digest" "$parts" \
            > ".whl-xgb$k/xgboost.manifest"
    done
    report "$parts"
}

report() {
    local parts=$1 small=0 tree f k
    echo "== .whl/ (installed by every call)"
    for f in .whl/*.whl; do
        small=$((small + $(size "$f")))
        printf '  %-70s %s\n' "$(basename "$f")" "$(mib "$(size "$f")")"
    done
    echo "  total $(mib $small)"
    tree=$(tree_bytes)
    echo "== xgboost parts (xz of the rezipped wheel $(sed -n 's/^wheel=//p' .whl-xgb1/xgboost.manifest))"
    for k in $(seq 1 "$parts"); do
        f=$(ls .whl-xgb$k/*.part*)
        echo "  .whl-xgb$k/$(basename "$f")  $(mib "$(size "$f")");" \
             "a call carrying it and .whl uploads $(mib $((tree + small + $(size "$f"))))" \
             "with the working tree ($(mib "$tree"))"
    done
    cat <<EOF
== device calls (tool 'run'; make call 2 right after call 1 returns: the machine stays warm
   only ~30 s and /root/whl-parts goes with it)
EOF
    local last=$parts
    for k in $(seq 1 "$((last - 1))"); do
        local extra=""
        [ "$k" = 1 ] && extra=" && bash benchmarks/gpu_wheels.sh install && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --models mlp --devices cpu,cuda --out \$OUT && python3 benchmarks/bench_train.py --only loader --out \$OUT"
        echo "  call $k: carry [\".whl\", \".whl-xgb$k\"], timeout_s 600, command:"
        echo "    bash benchmarks/gpu_wheels.sh stash /root/whl-parts$extra"
    done
    echo "  call $last: carry [\".whl\", \".whl-xgb$last\"], timeout_s 600, command:"
    echo "    bash benchmarks/gpu_wheels.sh install --parts /root/whl-parts --require-xgboost && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 benchmarks/bench_gpu.py --models xgboost --devices cpu,cuda --out \$OUT"
    echo "  If call $last says parts are missing (the machine went back), repeat the stash calls"
    echo "  with 'bash benchmarks/gpu_wheels.sh stash /root/whl-parts' alone, then call $last at once."
}

stash() {
    local dir=${1:?stash needs a folder}
    mkdir -p "$dir"
    compgen -G ".whl-xgb*/xgboost.manifest" > /dev/null || die "no .whl-xgb*/ folder was carried"
    cp .whl-xgb*/* "$dir/"
    echo "gpu_wheels.sh: stashed in $dir: $(cd "$dir" && ls | tr '\n' ' ')"
}

install() {
    local parts_dir="" target=/tmp/site require=0 python=${PYTHON:-python3}
    while [ $# -gt 0 ]; do
        case $1 in
            --parts) parts_dir=$2; shift 2 ;;
            --target) target=$2; shift 2 ;;
            --require-xgboost) require=1; shift ;;
            *) die "install: unknown option $1" ;;
        esac
    done
    compgen -G ".whl/*.whl" > /dev/null || die "no .whl/*.whl: carry .whl in this call"
    local dirs=(.whl-xgb*/) manifest="" wheels=(.whl/*.whl)
    [ -n "$parts_dir" ] && [ -d "$parts_dir" ] && dirs+=("$parts_dir/")
    for d in "${dirs[@]}"; do
        [ -f "$d/xgboost.manifest" ] && manifest="$d/xgboost.manifest" && break
    done
    if [ -n "$manifest" ]; then
        local wheel xz_file digest parts have=() k d
        wheel=$(sed -n 's/^wheel=//p' "$manifest"); xz_file=$(sed -n 's/^xz=//p' "$manifest")
        digest=$(sed -n 's/^sha256=//p' "$manifest"); parts=$(sed -n 's/^parts=//p' "$manifest")
        for k in $(seq 0 $((parts - 1))); do
            for d in "${dirs[@]}"; do
                if [ -f "$d/$xz_file.part$k" ]; then have+=("$d/$xz_file.part$k"); break; fi
            done
        done
        if [ ${#have[@]} -eq "$parts" ]; then
            mkdir -p /tmp/gpu-wheels
            cat "${have[@]}" > "/tmp/gpu-wheels/$xz_file"
            echo "$digest  /tmp/gpu-wheels/$xz_file" | sha256sum -c --quiet \
                || die "$xz_file: reassembled parts do not match the manifest's sha256"
            # Python's lzma: the machine need not have the xz tool.
            "$python" -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"), 1 << 24)' \
                "/tmp/gpu-wheels/$xz_file" "/tmp/gpu-wheels/$wheel"
            rm "/tmp/gpu-wheels/$xz_file"
            wheels+=("/tmp/gpu-wheels/$wheel")
        else
            local msg="xgboost: ${#have[@]} of $parts parts at hand (carried .whl-xgb*/ and ${parts_dir:-no --parts folder})"
            [ "$require" = 1 ] && die "$msg; the machine went back since the stash call: repeat it, then this call at once"
            echo "gpu_wheels.sh: $msg; installing the small wheels only"
        fi
    elif [ "$require" = 1 ]; then
        die "no xgboost manifest in the carried .whl-xgb*/ or ${parts_dir:-no --parts folder}"
    fi
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$target" "${wheels[@]}"
    rm -rf /tmp/gpu-wheels
    PYTHONPATH="$target${PYTHONPATH:+:$PYTHONPATH}" "$python" - "$target" <<'EOF'
# The installed set must import, and each installed wheel's requirements must be met by
# what the machine has: a version clash shows here, not half-way through a benchmark.
import importlib, importlib.metadata as md, platform, sys
from pathlib import Path
from packaging.requirements import Requirement

target = Path(sys.argv[1])
mods = ["analysis.train.runner", "analysis.train.xgb", "analysis.train.mlp", "analysis.core.cluster",
        "dask.array", "distributed", "pydantic"]
try:
    import xgboost  # noqa: F401
    mods.append("xgboost.dask")
except ImportError:
    pass
for mod in mods:
    importlib.import_module(mod)
problems = []
for info in target.glob("*.dist-info"):
    dist = md.Distribution.at(info)
    for text in dist.requires or []:
        req = Requirement(text)
        if req.marker and not req.marker.evaluate({"extra": ""}):
            continue
        try:
            have = md.version(req.name)
        except md.PackageNotFoundError:
            if req.name.lower().startswith("nvidia-nccl"):
                continue  # left out on purpose (multi-GPU only), see gpu_wheels.sh
            problems.append(f"{dist.metadata['Name']} needs {req}: not installed")
            continue
        if req.specifier and not req.specifier.contains(have, prereleases=True):
            problems.append(f"{dist.metadata['Name']} needs {req}: have {have}")
print(f"gpu_wheels.sh: python {platform.python_version()}: imported {', '.join(mods)}")
for line in problems:
    print(f"gpu_wheels.sh: warning: {line}")
EOF
}

case ${1:-download} in
    download) download ;;
    plan) compgen -G ".whl-xgb1/xgboost.manifest" > /dev/null || die "no .whl-xgb1/: run download first"
          report "$(sed -n 's/^parts=//p' .whl-xgb1/xgboost.manifest)" ;;
    stash) shift; stash "$@" ;;
    install) shift; install "$@" ;;
    *) die "unknown command $1; use download, plan, stash DIR or install [--parts DIR] [--target DIR] [--require-xgboost]" ;;
esac
