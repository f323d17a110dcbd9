#!/usr/bin/env python3
"""Print one of kind's node-image manifests (defaultCNIManifest, defaultStorageManifest) from
kind's pkg/build/nodeimage/const_*.go, with the image constants it concatenates filled in, and
check that the image constants are the ones tests/kind/lib.sh builds images for.

Usage: manifests.py GO_FILE CONST_NAME [EXPECTED_IMAGE...]"""
import re
import sys

src = open(sys.argv[1]).read()
consts = dict(re.findall(r'^const (\w+) = "([^"]*)"', src, re.M))
m = re.search(r'^const ' + sys.argv[2] + r' = ', src, re.M)
if not m:
    sys.exit(f"{sys.argv[2]} not found in {sys.argv[1]}")
pos, out = m.end(), []
while True:
    if src[pos] == '`':
        end = src.index('`', pos + 1)
        out.append(src[pos + 1:end])
        pos = end + 1
    else:
        ident = re.match(r'\w+', src[pos:]).group(0)
        out.append(consts[ident])
        pos += len(ident)
    rest = re.match(r'\s*\+\s*', src[pos:])
    if not rest:
        break
    pos += rest.end()
for want in sys.argv[3:]:
    if want not in consts.values():
        sys.exit(f"{sys.argv[1]} does not name {want}; update tests/kind/lib.sh")
sys.stdout.write("".join(out).lstrip("\n"))
