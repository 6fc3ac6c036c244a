"""BLAKE3 digests of input files (model.json's record of what was fitted), started as early as the command line
knows its inputs: no numpy, so that the digest of a run runs while numpy, nibabel and scipy import.

BLAKE3 (``blake3``, the BLAKE3 team's binding of their Rust code; ``b3sum`` on the command line), not SHA-256:
on one core of the 2-core Zen 4 machine, 6.3 GB/s against 1.7 GB/s for OpenSSL's SHA-256 with the CPU's SHA
instructions. With SHA-256 an uncompressed run's digest was the longest task of its fit (a 1.65 GB .nii: 0.97 s of
hashing alone, beside a read and fit of 0.65 s); with BLAKE3 it is read and hashed in 0.55-0.6 s of CPU (0.3 s of
it the read). Both are 256-bit cryptographic hashes.

:func:`start_digests` hashes files on a side thread; :func:`file_digest` gives a file's digest, taken from one
started for the same file (same device, inode, size and modification time) or computed on the spot;
:func:`note_opened` and :func:`changed_since_opened` tell a data file written to while a run read it."""

from __future__ import annotations

import mmap
import os
import stat
import threading
from concurrent.futures import Future

import blake3

from ._threads import DaemonExecutor

__all__ = ["CHUNK", "changed_since_opened", "file_digest", "new_hash", "note_opened", "start_digests"]

CHUNK = 1 << 22  # bytes read and hashed a call
WINDOW = CHUNK  # bytes of a file mapped and hashed at a time (``mapped``): what a read holds

_started: dict[str, tuple[tuple, Future]] = {}  # real path: (the file's identity when started, its digest)
_opened: dict[str, tuple] = {}  # real path: the file's identity when a reader last opened it (note_opened)
_lock = threading.Lock()


def start_digests(paths, aside: bool, mapped: bool = False) -> None:
    """Start hashing those of `paths` that are regular files, one after another on a daemon thread (at a low
    priority with `aside`: beside a decompression, which is then the longest task; from maps of the files with
    `mapped`, see :func:`_digest_of_file`). Started as the command line
    starts rather than once the header is read (0.06-0.08 s into the process against 0.20-0.23 s): with SHA-256, a
    1.65 GB .nii's OLS fit took 1.60-1.85 s against 1.71-1.86 s (medians 1.67 and 1.79 s, 8 alternating runs); with
    BLAKE3 that fit takes as long either way (1.13-1.28 s against 1.13-1.29 s, 6 runs each), an HCP-like CIFTI fit
    0.73-0.76 s against 0.76-0.80 s (and one 0.87 s)."""
    files = []
    with _lock:
        for path in paths:
            key, identity = _identity(path)
            if identity is not None and (key not in _started or _started[key][0] != identity):
                _started[key] = (identity, Future())
                files.append((path, _started[key][1]))
    if files:
        DaemonExecutor(aside=aside).submit(_hash_into, files, mapped)


def _hash_into(files: list[tuple[str, Future]], mapped: bool) -> None:
    for path, future in files:
        try:
            future.set_result(_digest_of_file(path, mapped=mapped))
        except BaseException as exc:  # noqa: BLE001 (handed to whoever asks for the digest)
            future.set_exception(exc)


def file_digest(path, buf: memoryview | None = None) -> str:
    """The BLAKE3 digest (hex) of a regular file's bytes: the digest :func:`start_digests` started for it if the file is
    still the one it was (:func:`_identity`), else hashed now (into `buf`, when given, for
    what is read)."""
    key, identity = _identity(path)
    with _lock:
        started = _started.get(key)
    if started is not None and identity is not None and started[0] == identity:
        return started[1].result()
    return _digest_of_file(path, buf)


def note_opened(path) -> None:
    """Remember a data file's identity (:func:`_identity`) as a reader opens it, for :func:`changed_since_opened`;
    of a folder (a Zarr store), the identities of the files under it."""
    key, identity = _opened_identity(path)
    if identity is not None:
        _opened[key] = identity


def changed_since_opened(path) -> bool:
    """Whether a file :func:`note_opened` noted is no longer the one it was when last noted: written to in place
    (its size, modification or change time), replaced (another inode under its name) or removed; for a folder,
    any file under it so changed, added or removed. A run's data read from it may then mix old and new bytes, and
    its digest describe neither."""
    key, identity = _opened_identity(path)
    return key in _opened and identity != _opened[key]


def _opened_identity(path) -> tuple[str, tuple | None]:
    """A file's :func:`_identity`; a folder's :func:`_tree_identity`."""
    key, identity = _identity(path)
    if identity is None and os.path.isdir(key):
        return key, _tree_identity(key)
    return key, identity


def _tree_identity(folder: str) -> tuple:
    """Each file's (path within `folder`, device, inode, size, modification and change times), sorted; links as
    they are (a store's links are refused by its reader); voxfit's own staging folders (``.voxfit-*``: an output
    folder made inside the store) left out. A Zarr store of a few thousand chunks takes milliseconds."""
    entries = []
    for root, dirs, files in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".voxfit-")]
        for name in files:
            path = os.path.join(root, name)
            try:
                st = os.lstat(path)
            except OSError:  # (removed as it was walked: its absence is the change)
                continue
            entries.append(
                (os.path.relpath(path, folder), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
            )
    return tuple(sorted(entries))


def _identity(path) -> tuple[str, tuple | None]:
    """The real path and, for a regular file, (device, inode, size, modification and change times: a write moves
    the change time whatever the modification time is set back to, as ``touch -r`` does); None for anything else
    (a folder, a FIFO, a device, a missing or unnameable path: those are never hashed ahead)."""
    try:
        key = os.path.realpath(path)
        st = os.stat(key)
    except (OSError, TypeError, ValueError):  # (a NUL in a path given from Python: ValueError)
        return str(path), None
    if not stat.S_ISREG(st.st_mode):
        return key, None
    return key, (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def new_hash():
    """A BLAKE3 hasher on the calling thread alone (the package's default: no worker threads)."""
    return blake3.blake3()


def _digest_of_file(path, buf: memoryview | None = None, mapped: bool = False) -> str:
    """Read into one buffer, reused (at most :data:`CHUNK` bytes, less for a smaller file): a new 4 MiB bytes
    object per chunk faults its pages in each time, which slowed a thread decompressing the same file beside it by
    10%.

    With `mapped` (the command line's digests: it reads runs from maps of their files too, see
    ``voxfit.io.dataset.files_mapped``), hashed from maps of :data:`WINDOW` bytes, one at a time, instead: no
    copy. A 1.65 GB .nii took 0.39-0.40 s of CPU so against 0.57-0.58 s read (0.33 s of it the copy's system
    time), on a 2-core machine whose fit of that run has no core to spare (windows of 16 MiB: 0.38 s, but a
    process under --max-memory would hold 12 MiB more). A file cut short by another program while a window is
    hashed ends the process with SIGBUS, as one whose data are mapped (an uncompressed CIFTI run, or a NIfTI run
    with an explicit mask) does: it leaves what a killed run does, which the next run in its folder removes,
    where a read would have ended early. Where a window cannot be mapped (a file system that maps no files, a
    file cut short since its size was taken), the rest of the file is read. (On a 2-core Zen 4 machine, windows
    of 64 MiB had been no quicker than reads.)"""
    h = new_hash()
    with open(path, "rb", buffering=0) as fh:
        if mapped:
            _hash_windows(fh, h)
            if not (rest := fh.read(1)):  # (all of it hashed from maps: no buffer)
                return h.hexdigest()
            h.update(rest)
        if buf is None:  # (sized to a file: a 4 MiB buffer for each small map of a study, zeroed and faulted in
            # anew, took a third of the CPU of 200 small runs: 22 s of system time; a pipe's size says nothing)
            st = os.fstat(fh.fileno())
            left = st.st_size - fh.tell() + 1 if stat.S_ISREG(st.st_mode) else CHUNK
            buf = memoryview(bytearray(min(CHUNK, max(left, 1))))
        while got := fh.readinto(buf):
            h.update(buf[:got])
            if got == len(buf) < CHUNK:  # (more than its size said: /proc's files say 0, a file may grow)
                buf = memoryview(bytearray(CHUNK))
    return h.hexdigest()


def _hash_windows(fh, h) -> None:
    """Hash the open file `fh` into `h` from maps of :data:`WINDOW` bytes, each populated at once and unmapped
    before the next, as far as they can be made; `fh` is left at the first byte not hashed."""
    if not hasattr(mmap, "MAP_PRIVATE"):  # (no Unix mmap)
        return
    flags = mmap.MAP_PRIVATE | getattr(mmap, "MAP_POPULATE", 0)
    size, offset = os.fstat(fh.fileno()).st_size, 0
    while offset < size:
        try:
            window = mmap.mmap(fh.fileno(), min(WINDOW, size - offset), flags=flags, prot=mmap.PROT_READ, offset=offset)
        except (OSError, ValueError):  # (maps no files; cut short since: mmap's own check of the size)
            break
        with window:
            h.update(window)
            offset += len(window)
    fh.seek(offset)
