#!/usr/bin/env bash
# The wheel works on its own: build it, install it into a fresh venv (outside the checkout, so nothing is
# imported from the source tree), compile the C++ core from the sources inside the wheel, run doctor and a
# scan of the bundled model. Needs scripts/setup.sh to have run (it reuses its llama-cpp-python wheel).
set -euo pipefail
cd "$(dirname "$0")/.."
REPO=$PWD
LLAMA_VERSION=0.3.36
WHEELHOUSE=${SAFETY_AUDIT_WHEELHOUSE:-${XDG_CACHE_HOME:-$HOME/.cache}/safety-audit/wheels/llama-cpp-python-${LLAMA_VERSION}-nonative}
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

.venv/bin/python -m pip wheel -q --no-deps -w "$TMP/dist" . 2>&1 | grep -v -i "warning" || true
WHEEL=$(ls "$TMP"/dist/safety_audit-*.whl)
.venv/bin/python - "$WHEEL" <<'PY'
import sys, zipfile
names = zipfile.ZipFile(sys.argv[1]).namelist()
need = ["auditor/_cpp/ops.cpp", "auditor/_cpp/cuda/pair_stats.cu", "auditor/data/alpaca_gpt4_en_demo_999.json",
        "auditor/data/advbench_harmful_behaviors.csv", "auditor/data/refusal_starts.txt", "auditor/io/cache.py",
        "auditor/render/templates/report.html.j2", "auditor/render/templates/report.md.j2", "auditor/cli/__main__.py"]
missing = [n for n in need if n not in names]
assert not missing, f"wheel lacks {missing}"
print(f"wheel ok: {len(names)} files")
PY
python3 -m venv "$TMP/venv"
PIP="$TMP/venv/bin/python -m pip"
quiet() { "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; return "${PIPESTATUS[0]}"; }  # pip's config noise
quiet $PIP install -q "torch==2.13.0"
quiet $PIP install -q --no-cache-dir "$WHEELHOUSE"/llama_cpp_python-*.whl
quiet $PIP install -q "$WHEEL"
cd "$TMP"
export SAFETY_AUDIT_CACHE="$TMP/cache" TORCH_EXTENSIONS_DIR="$TMP/ext"
"$TMP/venv/bin/safety-audit" doctor --json > doctor.json
"$TMP/venv/bin/python" - <<'PY'
import json
d = json.load(open("doctor.json"))
ops = d["compiled_ops"]
assert ops["loaded"], ops
assert "site-packages/auditor/_cpp" in ops["source"], ops["source"]
print("doctor ok: compiled core built from", ops["source"])
PY
"$TMP/venv/bin/safety-audit" scan --bootstrap 100 -q --json scan.json > /dev/null
"$TMP/venv/bin/python" -c "
import json; r = json.load(open('scan.json'))
assert r['n_layers'] == 30 and len(r['layers']) == 30 and r['backend'] == 'llama', r
print('scan ok: initial range', r['initial_range'])"
"$TMP/venv/bin/safety-audit" report scan.json --html report.html 2> /dev/null  # templates are package data
grep -q "data:image/png;base64" report.html && echo "report ok: $(wc -c < report.html) bytes, scan plot embedded"
echo "wheel check passed"
