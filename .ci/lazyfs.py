#!/usr/bin/env python3
"""A power-cut model as a FUSE file system (the LazyFS model), for .ci/powercut.py.

usage: lazyfs.py SOURCE MOUNTPOINT DUMP [--cut-at KIND:N] [--ignore-sync data|dir|all]

Serves a copy of the directory SOURCE, held in memory, at MOUNTPOINT. Two states are kept:
- the volatile state, which every operation sees and changes (what the page cache holds);
- the durable state, which only syncs change: fsync or fdatasync of a file copies its content
  (both count alike; neither makes the file's directory entry durable), fsync of a directory
  copies its set of entries (create, rename, unlink, mkdir, rmdir since its last fsync).

The cut: on `stat MOUNTPOINT/.powercut` (the driver's random cut) or at the Nth event of KIND
counted from `stat MOUNTPOINT/.powercut-arm` (a targeted cut, see EVENT KINDS), the durable state is frozen and written out as a plain
directory tree to DUMP, then DUMP.json is written ({"reason": ..., "events": {...}}), and every
later operation fails with EIO. What is in DUMP is what a machine that lost power at that moment
finds on its disk. The driver then kills the process under test and unmounts.

EVENT KINDS are OP:CLASS, OP one of write (write or truncate), sync (fsync/fdatasync of a
file), syncdir, create, mkdir, rename, unlink; CLASS the file's role in outpost's data
directory: db, conf, body (bodies/*), blob (blobs/*), snap (sled's snap.*), dir, other; for
syncdir, the directory's name (bodies, data, root...). A
targeted cut on a write happens right after the write reached the volatile state; on a sync,
instead of the sync: in both cases between a write and its sync.

--ignore-sync data|dir|all (control runs: show that the test can fail) makes file syncs,
directory syncs, or both no-ops for the durable state.

Needs fusepy (PyPI) and libfuse2. Runs until unmounted.
"""

import errno
import json
import os
import stat
import sys
import threading
import time

from fuse import FUSE, FuseOSError, Operations

TRIGGER = "/.powercut"
ARM = "/.powercut-arm"


class Node:
    def __init__(self, kind, mode):
        self.kind = kind  # "f", "d" or "s" (a socket: no content, never dumped)
        self.mode = mode
        now = time.time()
        self.times = [now, now, now]  # atime, mtime, ctime
        self.data = bytearray()  # volatile content
        self.durable = bytearray()  # durable content
        self.dirty = []  # (offset, length) written since the last sync
        self.entries = {}  # volatile directory entries: name -> Node
        self.durable_entries = {}  # durable directory entries


def load(path):
    st = os.lstat(path)
    if stat.S_ISDIR(st.st_mode):
        node = Node("d", st.st_mode)
        for name in sorted(os.listdir(path)):
            child = load(os.path.join(path, name))
            if child is not None:
                node.entries[name] = child
        node.durable_entries = dict(node.entries)
        return node
    if stat.S_ISREG(st.st_mode):
        node = Node("f", st.st_mode)
        with open(path, "rb") as f:
            node.data = bytearray(f.read())
        node.durable = bytearray(node.data)
        return node
    return None


def dump(node, path):
    """Writes the durable state under `node` to the real directory `path`."""
    os.makedirs(path, exist_ok=True)
    os.chmod(path, stat.S_IMODE(node.mode))
    for name, child in node.durable_entries.items():
        target = os.path.join(path, name)
        if child.kind == "d":
            dump(child, target)
        elif child.kind == "f":
            with open(target, "wb") as f:
                f.write(child.durable)
            os.chmod(target, stat.S_IMODE(child.mode))


def classify(path):
    parts = [p for p in path.split("/") if p]
    name = parts[-1] if parts else ""
    parent = parts[-2] if len(parts) > 1 else ""
    if parent == "bodies":
        return "body"
    if parent == "blobs":
        return "blob"
    if name in ("db", "conf"):
        return name
    if name.startswith("snap."):
        return "snap"
    return "other"


class LazyFs(Operations):
    def __init__(self, source, dump_dir, cut_at, ignore):
        self.root = load(source) if source else Node("d", stat.S_IFDIR | 0o755)
        self.dump_dir = dump_dir
        self.cut_kind, self.cut_n = cut_at if cut_at else (None, 0)
        self.ignore = ignore
        self.mutex = threading.RLock()
        self.dead = False
        self.events = {}
        self.armed = None  # events counted towards --cut-at, from `stat MOUNTPOINT/.powercut-arm`
        self.handles = {}  # fh -> (Node, path at open)
        self.next_fh = 1

    # -- the cut ---------------------------------------------------------------------------

    def cut(self, reason):
        if self.dead:
            return
        self.dead = True
        dump(self.root, self.dump_dir)
        with open(self.dump_dir + ".json.tmp", "w") as f:
            json.dump({"reason": reason, "events": self.events}, f)
        os.rename(self.dump_dir + ".json.tmp", self.dump_dir + ".json")

    def event(self, kind):
        """Counts an event; true if it is the one to cut at."""
        self.events[kind] = self.events.get(kind, 0) + 1
        if self.armed is None:
            return False
        n = self.armed.get(kind, 0) + 1
        self.armed[kind] = n
        return kind == self.cut_kind and n == self.cut_n

    def alive(self):
        if self.dead:
            raise FuseOSError(errno.EIO)

    # -- lookups ---------------------------------------------------------------------------

    def node(self, path):
        node = self.root
        for part in path.split("/"):
            if not part:
                continue
            if node.kind != "d" or part not in node.entries:
                raise FuseOSError(errno.ENOENT)
            node = node.entries[part]
        return node

    def parent(self, path):
        head, name = os.path.split(path.rstrip("/"))
        parent = self.node(head or "/")
        if parent.kind != "d":
            raise FuseOSError(errno.ENOTDIR)
        return parent, name

    def handle(self, path, fh):
        if fh in self.handles:
            return self.handles[fh][0]
        return self.node(path)

    def open_handle(self, node, path):
        fh = self.next_fh
        self.next_fh += 1
        self.handles[fh] = (node, path)
        return fh

    # -- metadata --------------------------------------------------------------------------

    def getattr(self, path, fh=None):
        with self.mutex:
            if path == TRIGGER:
                self.cut("random")
                raise FuseOSError(errno.ENOENT)
            if path == ARM:
                self.armed = {}
                raise FuseOSError(errno.ENOENT)
            self.alive()
            node = self.handle(path, fh)
            if node.kind == "d":
                size, nlink = 4096, 2 + sum(1 for c in node.entries.values() if c.kind == "d")
            else:
                size, nlink = len(node.data), 1
            return {
                "st_mode": node.mode,
                "st_nlink": nlink,
                "st_size": size,
                "st_uid": os.getuid(),
                "st_gid": os.getgid(),
                "st_atime": node.times[0],
                "st_mtime": node.times[1],
                "st_ctime": node.times[2],
                "st_blocks": (size + 511) // 512,
            }

    def chmod(self, path, mode):
        with self.mutex:
            self.alive()
            node = self.node(path)
            node.mode = (node.mode & ~0o7777) | (mode & 0o7777)

    def chown(self, path, uid, gid):
        with self.mutex:
            self.alive()

    def utimens(self, path, times=None):
        with self.mutex:
            self.alive()
            now = time.time()
            atime, mtime = times if times else (now, now)
            node = self.node(path)
            node.times[0], node.times[1] = atime, mtime

    def access(self, path, amode):
        with self.mutex:
            self.alive()
            self.node(path)
            return 0

    def statfs(self, path):
        return {
            "f_bsize": 4096,
            "f_frsize": 4096,
            "f_blocks": 1 << 20,
            "f_bfree": 1 << 19,
            "f_bavail": 1 << 19,
            "f_files": 1 << 20,
            "f_ffree": 1 << 19,
            "f_favail": 1 << 19,
            "f_namemax": 255,
        }

    # -- directories -----------------------------------------------------------------------

    def readdir(self, path, fh):
        with self.mutex:
            self.alive()
            node = self.node(path)
            return [".", ".."] + list(node.entries)

    def opendir(self, path):
        with self.mutex:
            self.alive()
            return self.open_handle(self.node(path), path)

    def releasedir(self, path, fh):
        with self.mutex:
            self.handles.pop(fh, None)

    def fsyncdir(self, path, datasync, fh):
        with self.mutex:
            self.alive()
            if self.event("syncdir:" + (os.path.basename(path.rstrip("/")) or "root")):
                self.cut("syncdir " + path)
                raise FuseOSError(errno.EIO)
            node = self.handle(path, fh)
            if self.ignore not in ("dir", "all"):
                node.durable_entries = dict(node.entries)
            return 0

    def add_entry(self, path, node, op):
        parent, name = self.parent(path)
        if name in parent.entries:
            raise FuseOSError(errno.EEXIST)
        parent.entries[name] = node
        if self.event(op + ":" + (classify(path) if node.kind != "d" else "dir")):
            self.cut(op + " " + path)
            raise FuseOSError(errno.EIO)

    def mkdir(self, path, mode):
        with self.mutex:
            self.alive()
            self.add_entry(path, Node("d", stat.S_IFDIR | (mode & 0o7777)), "mkdir")

    def rmdir(self, path):
        with self.mutex:
            self.alive()
            parent, name = self.parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise FuseOSError(errno.ENOENT)
            if node.kind != "d":
                raise FuseOSError(errno.ENOTDIR)
            if node.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del parent.entries[name]

    def mknod(self, path, mode, dev):
        with self.mutex:
            self.alive()
            if not stat.S_ISSOCK(mode):
                raise FuseOSError(errno.EPERM)
            self.add_entry(path, Node("s", mode), "create")

    def unlink(self, path):
        with self.mutex:
            self.alive()
            parent, name = self.parent(path)
            node = parent.entries.get(name)
            if node is None:
                raise FuseOSError(errno.ENOENT)
            if node.kind == "d":
                raise FuseOSError(errno.EISDIR)
            del parent.entries[name]
            if self.event("unlink:" + classify(path)):
                self.cut("unlink " + path)
                raise FuseOSError(errno.EIO)

    def rename(self, old, new):
        with self.mutex:
            self.alive()
            old_parent, old_name = self.parent(old)
            new_parent, new_name = self.parent(new)
            node = old_parent.entries.get(old_name)
            if node is None:
                raise FuseOSError(errno.ENOENT)
            target = new_parent.entries.get(new_name)
            if target is not None and target.kind == "d" and target.entries:
                raise FuseOSError(errno.ENOTEMPTY)
            del old_parent.entries[old_name]
            new_parent.entries[new_name] = node
            if self.event("rename:" + classify(new)):
                self.cut("rename " + old + " " + new)
                raise FuseOSError(errno.EIO)

    # -- files -----------------------------------------------------------------------------

    def create(self, path, mode, fi=None):
        with self.mutex:
            self.alive()
            node = Node("f", stat.S_IFREG | (mode & 0o7777))
            self.add_entry(path, node, "create")
            return self.open_handle(node, path)

    def open(self, path, flags):
        with self.mutex:
            self.alive()
            node = self.node(path)
            if node.kind == "d":
                raise FuseOSError(errno.EISDIR)
            return self.open_handle(node, path)

    def release(self, path, fh):
        with self.mutex:
            self.handles.pop(fh, None)
            return 0

    def flush(self, path, fh):
        with self.mutex:
            self.alive()
            return 0

    def read(self, path, size, offset, fh):
        with self.mutex:
            self.alive()
            node = self.handle(path, fh)
            return bytes(node.data[offset : offset + size])

    def write(self, path, data, offset, fh):
        with self.mutex:
            self.alive()
            node = self.handle(path, fh)
            end = offset + len(data)
            if end > len(node.data):
                node.data.extend(bytes(end - len(node.data)))
            node.data[offset:end] = data
            node.dirty.append((offset, len(data)))
            node.times[1] = time.time()
            if self.event("write:" + classify(self.path_of(path, fh))):
                self.cut("write " + self.path_of(path, fh))
                raise FuseOSError(errno.EIO)
            return len(data)

    def truncate(self, path, length, fh=None):
        with self.mutex:
            self.alive()
            node = self.handle(path, fh)
            old = len(node.data)
            if length < old:
                del node.data[length:]
            else:
                node.data.extend(bytes(length - old))
            node.dirty.append((min(old, length), abs(old - length)))
            if self.event("write:" + classify(self.path_of(path, fh))):
                self.cut("truncate " + self.path_of(path, fh))
                raise FuseOSError(errno.EIO)

    def fsync(self, path, datasync, fh):
        with self.mutex:
            self.alive()
            node = self.handle(path, fh)
            if self.event("sync:" + classify(self.path_of(path, fh))):
                self.cut("sync " + self.path_of(path, fh))
                raise FuseOSError(errno.EIO)
            if self.ignore not in ("data", "all"):
                sync_file(node)
            return 0

    def path_of(self, path, fh):
        if path:
            return path
        return self.handles.get(fh, (None, ""))[1]


def sync_file(node):
    """Makes the volatile content of `node` durable, copying only what was written."""
    size = len(node.data)
    if len(node.durable) > size:
        del node.durable[size:]
    elif len(node.durable) < size:
        node.durable.extend(node.data[len(node.durable) :])
    for offset, length in node.dirty:
        end = min(offset + length, size)
        if offset < end:
            node.durable[offset:end] = node.data[offset:end]
    node.dirty = []


def main(argv):
    args, cut_at, ignore = [], None, None
    i = 0
    while i < len(argv):
        if argv[i] == "--cut-at":
            kind, n = argv[i + 1].rsplit(":", 1)
            cut_at = (kind, int(n))
            i += 2
        elif argv[i] == "--ignore-sync":
            ignore = argv[i + 1]
            i += 2
        else:
            args.append(argv[i])
            i += 1
    if len(args) != 3:
        sys.exit(__doc__)
    source, mountpoint, dump_dir = args
    fs = LazyFs(source if source != "-" else None, dump_dir, cut_at, ignore)
    FUSE(fs, mountpoint, foreground=True, nothreads=False, big_writes=True, attr_timeout=0,
         entry_timeout=0, negative_timeout=0)


if __name__ == "__main__":
    main(sys.argv[1:])
