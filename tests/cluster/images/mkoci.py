#!/usr/bin/env python3
"""Write a single-layer OCI image archive from a root filesystem directory, or derive an image
from such an archive by adding one small layer that deletes paths.

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

Derived images (--base): the new archive holds the base image's layer blobs copied as they are
(same digests, checked while copying, so containerd shares their content and unpacked snapshots
with the base image), plus one layer with an OCI whiteout (`DIR/.wh.NAME`) per --whiteout path,
preceded by the whiteout's parent directories with the metadata the base gives them. The config
is the base's, with that layer appended to rootfs.diff_ids and history, and --label added to its
labels; every --whiteout path must exist in the base.

Python 3 standard library only. Usage:
  mkoci.py --rootfs DIR --ref NAME:TAG --output FILE.tar \
           [--entrypoint JSON] [--cmd JSON] [--env K=V]... [--workdir DIR] [--user USER] \
           [--label K=V]... [--gzip] [--mtime SECONDS]
  mkoci.py --base BASE.tar --whiteout PATH [--whiteout PATH]... --ref NAME:TAG --output FILE.tar \
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


class HashingReader:
    """A read-only file object that hashes what is read through it."""

    def __init__(self, inner):
        self.inner = inner
        self.sha = hashlib.sha256()

    def read(self, n=-1):
        data = self.inner.read(n)
        self.sha.update(data)
        return data

    def digest(self):
        return "sha256:" + self.sha.hexdigest()


def utc(mtime):
    return datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc) \
        .strftime("%Y-%m-%dT%H:%M:%SZ")


def write_archive(output, ref, config, manifest, blobs, mtime):
    """Write the OCI image layout archive: config and manifest (bytes) and blobs, a list of
    (descriptor, open) where open() returns a file object with the blob's content, which is
    checked against the descriptor's digest while it is copied. Written next to output and
    renamed into place, so a crash never leaves a truncated archive under the final name.
    Returns the manifest's digest."""
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
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
                "io.containerd.image.name": ref,
                "org.opencontainers.image.ref.name": split_ref(ref),
            },
        }],
    })
    tmp = output + ".tmp"
    try:
        with tarfile.open(tmp, mode="w", format=tarfile.PAX_FORMAT) as tar:
            add_bytes(tar, "oci-layout", json_bytes({"imageLayoutVersion": "1.0.0"}), mtime)
            add_bytes(tar, "index.json", index, mtime)
            add_dir(tar, "blobs", mtime)
            add_dir(tar, "blobs/sha256", mtime)
            add_bytes(tar, "blobs/sha256/" + config_digest[7:], config, mtime)
            add_bytes(tar, "blobs/sha256/" + manifest_digest[7:], manifest, mtime)
            for desc, open_blob in blobs:
                ti = tarfile.TarInfo("blobs/sha256/" + desc["digest"][7:])
                ti.size = desc["size"]
                ti.mtime = mtime
                ti.mode = 0o644
                with open_blob() as f:
                    r = HashingReader(f)
                    tar.addfile(ti, r)
                if r.digest() != desc["digest"]:
                    sys.exit(f"mkoci: blob {desc['digest']} has digest {r.digest()}; "
                             "the base archive is corrupt")
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return manifest_digest


def write_layer_file(path, gz, write):
    """Write a layer to path with write(out), gzipped if gz. Returns (descriptor, diff_id): the
    descriptor's digest is that of what is stored, diff_id that of the uncompressed tar."""
    with open(path, "wb") as f:
        blob = HashingWriter(f)
        if gz:
            # mtime=0 and no file name in the gzip header keep the blob reproducible.
            z = gzip.GzipFile(filename="", mode="wb", fileobj=blob, mtime=0, compresslevel=6)
            diff = HashingWriter(z)
            write(diff)
            z.close()
        else:
            diff = blob  # uncompressed: diff_id and blob digest are the same
            write(blob)
    desc = {"mediaType": MT_LAYER_GZIP if gz else MT_LAYER,
            "digest": blob.digest(), "size": blob.size}
    return desc, diff.digest()


def from_rootfs(a):
    if not os.path.isdir(a.rootfs):
        sys.exit(f"mkoci: --rootfs {a.rootfs}: not a directory")
    split_ref(a.ref)
    env = [f"{k}={v}" for k, v in key_values(a.env, "env").items()]
    labels = key_values(a.label, "label")
    created = utc(a.mtime)

    out_dir = os.path.dirname(os.path.abspath(a.output))
    layer_tmp = os.path.join(out_dir, f".{os.path.basename(a.output)}.layer.tmp")
    try:
        # 1. The layer, to a temporary file: its digest names its blob, so it has to be
        #    known before the archive entry is written.
        layer, diff_id = write_layer_file(layer_tmp, a.gzip,
                                          lambda out: write_layer(a.rootfs, out, a.mtime))

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
            "rootfs": {"type": "layers", "diff_ids": [diff_id]},
            "history": [{"created": created, "created_by": "kdev tests/cluster/images/mkoci.py"}],
        })
        manifest = json_bytes({
            "schemaVersion": 2,
            "mediaType": MT_MANIFEST,
            "config": {"mediaType": MT_CONFIG, "size": len(config),
                       "digest": "sha256:" + hashlib.sha256(config).hexdigest()},
            "layers": [layer],
        })

        # 3. The image layout archive.
        digest = write_archive(a.output, a.ref, config, manifest,
                               [(layer, lambda: open(layer_tmp, "rb"))], a.mtime)
    finally:
        if os.path.exists(layer_tmp):
            os.unlink(layer_tmp)
    print(f"mkoci: {a.ref}: manifest {digest}, layer {layer['size']} bytes", file=sys.stderr)


# ---------------------------------------------------------------------------------------------
# Derived images (--base)

def clean_path(path, what):
    """'/go/bin/dlv', './go/bin/dlv/' -> 'go/bin/dlv'; refuses '..' and the root itself."""
    parts = [p for p in path.split("/") if p not in ("", ".")]
    if not parts or ".." in parts:
        sys.exit(f"mkoci: {what} {path!r}: want a path below / without '..'")
    return "/".join(parts)


def under(path, top):
    """Whether path is top or below it ('' is the root, above everything)."""
    return top == "" or path == top or path.startswith(top + "/")


def read_base(tar):
    """The base archive's (manifest, config) as parsed JSON. It must be an OCI image layout
    with one image manifest (what this tool writes)."""
    def blob(digest):
        try:
            return tar.extractfile("blobs/sha256/" + digest.removeprefix("sha256:")).read()
        except KeyError:
            sys.exit(f"mkoci: --base: blob {digest} is missing")
    try:
        index = json.loads(tar.extractfile("index.json").read())
    except KeyError:
        sys.exit("mkoci: --base: no index.json; not an OCI image layout archive")
    manifests = index.get("manifests", [])
    if len(manifests) != 1 or manifests[0].get("mediaType") != MT_MANIFEST:
        sys.exit("mkoci: --base: want an index with exactly one image manifest "
                 f"(found {[m.get('mediaType') for m in manifests]})")
    manifest = json.loads(blob(manifests[0]["digest"]))
    config = json.loads(blob(manifest["config"]["digest"]))
    if len(config.get("rootfs", {}).get("diff_ids", [])) != len(manifest["layers"]):
        sys.exit("mkoci: --base: the config's rootfs.diff_ids and the manifest's layers differ "
                 "in number")
    return manifest, config


def base_entries(tar, layers, wanted):
    """Go through the base's layers in order and return {path: TarInfo} for the paths in wanted
    that exist in the resulting filesystem (whiteouts in the base's own layers applied)."""
    found = {}
    for desc in layers:
        f = tar.extractfile("blobs/sha256/" + desc["digest"].removeprefix("sha256:"))
        # r:* detects gzip (and bzip2, xz); layers are read for their headers only.
        with tarfile.open(fileobj=f, mode="r:*") as layer:
            while (ti := layer.next()) is not None:
                layer.members = []  # only headers are wanted; do not keep them all
                name = clean_path(ti.name, "layer entry") if ti.name.strip("./") else ""
                parent, _, base = name.rpartition("/")
                if base == ".wh..wh..opq":  # opaque directory: the lower layers' children go
                    for p in [p for p in found if under(p, parent) and p != parent]:
                        del found[p]
                elif base.startswith(".wh."):
                    gone = f"{parent}/{base[4:]}" if parent else base[4:]
                    for p in [p for p in found if under(p, gone)]:
                        del found[p]
                elif name in wanted:
                    found[name] = ti
    return found


def from_base(a):
    for opt in ("rootfs", "entrypoint", "cmd", "workdir", "user"):
        if getattr(a, opt):
            sys.exit(f"mkoci: --{opt} cannot be used with --base (the base's config is kept)")
    if a.env:
        sys.exit("mkoci: --env cannot be used with --base (the base's config is kept)")
    if not a.whiteout:
        sys.exit("mkoci: --base needs at least one --whiteout PATH")
    split_ref(a.ref)
    labels = key_values(a.label, "label")
    created = utc(a.mtime)
    targets = sorted({clean_path(w, "--whiteout") for w in a.whiteout})
    parents = {t.rsplit("/", 1)[0] for t in targets if "/" in t}
    ancestors = set()
    for p in parents:
        parts = p.split("/")
        ancestors.update("/".join(parts[:i]) for i in range(1, len(parts) + 1))

    try:
        base_tar = tarfile.open(a.base, mode="r:")
    except (OSError, tarfile.TarError) as e:
        sys.exit(f"mkoci: --base {a.base}: {e}")
    out_dir = os.path.dirname(os.path.abspath(a.output))
    layer_tmp = os.path.join(out_dir, f".{os.path.basename(a.output)}.layer.tmp")
    with base_tar:
        manifest, config = read_base(base_tar)
        found = base_entries(base_tar, manifest["layers"], set(targets) | ancestors)
        missing = [t for t in targets if t not in found]
        if missing:
            sys.exit(f"mkoci: --whiteout: not in the base image: {', '.join(missing)}")

        # The new layer: the whiteouts' parent directories as the base has them (so applying
        # the layer leaves their mode, owner and mtime alone), then one whiteout per path.
        # Sorted by path components, so parents come before their children.
        def write_whiteouts(out):
            entries = []
            for d in ancestors:
                ti = found.get(d)
                if ti is not None and ti.isdir():
                    entries.append((d.split("/"), d, ti))
            for t in targets:
                parent, _, base = t.rpartition("/")
                wh = f"{parent}/.wh.{base}" if parent else f".wh.{base}"
                entries.append((wh.split("/"), wh, None))
            with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
                for _, name, src in sorted(entries, key=lambda e: e[0]):
                    ti = tarfile.TarInfo(name)
                    if src is not None:
                        ti.type = tarfile.DIRTYPE
                        ti.mode, ti.mtime = src.mode, src.mtime
                        ti.uid, ti.gid, ti.uname, ti.gname = src.uid, src.gid, src.uname, src.gname
                    else:
                        ti.mode, ti.mtime = 0o644, a.mtime
                        ti.uid = ti.gid = 0
                        ti.uname = ti.gname = "root"
                    tar.addfile(ti)

        try:
            layer, diff_id = write_layer_file(layer_tmp, a.gzip, write_whiteouts)

            n_base = len(manifest["layers"])
            history = config.get("history")
            if history is None:  # one entry per layer, as the diff_ids
                history = [{"created_by": "(base image)"} for _ in range(n_base)]
            history.append({"created": created, "created_by": "kdev tests/cluster/images/mkoci.py "
                            + " ".join(f"--whiteout /{t}" for t in targets)})
            config["history"] = history
            config["rootfs"]["diff_ids"].append(diff_id)
            config["created"] = created
            if labels:
                cfg = config.setdefault("config", {})
                cfg["Labels"] = {**(cfg.get("Labels") or {}), **labels}
            config_bytes = json_bytes(config)
            base_layers = manifest["layers"]
            manifest["config"] = {"mediaType": MT_CONFIG, "size": len(config_bytes),
                                  "digest": "sha256:" + hashlib.sha256(config_bytes).hexdigest()}
            manifest["layers"] = base_layers + [layer]

            def base_blob(desc):
                return lambda: base_tar.extractfile(
                    "blobs/sha256/" + desc["digest"].removeprefix("sha256:"))
            blobs = [(d, base_blob(d)) for d in base_layers]
            blobs.append((layer, lambda: open(layer_tmp, "rb")))
            digest = write_archive(a.output, a.ref, config_bytes, json_bytes(manifest), blobs,
                                   a.mtime)
        finally:
            if os.path.exists(layer_tmp):
                os.unlink(layer_tmp)
    print(f"mkoci: {a.ref}: manifest {digest}, {n_base} base layer(s) from {a.base} + "
          f"whiteout layer {layer['size']} bytes", file=sys.stderr)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rootfs", help="directory that becomes the image's /")
    p.add_argument("--base", help="OCI archive (as this tool writes) to derive the image from")
    p.add_argument("--whiteout", action="append", default=[],
                   help="with --base: path to delete in the new layer (repeatable)")
    p.add_argument("--ref", required=True, help="full image reference NAME:TAG")
    p.add_argument("--output", required=True, help="archive to write")
    p.add_argument("--entrypoint", help="JSON list, e.g. '[\"/pause\"]'")
    p.add_argument("--cmd", help="JSON list, e.g. '[\"sh\"]'")
    p.add_argument("--env", action="append", default=[], help="KEY=VALUE (repeatable)")
    p.add_argument("--workdir", default="")
    p.add_argument("--user", default="")
    p.add_argument("--label", action="append", default=[],
                   help="KEY=VALUE (repeatable; with --base, added to the base's labels)")
    p.add_argument("--gzip", action="store_true",
                   help="gzip the (new) layer (smaller archive, slower to build and to import)")
    p.add_argument("--mtime", type=int,
                   default=int(os.environ.get("SOURCE_DATE_EPOCH", DEFAULT_MTIME)),
                   help="timestamp of every entry and of the config's 'created'")
    a = p.parse_args()
    if (a.rootfs is None) == (a.base is None):
        sys.exit("mkoci: give exactly one of --rootfs DIR and --base ARCHIVE")
    if a.whiteout and a.base is None:
        sys.exit("mkoci: --whiteout needs --base")
    if a.base is not None:
        from_base(a)
    else:
        from_rootfs(a)


if __name__ == "__main__":
    main()
