#!/usr/bin/env python3
"""Write a single-layer OCI image archive from a root filesystem directory.

No docker engine and no registry are available to the test cluster, so its images are built
from plain directories and imported with `ctr -n k8s.io images import <archive>`. This tool
writes an OCI image-layout tar (oci-layout, index.json, blobs/sha256/...) holding one image
config, one manifest and ONE layer (the whole rootfs), for linux/amd64.

The index entry carries both name annotations, so ctr names the image without extra flags:
  io.containerd.image.name          = the full reference (e.g. registry.k8s.io/pause:3.10)
  org.opencontainers.image.ref.name = the tag (e.g. 3.10)

The layer is reproducible: entries are sorted, every entry has the same mtime (--mtime, default
$SOURCE_DATE_EPOCH or 2020-01-01), uid/gid 0, and permission bits are kept as they are in the
rootfs (executable bits, sticky /tmp). Symlinks stay symlinks; files with several names become
one file plus hard links. Device nodes, FIFOs and sockets are refused: a rootfs containing them
is most likely one with a mount still on it.

Python 3 standard library only. Usage:
  mkoci.py --rootfs DIR --ref NAME:TAG --output FILE.tar \
           [--entrypoint JSON] [--cmd JSON] [--env K=V]... [--workdir DIR] [--user USER] \
           [--label K=V]... [--gzip] [--mtime SECONDS]
"""

import argparse
import datetime
import gzip
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

MT_INDEX = "application/vnd.oci.image.index.v1+json"
MT_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MT_CONFIG = "application/vnd.oci.image.config.v1+json"
MT_LAYER = "application/vnd.oci.image.layer.v1.tar"
MT_LAYER_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"

DEFAULT_MTIME = 1577836800  # 2020-01-01T00:00:00Z


class HashingWriter:
    """A write-only file object that hashes and counts what passes through it."""

    def __init__(self, inner):
        self.inner = inner
        self.sha = hashlib.sha256()
        self.size = 0

    def write(self, data):
        self.sha.update(data)
        self.size += len(data)
        return self.inner.write(data)

    def flush(self):
        self.inner.flush()

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


def split_ref(ref):
    """'registry.k8s.io/pause:3.10' -> tag '3.10'. The tag is what follows the last ':' after
    the last '/' (a ':' before it belongs to a registry port)."""
    name, sep, tag = ref.rpartition(":")
    if not sep or "/" in tag or not name:
        sys.exit(f"mkoci: image reference {ref!r} has no tag (want NAME:TAG)")
    return tag


def walk_sorted(root):
    """Yield paths below root (relative, '/'-separated), parents before children, sorted by
    name so the layer does not depend on directory order."""
    def rec(rel):
        full = os.path.join(root, rel) if rel else root
        for name in sorted(os.listdir(full)):
            child = f"{rel}/{name}" if rel else name
            yield child
            st = os.lstat(os.path.join(root, child))
            if stat.S_ISDIR(st.st_mode):
                yield from rec(child)
    yield from rec("")


def write_layer(rootfs, out, mtime):
    """Write the rootfs as a tar stream to out."""
    seen_inodes = {}  # (dev, ino) -> first name, for hard links
    # 'w|' is the streaming mode: tarfile only ever calls out.write().
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for rel in walk_sorted(rootfs):
            full = os.path.join(rootfs, rel)
            st = os.lstat(full)
            ti = tarfile.TarInfo(rel)
            ti.mtime = mtime
            ti.mode = stat.S_IMODE(st.st_mode)
            ti.uid = ti.gid = 0
            ti.uname = ti.gname = "root"
            if stat.S_ISDIR(st.st_mode):
                ti.type = tarfile.DIRTYPE
                tar.addfile(ti)
            elif stat.S_ISLNK(st.st_mode):
                ti.type = tarfile.SYMTYPE
                ti.linkname = os.readlink(full)
                tar.addfile(ti)
            elif stat.S_ISREG(st.st_mode):
                key = (st.st_dev, st.st_ino)
                if st.st_nlink > 1 and key in seen_inodes:
                    ti.type = tarfile.LNKTYPE
                    ti.linkname = seen_inodes[key]
                    tar.addfile(ti)
                    continue
                if st.st_nlink > 1:
                    seen_inodes[key] = rel
                ti.type = tarfile.REGTYPE
                ti.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(ti, f)
            else:
                sys.exit(f"mkoci: {full}: device, FIFO or socket in the rootfs "
                         "(a mount left behind?); refusing to package it")


def json_bytes(obj):
    # Sorted keys and no whitespace: the same input always gives the same digest.
    return json.dumps(obj, sort_keys=True, separators=(",", ":")).encode()


def add_bytes(tar, name, data, mtime):
    ti = tarfile.TarInfo(name)
    ti.size = len(data)
    ti.mtime = mtime
    ti.mode = 0o644
    tar.addfile(ti, io.BytesIO(data))


def add_dir(tar, name, mtime):
    ti = tarfile.TarInfo(name)
    ti.type = tarfile.DIRTYPE
    ti.mtime = mtime
    ti.mode = 0o755
    tar.addfile(ti)


def key_values(items, what):
    out = {}
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or not k:
            sys.exit(f"mkoci: --{what} {item!r}: want KEY=VALUE")
        out[k] = v
    return out


def json_list(text, what):
    try:
        v = json.loads(text)
    except json.JSONDecodeError as e:
        sys.exit(f"mkoci: --{what}: not JSON: {e}")
    if not isinstance(v, list) or not all(isinstance(s, str) for s in v):
        sys.exit(f"mkoci: --{what}: want a JSON list of strings, e.g. '[\"/app\"]'")
    return v


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rootfs", required=True, help="directory that becomes the image's /")
    p.add_argument("--ref", required=True, help="full image reference NAME:TAG")
    p.add_argument("--output", required=True, help="archive to write")
    p.add_argument("--entrypoint", help="JSON list, e.g. '[\"/pause\"]'")
    p.add_argument("--cmd", help="JSON list, e.g. '[\"sh\"]'")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--workdir", default="")
    p.add_argument("--user", default="")
    p.add_argument("--label", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--gzip", action="store_true",
                   help="gzip the layer (smaller archive, slower to build and to import)")
    p.add_argument("--mtime", type=int,
                   default=int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_MTIME)),
                   help="timestamp of every entry and of the config's 'created'")
    a = p.parse_args()

    if not os.path.isdir(a.rootfs):
        sys.exit(f"mkoci: --rootfs {a.rootfs}: not a directory")
    tag = split_ref(a.ref)
    env = [f"{k}={v}" for k, v in key_values(a.env, "env").items()]
    labels = key_values(a.label, "label")
    created = datetime.datetime.fromtimestamp(a.mtime, datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")

    out_dir = os.path.dirname(os.path.abspath(a.output))
    layer_tmp = os.path.join(out_dir, f".{os.path.basename(a.output)}.layer.tmp")
    try:
        # 1. The layer, to a temporary file: its digest names its blob, so it has to be
        #    known before the archive entry is written. diff_id is the digest of the
        #    uncompressed tar, the blob digest that of what is stored.
        with open(layer_tmp, "wb") as f:
            blob = HashingWriter(f)
            if a.gzip:
                # mtime=0 and no file name in the gzip header keep the blob reproducible.
                gz = gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0,
                                   compresslevel=6)
                diff = HashingWriter(gz)
                write_layer(a.rootfs, diff, a.mtime)
                gz.close()
            else:
                diff = blob  # uncompressed: diff_id and blob digest are the same
                write_layer(a.rootfs, blob, a.mtime)
        layer = {"mediaType": MT_LAYER_GZIP if a.gzip else MT_LAYER,
                 "digest": blob.digest(), "size": blob.size}

        # 2. Config and manifest.
        cfg = {}
        if a.entrypoint is not None:
            cfg["Entrypoint"] = json_list(a.entrypoint, "entrypoint")
        if a.cmd is not None:
            cfg["Cmd"] = json_list(a.cmd, "cmd")
        if env:
            cfg["Env"] = env
        if a.workdir:
            cfg["WorkingDir"] = a.workdir
        if a.user:
            cfg["User"] = a.user
        if labels:
            cfg["Labels"] = labels
        config = json_bytes({
            "created": created,
            "architecture": "amd64",
            "os": "linux",
            "config": cfg,
            "rootfs": {"type": "layers", "diff_ids": [diff.digest()]},
            "history": [{"created": created, "created_by": "kdev tests/cluster/images/mkoci.py"}],
        })
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        manifest = json_bytes({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "digest": config_digest, "size": len(config)},
            "layers": [layer],
        })
        manifest_digest = "sha256:" + hashlib.sha256(manifest).hexdigest()
        index = json_bytes({
            "schemaVersion": 2,
            "mediaType": MT_INDEX,
            "manifests": [{
                "mediaType": MT_MANIFEST,
                "digest": manifest_digest,
                "size": len(manifest),
                "platform": {"architecture": "amd64", "os": "linux"},
                "annotations": {
                    "io.containerd.image.name": a.ref,
                    "org.opencontainers.image.ref.name": tag,
                },
            }],
        })

        # 3. The image layout archive, written next to the output and renamed into place so
        #    a crash never leaves a truncated archive under the final name.
        tmp = a.output + ".tmp"
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(tar, "oci-layout", json_bytes({"imageLayoutVersion": "1.0.0"}), a.mtime)
            add_bytes(tar, "index.json", index, a.mtime)
            add_dir(tar, "blobs", a.mtime)
            add_dir(tar, "blobs/sha256", a.mtime)
            add_bytes(tar, "blobs/sha256/" + config_digest[7:], config, a.mtime)
            add_bytes(tar, "blobs/sha256/" + manifest_digest[7:], manifest, a.mtime)
            ti = tarfile.TarInfo("blobs/sha256/" + layer["digest"][7:])
            ti.size = layer["size"]
            ti.mtime = a.mtime
            ti.mode = 0o644
            with open(layer_tmp, "rb") as f:
                tar.addfile(ti, f)
        os.replace(tmp, a.output)
    finally:
        for f in (layer_tmp, a.output + ".tmp"):
            if os.path.exists(f):
                os.unlink(f)

    print(f"mkoci: {a.ref}: manifest {manifest_digest}, layer {layer['size']} bytes",
          file=sys.stderr)


if __name__ == "__main__":
    main()
