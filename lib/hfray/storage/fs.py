"""Files and folders by local path or URI (``s3://...``, ``gs://...``), through ``pyarrow.fs`` as Ray Train does."""

from __future__ import annotations

import os
import shutil

import pyarrow.fs as pafs

_URI_SCHEMES = {"gcs": "gs"}  # pyarrow's type_name -> URI scheme, where they differ


def is_uri(path: str) -> bool:
    return "://" in path


def normalize(path: str) -> str:
    """Ray wants an absolute local path or a URI."""
    if is_uri(path):
        return path.rstrip("/")
    return os.path.abspath(os.path.expanduser(path))


def join(base: str, *parts: str) -> str:
    return "/".join([base.rstrip("/"), *parts])


def filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """The pyarrow filesystem of a path or URI, and the path inside it."""
    if is_uri(uri):
        return pafs.FileSystem.from_uri(uri)
    return pafs.LocalFileSystem(), uri


def uri_of(fs: pafs.FileSystem, path: str) -> str:
    """A URI for a (filesystem, path) pair, e.g. a Ray checkpoint's, that these helpers can open again."""
    kind = fs.type_name
    if kind == "local":
        return path
    return f"{_URI_SCHEMES.get(kind, kind)}://{path.lstrip('/')}"


def exists(uri: str) -> bool:
    fs, path = filesystem(uri)
    return fs.get_file_info(path).type != pafs.FileType.NotFound


def read_bytes(uri: str) -> bytes:
    fs, path = filesystem(uri)
    with fs.open_input_stream(path) as stream:
        return stream.read()


def read_text(uri: str) -> str:
    return read_bytes(uri).decode()


def write_text(uri: str, text: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path.rsplit("/", 1)[0], recursive=True)
    with fs.open_output_stream(path) as stream:
        stream.write(text.encode())


def remove_tree(uri: str) -> None:
    """Delete a folder (local or URI) and everything in it; a missing one is fine."""
    fs, path = filesystem(uri)
    if fs.get_file_info(path).type != pafs.FileType.NotFound:
        fs.delete_dir(path)


def upload_dir(local: str, uri: str) -> None:
    fs, path = filesystem(uri)
    fs.create_dir(path, recursive=True)
    pafs.copy_files(local, path, source_filesystem=pafs.LocalFileSystem(), destination_filesystem=fs)


def move_dir(local: str, uri: str) -> None:
    """``local`` becomes ``uri`` (replacing it): a rename where ``uri`` is a local path on the same filesystem (no
    bytes copied), else :func:`upload_dir` and ``local`` removed."""
    if not is_uri(uri):
        os.makedirs(os.path.dirname(uri), exist_ok=True)
        shutil.rmtree(uri, ignore_errors=True)
        try:
            os.rename(local, uri)
            return
        except OSError:  # another filesystem (EXDEV): copied below
            pass
    upload_dir(local, uri)
    shutil.rmtree(local, ignore_errors=True)


def download_dir(uri: str, local: str) -> str:
    """A local folder holding ``uri``'s files: the folder itself when it is local, else a copy in ``local``."""
    fs, path = filesystem(uri)
    if isinstance(fs, pafs.LocalFileSystem):
        return path
    os.makedirs(local, exist_ok=True)
    pafs.copy_files(path, local, source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
    return local
