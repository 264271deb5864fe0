#!/bin/sh
# Installs the gateway into a virtual environment at $1: the one command the Dockerfile
# runs to build its image, and that CI runs as it is (tests/test_deploy.py), since the
# machines that test this project cannot pull base images. It builds from a copy of the
# package's files, so the source folder is left as it was.
set -eu
target=${1:?usage: deploy/install.sh TARGET_DIR}
here=$(cd "$(dirname "$0")/.." && pwd)
src=$(mktemp -d)
trap 'rm -rf "$src"' EXIT
cp -R "$here/pyproject.toml" "$here/README.md" "$here/gateway" "$src/"
python3 -m venv "$target"
"$target/bin/pip" install --no-cache-dir --disable-pip-version-check --quiet "$src"
"$target/bin/wattfare" --help >/dev/null
