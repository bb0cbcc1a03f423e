"""Blob storage behind one interface: Azure Blob (Azurite locally) or a local folder."""

from __future__ import annotations

import io
import os
import re
import shutil
from abc import ABC, abstractmethod
from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from functools import lru_cache
from pathlib import Path
from typing import Any, BinaryIO

from config import get_settings
from infrastructure.memory import release_free_memory

CONTAINER_RE = re.compile(r"^[a-z0-9](?:[a-z0-9]|-(?=[a-z0-9])){2,62}$")


class UnsafeBlobName(ValueError):
    """A blob or container name that could escape its container or confuse storage."""


def check_container_name(name: str) -> str:
    if not isinstance(name, str) or not CONTAINER_RE.match(name):
        raise UnsafeBlobName(
            f"container_name {name!r} is not a valid container name "
            "(3-63 characters: lowercase letters, digits and single hyphens)"
        )
    return name


def check_blob_name(name: str) -> str:
    """Blob names are relative paths with no traversal, control characters or backslashes."""
    if not isinstance(name, str) or not name.strip():
        raise UnsafeBlobName("blob_name must be a non-empty string")
    if len(name) > 1024:
        raise UnsafeBlobName("blob_name is longer than 1024 characters")
    if any(ord(c) < 32 or ord(c) == 127 for c in name) or "\\" in name:
        raise UnsafeBlobName("blob_name contains control characters or backslashes")
    if name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UnsafeBlobName("blob_name must be relative to its container, not an absolute path")
    if any(part in ("..", ".") for part in name.split("/")):
        raise UnsafeBlobName("blob_name must not contain '.' or '..' path segments")
    return name


class BlobChanged(Exception):
    """A blob read in parts was replaced (or deleted) after the version the reader planned from."""

    def __init__(self, name: str, deleted: bool) -> None:
        super().__init__(f"blob '{name}' was {'deleted' if deleted else 'replaced'}")
        self.name, self.deleted = name, deleted

    def for_user(self, shown: str) -> str:
        """What a job that was reading the file reports (`shown`: the name the user gave)."""
        state = "was deleted" if self.deleted else "was replaced"
        return f"file '{shown}' {state} while the job was loading it; submit the job again"


class BlobStore(ABC):
    backend: str

    @abstractmethod
    def container_exists(self, container: str) -> bool: ...

    @abstractmethod
    def create_container(self, container: str) -> None:
        """Create the container when missing."""

    @abstractmethod
    def blob_size(self, container: str, name: str) -> int | None:
        """Size in bytes, or None when the blob does not exist."""

    def blob_exists(self, container: str, name: str) -> bool:
        return self.blob_size(container, name) is not None

    @abstractmethod
    def upload_file(self, container: str, name: str, path: str | Path) -> None: ...

    @abstractmethod
    def write_bytes(self, container: str, name: str, data: bytes) -> None: ...

    @abstractmethod
    def download_to_file(self, container: str, name: str, path: str | Path) -> None:
        """Stream a blob to a file; memory stays bounded whatever the size."""

    @abstractmethod
    def read_bytes(self, container: str, name: str) -> bytes: ...

    @abstractmethod
    def download_range(
        self, container: str, name: str, offset: int, length: int | None, out: BinaryIO, version: str
    ) -> None:
        """Write `length` bytes from `offset` (to the end when None) into out, only from the blob's version
        `version` (blob_version): a file read in parts by several tasks must not mix two versions. Raises
        BlobChanged when the blob was replaced or deleted since. Memory stays bounded whatever the length."""

    def read_range(self, container: str, name: str, offset: int, length: int | None, version: str) -> bytes:
        """download_range into memory: for headers and other small parts."""
        buf = io.BytesIO()
        self.download_range(container, name, offset, length, buf, version)
        return buf.getvalue()

    def open_ranges(self, container: str, name: str, size: int, version: str) -> BinaryIO:
        """The blob's version as a seekable file object whose reads are range reads (a reader that needs
        only some parts of a file, such as Parquet's footer and row groups, fetches only those)."""
        return io.BufferedReader(_Ranges(self, container, name, size, version), buffer_size=256 * 1024)

    def open_stream(self, container: str, name: str, size: int, version: str) -> BinaryIO:
        """The blob's version front to back as a file object, its ranges fetched ahead by two threads:
        a reader that scans while the file arrives, holding a few ranges in memory, never the file."""
        return io.BufferedReader(_ReadAhead(self, container, name, size, version))

    @abstractmethod
    def gdal_access(self, container: str, name: str) -> tuple[str, dict[str, str]]:
        """A path GDAL reads in place with range requests, and the GDAL options that path needs: random-access
        formats (GeoPackage) are read slice by slice without downloading the whole file."""

    @abstractmethod
    def blob_version(self, container: str, name: str) -> str | None:
        """Changes whenever the blob's content is replaced (None when it is gone): readers of parts of one file
        check that every part came from the same version."""

    @abstractmethod
    def delete_prefix(self, container: str, prefix: str) -> int:
        """Delete every blob under prefix; returns how many."""

    @abstractmethod
    def health(self) -> dict[str, Any]: ...


class _Ranges(io.RawIOBase):
    def __init__(self, store: BlobStore, container: str, name: str, size: int, version: str) -> None:
        self._store, self._args, self._size, self._at = store, (container, name, version), size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._at, io.SEEK_END: self._size}[whence]
        self._at = max(0, base + offset)
        return self._at

    def tell(self) -> int:
        return self._at

    def readinto(self, b: Any) -> int:
        n = min(len(b), self._size - self._at)
        if n <= 0:
            return 0
        container, name, version = self._args
        data = self._store.read_range(container, name, self._at, n, version)
        b[: len(data)] = data
        self._at += len(data)
        return len(data)


class _ReadAhead(io.RawIOBase):
    STEP = 4 * 1024 * 1024
    AHEAD = 2

    def __init__(self, store: BlobStore, container: str, name: str, size: int, version: str) -> None:
        self._pool = ThreadPoolExecutor(max_workers=self.AHEAD, thread_name_prefix="blob-read-ahead")
        self._offsets = iter(range(0, size, self.STEP))
        self._ranges: deque[Future[bytes]] = deque()
        self._args = (container, name, size, version)
        self._store = store
        self._current, self._at = b"", 0
        for _ in range(self.AHEAD):
            self._fetch_next()

    def _fetch_next(self) -> None:
        offset = next(self._offsets, None)
        if offset is not None:
            container, name, size, version = self._args
            length = min(self.STEP, size - offset)
            self._ranges.append(self._pool.submit(self._store.read_range, container, name, offset, length, version))

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        if self._at == len(self._current):
            if not self._ranges:
                return 0
            self._current, self._at = self._ranges.popleft().result(), 0
            self._fetch_next()
        n = min(len(b), len(self._current) - self._at)
        b[:n] = self._current[self._at : self._at + n]
        self._at += n
        return n

    def close(self) -> None:
        for future in self._ranges:
            future.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)
        super().close()


# Fail fast when the service is unreachable instead of retrying for minutes.
CLIENT_OPTIONS: dict[str, Any] = {
    "connection_timeout": 5,
    "read_timeout": 120,
    "retry_total": 3,
    "retry_backoff_max": 4,
    # Fewer, larger ranges: the SDK's 4 MiB default spends most of a big download in per-request
    # overhead (a 330 MB file: 3.4 s at 4 MiB x 2 streams, 1.2-1.9 s at 16 MiB x 2, 1.4 s at 16 MiB x 4,
    # against Azurite). Two streams, because the ranges in flight count in the worker's memory: a
    # GeoJSON ingest peaked at 400 MB with four, 340 MB with two.
    # Uploads keep the SDK's 4 MiB blocks (16 MiB uploaded a 330 MB file in 2.7 s instead of 3.4 s, but
    # upload time is the client's, and the block size made no measurable difference to range reads).
    "max_chunk_get_size": 16 * 1024**2,
}
TRANSFER_STREAMS = 2


class AzureBlobStore(BlobStore):
    backend = "azure"

    def __init__(self, connection_string: str = "", account_url: str = "") -> None:
        from azure.storage.blob import BlobServiceClient

        self.connection_string, self.account_url = connection_string, account_url
        if account_url:
            from azure.identity import DefaultAzureCredential  # type: ignore[import-not-found]

            self.client = BlobServiceClient(account_url, credential=DefaultAzureCredential(), **CLIENT_OPTIONS)
        else:
            self.client = BlobServiceClient.from_connection_string(connection_string, **CLIENT_OPTIONS)

    def container_exists(self, container: str) -> bool:
        return bool(self.client.get_container_client(check_container_name(container)).exists())

    def create_container(self, container: str) -> None:
        from azure.core.exceptions import ResourceExistsError

        try:
            self.client.create_container(check_container_name(container))
        except ResourceExistsError:
            pass

    def _properties(self, container: str, name: str) -> Any:
        """The blob's properties, or None when it does not exist."""
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return self.client.get_blob_client(container, check_blob_name(name)).get_blob_properties()
        except ResourceNotFoundError:
            return None

    def blob_size(self, container: str, name: str) -> int | None:
        props = self._properties(container, name)
        return None if props is None else int(props.size)

    def upload_file(self, container: str, name: str, path: str | Path) -> None:
        with open(path, "rb") as f:
            self.client.get_blob_client(container, check_blob_name(name)).upload_blob(
                f, overwrite=True, max_concurrency=TRANSFER_STREAMS
            )

    def write_bytes(self, container: str, name: str, data: bytes) -> None:
        self.client.get_blob_client(container, check_blob_name(name)).upload_blob(data, overwrite=True)

    def download_to_file(self, container: str, name: str, path: str | Path) -> None:
        blob = self.client.get_blob_client(container, check_blob_name(name))
        downloader = blob.download_blob(max_concurrency=TRANSFER_STREAMS)
        with open(path, "wb") as f:
            downloader.readinto(f)
        del downloader
        release_free_memory()  # the streams' range buffers (~64 MB) would otherwise stay in the worker's heap

    def read_bytes(self, container: str, name: str) -> bytes:
        return bytes(self.client.get_blob_client(container, check_blob_name(name)).download_blob().readall())

    def download_range(
        self, container: str, name: str, offset: int, length: int | None, out: BinaryIO, version: str
    ) -> None:
        from azure.core import MatchConditions
        from azure.core.exceptions import ResourceModifiedError, ResourceNotFoundError

        if length == 0:
            return
        blob = self.client.get_blob_client(container, check_blob_name(name))
        try:  # If-Match on every range request: the service answers 412 once the blob was replaced
            downloader = blob.download_blob(
                offset=offset,
                length=length,
                etag=version,
                match_condition=MatchConditions.IfNotModified,
                max_concurrency=TRANSFER_STREAMS,
            )
            downloader.readinto(out)
        except ResourceModifiedError:
            raise BlobChanged(name, deleted=False) from None
        except ResourceNotFoundError:
            raise BlobChanged(name, deleted=True) from None

    def gdal_access(self, container: str, name: str) -> tuple[str, dict[str, str]]:
        return f"/vsiaz/{check_container_name(container)}/{check_blob_name(name)}", self._gdal_options

    @property
    def _gdal_options(self) -> dict[str, str]:
        if self.account_url:  # managed identity: GDAL asks the instance metadata service for a token
            account = self.account_url.split("//", 1)[-1].split(".", 1)[0]
            return {"AZURE_STORAGE_ACCOUNT": account}
        return {"AZURE_STORAGE_CONNECTION_STRING": self.connection_string}

    def blob_version(self, container: str, name: str) -> str | None:
        props = self._properties(container, name)
        return None if props is None else str(props.etag)

    def delete_prefix(self, container: str, prefix: str) -> int:
        cc = self.client.get_container_client(container)
        if not cc.exists():
            return 0
        names = [b.name for b in cc.list_blobs(name_starts_with=prefix)]
        for i in range(0, len(names), 256):
            cc.delete_blobs(*names[i : i + 256])
        return len(names)

    def health(self) -> dict[str, Any]:
        info = self.client.get_account_information(retry_total=0, connection_timeout=3)
        return {"backend": self.backend, "account_kind": info.get("account_kind"), "url": self.client.url}


class LocalBlobStore(BlobStore):
    """Containers are folders under root; names that would escape root are refused."""

    backend = "local"

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()
        self.root.mkdir(parents=True, exist_ok=True)

    def _container(self, container: str) -> Path:
        return self.root / check_container_name(container)

    def _path(self, container: str, name: str) -> Path:
        base = self._container(container).resolve()
        p = (base / check_blob_name(name)).resolve()
        if base not in p.parents:
            raise UnsafeBlobName(f"blob_name {name!r} escapes its container")
        return p

    def container_exists(self, container: str) -> bool:
        return self._container(container).is_dir()

    def create_container(self, container: str) -> None:
        self._container(container).mkdir(parents=True, exist_ok=True)

    def blob_size(self, container: str, name: str) -> int | None:
        p = self._path(container, name)
        return p.stat().st_size if p.is_file() else None

    def upload_file(self, container: str, name: str, path: str | Path) -> None:
        dest = self._path(container, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        shutil.copyfile(path, tmp)
        os.replace(tmp, dest)

    def write_bytes(self, container: str, name: str, data: bytes) -> None:
        dest = self._path(container, name)
        dest.parent.mkdir(parents=True, exist_ok=True)
        tmp = dest.with_name(dest.name + ".part")
        tmp.write_bytes(data)
        os.replace(tmp, dest)

    def download_to_file(self, container: str, name: str, path: str | Path) -> None:
        shutil.copyfile(self._path(container, name), path)

    def read_bytes(self, container: str, name: str) -> bytes:
        return self._path(container, name).read_bytes()

    def download_range(
        self, container: str, name: str, offset: int, length: int | None, out: BinaryIO, version: str
    ) -> None:
        """The version is checked before and after the read: a file replaced in between is refused."""
        path = self._path(container, name)
        now = self.blob_version(container, name)
        if now != version:
            raise BlobChanged(name, deleted=now is None)
        with open(path, "rb") as f:
            f.seek(offset)
            left = length
            while left is None or left > 0:
                block = f.read(4 * 1024**2 if left is None else min(left, 4 * 1024**2))
                if not block:
                    break
                out.write(block)
                if left is not None:
                    left -= len(block)
        now = self.blob_version(container, name)
        if now != version:
            raise BlobChanged(name, deleted=now is None)

    def gdal_access(self, container: str, name: str) -> tuple[str, dict[str, str]]:
        return str(self._path(container, name)), {}

    def blob_version(self, container: str, name: str) -> str | None:
        p = self._path(container, name)
        if not p.is_file():
            return None
        st = p.stat()
        return f"{st.st_mtime_ns}-{st.st_size}-{st.st_ino}"

    def delete_prefix(self, container: str, prefix: str) -> int:
        base = self._container(container)
        if not base.is_dir():
            return 0
        count = 0
        for p in list(base.rglob("*")):
            rel = p.relative_to(base).as_posix()
            if p.is_file() and rel.startswith(prefix):
                p.unlink()
                count += 1
        return count

    def health(self) -> dict[str, Any]:
        return {"backend": self.backend, "root": str(self.root), "writable": os.access(self.root, os.W_OK)}


@lru_cache(maxsize=1)
def get_blob_store() -> BlobStore:
    s = get_settings()
    if s.blob_backend == "local":
        return LocalBlobStore(s.local_blob_root)
    return AzureBlobStore(s.azure_storage_connection_string.get_secret_value(), s.azure_storage_account_url)
