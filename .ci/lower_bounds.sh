#!/usr/bin/env bash
# Lower-bound run: the downloader and loader tests with the LOWEST version of each runtime dependency that
# requirements.txt allows (each `name>=X` installed as `name==X`; their own dependencies resolve as pip chooses).
# The venv does not see the system's site-packages; only torch (and the packages torch itself needs) is linked
# in from the interpreter's environment, so the packages under test are exactly the floors.
#   bash .ci/lower_bounds.sh [venv folder]      (PYTHON picks the interpreter; default python3)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=${1:-${TMPDIR:-/tmp}/dpir-lower-bounds}
start=$(date +%s)

rm -rf "$VENV"
$PY -m venv "$VENV"
VPY="$VENV/bin/python"

# torch from the interpreter's environment: its distribution and every distribution it needs, linked by top-level name
"$PY" - "$("$VPY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')" <<'EOF'
import importlib.metadata as md, os, re, sys
from pathlib import Path
dest, seen, todo = Path(sys.argv[1]), set(), ["torch"]
while todo:
    name = re.split(r"[\s<>=!~;\[]", todo.pop())[0].lower().replace("_", "-")
    if name in seen:
        continue
    seen.add(name)
    try:
        dist = md.distribution(name)
    except md.PackageNotFoundError:  # an optional or other-platform requirement
        continue
    todo += [r for r in dist.requires or [] if "extra ==" not in r]
    root = Path(dist.locate_file(""))
    for top in {Path(str(f)).parts[0] for f in dist.files or []}:
        src, dst = root / top, dest / top
        if top not in ("..", "bin") and src.exists() and not dst.exists():
            os.symlink(src, dst)
print("linked from the system:", ", ".join(sorted(seen)))
EOF

# the floors: every requirement but torch must name one
pins=$("$VPY" - <<'EOF'
import re
pins = []
for line in open("requirements.txt"):
    req = line.split("#")[0].strip()
    if not req or re.match(r"torch\b", req):
        continue
    m = re.fullmatch(r"([A-Za-z0-9_.\-]+)\s*>=\s*([0-9][^,;\s]*)", req)
    if not m:
        raise SystemExit(f"requirements.txt: {req!r} has no '>=' floor to test")
    pins.append(f"{m[1]}=={m[2]}")
print(" ".join(pins))
EOF
)
echo "lower bounds: $pins"
"$VPY" -m pip install -q --disable-pip-version-check $pins pytest numpy Pillow sentencepiece
"$VPY" -m pip list --disable-pip-version-check 2>/dev/null | grep -i -E "^(huggingface.hub|transformers|diffusers|safetensors|einops|torch) "

"$VPY" -m pytest -q -p no:cacheprovider tests/test_hub_download.py tests/test_checkpoints.py
echo "lower-bound run took $(( $(date +%s) - start )) s"
