#!/usr/bin/env bash
# Regenerates criu-sys/src/docs/bindings.rs: the bindings docs.rs documents
# (it has no libcriu). They are bindgen's output for the installed CRIU's
# headers; criu-sys's build script states their version (DOCS_VERSION), and
# criu-sys/tests/docs_bindings.rs fails while they differ from what the
# installed headers generate.
set -euo pipefail
cd "$(dirname "$0")/.."
out=$(cargo build -q -p criu-sys --message-format=json |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "build-script-executed" and m["package_id"].find("criu-sys") >= 0:
        print(m["out_dir"])')
version=$(pkg-config --modversion criu)
{
  echo "// bindgen's output for the headers of CRIU $version (libcriu's criu.h),"
  echo "// used only where DOCS_RS is set. Regenerate: scripts/update-docs-bindings.sh"
  echo
  cat "$out/bindings.rs"
} > criu-sys/src/docs/bindings.rs
echo "wrote criu-sys/src/docs/bindings.rs from CRIU $version"
