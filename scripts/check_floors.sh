#!/usr/bin/env bash
# setup.cfg's lower bounds are true: a fresh venv with the floor versions of numpy, tokenizers,
# datasets and mimesis (read from setup.cfg's install_requires) passes the data tests. torch is the
# CPU build of requirements/cpu.txt: its floor is about FSDP2 APIs on GPU boxes (see setup.cfg) and
# an older CPU wheel is not on this machine. A few minutes (it installs a new venv); run by hand or
# in CI when time allows:
#   scripts/check_floors.sh [VENV_DIR]        (default: $TMPDIR/glm-pretrain-floors, recreated)
set -euo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}
venv=${1:-${TMPDIR:-/tmp}/glm-pretrain-floors}

# "name>=X" of the checked packages -> "name==X", one a line
floors=$("$python" - <<'PY'
import configparser, re
cfg = configparser.ConfigParser()
cfg.read("setup.cfg")
for line in cfg["options"]["install_requires"].splitlines():
    found = re.fullmatch(r"(numpy|tokenizers|datasets|mimesis)>=([0-9.]+)", line.strip())
    if found:
        print(f"{found[1]}=={found[2]}")
PY
)
if [ "$(echo "$floors" | wc -l)" -ne 4 ]; then
    echo "check_floors: expected floors of numpy, tokenizers, datasets, mimesis in setup.cfg, got: $floors" >&2
    exit 2
fi
echo "floors: $(echo $floors)"
rm -rf "$venv"
"$python" -m venv "$venv"
constraints="$venv/floors.txt"
echo "$floors" > "$constraints"
torch_pin=$(grep '^torch==' requirements/cpu.txt)
# the package with its own install_requires, held at the floors (-c), plus the test runner
"$venv/bin/python" -m pip install --quiet "$torch_pin"
"$venv/bin/python" -m pip install --quiet -c "$constraints" $floors . pytest pytest-timeout hypothesis
"$venv/bin/python" -m pip list 2>/dev/null | grep -i -E "^(numpy|tokenizers|datasets|mimesis|torch) "
# the installed package, not the checkout: run the tests from a copy outside the source tree
workdir=$(mktemp -d)
trap 'rm -rf "$workdir"' EXIT
cp -r tests setup.cfg "$workdir/"
cd "$workdir"
"$venv/bin/python" -m pytest -q -p no:cacheprovider tests/test_data_*.py
