"""Object storage (any S3 API: MinIO, LocalStack, AWS S3) behind a narrow interface.

Every boto3 failure is wrapped here, once, as ``StorageError``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import lru_cache
from typing import IO, Any

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError

from shared.core.errors import StorageError
from shared.core.settings import StorageSettings

#: Parts of 8 MiB keep a 1 GB upload at a few parts in memory at a time.
_MULTIPART_CHUNK = 8 * 1024 * 1024
#: Pieces an object is relayed to a client in (``BlobStore.stream``).
_STREAM_CHUNK = 256 * 1024


def audio_key(key_id: str, job_id: str) -> str:
    """Where a job's audio lives: derived from ids only, never from a client's filename."""
    return f"audio/{key_id}/{job_id}"


def speakers_key(key_id: str, job_id: str) -> str:
    """Where a job's known speakers' clips live (shared.jobs.known_speakers), while it runs."""
    return f"speakers/{key_id}/{job_id}.json"


def result_key(key_id: str, job_id: str) -> str:
    """Where a job's canonical result JSON lives."""
    return f"results/{key_id}/{job_id}.json"


@lru_cache(maxsize=8)
def _client(settings: StorageSettings, attempts: int, timeout: float | None) -> Any:
    return boto3.client(
        "s3",
        endpoint_url=settings.s3_endpoint_url,
        region_name=settings.aws_region,
        aws_access_key_id=settings.aws_access_key_id,
        aws_secret_access_key=settings.aws_secret_access_key,
        config=Config(
            connect_timeout=timeout or 5,
            read_timeout=timeout or 30,
            retries={"total_max_attempts": attempts, "mode": "standard"},
            s3={"addressing_style": "path"},
            # SigV4 everywhere, presigned upload URLs included (SigV2 is refused by newer regions).
            signature_version="s3v4",
        ),
    )


@contextmanager
def _wrapped(action: str) -> Iterator[None]:
    try:
        yield
    except (BotoCoreError, ClientError) as exc:
        raise StorageError(f"storage failed to {action}: {exc}") from exc


@dataclass(frozen=True)
class ObjectInfo:
    etag: str  # without the quotes S3 puts around it, as bucket notifications carry it
    size: int


class BlobStore:
    """The few operations the service needs from a bucket (``S3_BUCKET`` unless told)."""

    def __init__(
        self,
        settings: StorageSettings,
        bucket: str | None = None,
        *,
        attempts: int = 3,
        timeout: float | None = None,
    ) -> None:
        """``attempts``: tries per call (botocore's retries); the worker uses 1, as its queue
        already retries a job whose storage is down (one retry layer, not two), and so does the
        request path, which cannot wait. ``timeout``: connect and read timeout of each try
        (the request path: ``STORAGE_TIMEOUT_SECONDS``; None: 5 s and 30 s)."""
        self._s3 = _client(settings, attempts, timeout)
        self._settings = settings
        self.bucket = bucket or settings.s3_bucket

    def upload(self, key: str, fileobj: IO[bytes], content_type: str) -> None:
        from boto3.s3.transfer import TransferConfig

        # One part in memory at a time, sent from the request's own thread: s3transfer's default
        # reads up to 10 parts ahead (80 MiB) on a fresh thread pool per upload, and malloc
        # kept that memory in each new thread's arena (+95 MiB per 250 MB upload, ratcheting).
        config = TransferConfig(multipart_chunksize=_MULTIPART_CHUNK, use_threads=False)
        with _wrapped(f"store {key}"):
            self._s3.upload_fileobj(
                fileobj, self.bucket, key, Config=config, ExtraArgs={"ContentType": content_type}
            )

    def put_bytes(self, key: str, data: bytes, content_type: str) -> None:
        with _wrapped(f"store {key}"):
            self._s3.put_object(Bucket=self.bucket, Key=key, Body=data, ContentType=content_type)

    def get_bytes(self, key: str) -> bytes:
        with _wrapped(f"read {key}"):
            body: bytes = self._s3.get_object(Bucket=self.bucket, Key=key)["Body"].read()
            return body

    def stream(self, key: str) -> tuple[Iterator[bytes], int, str]:
        """The object's bytes in pieces, its size and content type; None of it is held whole."""
        with _wrapped(f"read {key}"):
            got = self._s3.get_object(Bucket=self.bucket, Key=key)
        body = got["Body"]
        return body.iter_chunks(_STREAM_CHUNK), int(got["ContentLength"]), str(got.get("ContentType") or "")

    def download(self, key: str, path: str) -> None:
        with _wrapped(f"read {key}"):
            self._s3.download_file(self.bucket, key, path)

    def exists(self, key: str) -> bool:
        return self.head(key) is not None

    def head(self, key: str) -> ObjectInfo | None:
        """The object's etag and size, or None when there is no such object."""
        try:
            meta = self._s3.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") in ("404", "NoSuchKey", "NotFound"):
                return None
            raise StorageError(f"storage failed to check {key}: {exc}") from exc
        except BotoCoreError as exc:
            raise StorageError(f"storage failed to check {key}: {exc}") from exc
        return ObjectInfo(str(meta["ETag"]).strip('"'), int(meta["ContentLength"]))

    def presigned_put(self, key: str, expires_in: int) -> str:
        """A URL a client can PUT the object to directly, valid ``expires_in`` seconds.

        Signed for ``S3_PUBLIC_ENDPOINT_URL`` when set: the address clients reach storage at
        can differ from the one the service uses (``http://minio:9000`` inside compose)."""
        public = self._settings.s3_public_endpoint_url
        client = (
            _client(self._settings.model_copy(update={"s3_endpoint_url": public}), 3, None)
            if public
            else self._s3
        )
        with _wrapped(f"sign an upload URL for {key}"):
            url: str = client.generate_presigned_url(
                "put_object", Params={"Bucket": self.bucket, "Key": key}, ExpiresIn=expires_in
            )
        return url

    def delete(self, *keys: str) -> None:
        if not keys:
            return
        with _wrapped("delete objects"):
            self._s3.delete_objects(
                Bucket=self.bucket, Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True}
            )

    def listing(self, prefix: str) -> Iterator[tuple[str, int, float]]:
        """Every object under ``prefix``: (key, size, when last modified as unix time)."""
        with _wrapped(f"list {prefix}"):
            for page in self._s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=prefix):
                for item in page.get("Contents", []):
                    yield item["Key"], int(item["Size"]), item["LastModified"].timestamp()

    def check(self) -> None:
        """Raise StorageError unless the bucket is reachable."""
        with _wrapped(f"reach bucket {self.bucket}"):
            self._s3.head_bucket(Bucket=self.bucket)

    #: The id of the expiry rule ``expire_after`` keeps on a bucket (other rules are left alone).
    EXPIRY_RULE = "whisper-api-expiry"

    def expire_after(self, days: int) -> None:
        """Keep a lifecycle rule on the bucket that deletes every object ``days`` after it was
        written (the inbox: uploads nobody turned into a job); other rules stay as they are."""
        try:
            rules = self._s3.get_bucket_lifecycle_configuration(Bucket=self.bucket)["Rules"]
        except ClientError as exc:
            if exc.response.get("Error", {}).get("Code") != "NoSuchLifecycleConfiguration":
                raise StorageError(f"storage failed to read the lifecycle of {self.bucket}: {exc}") from exc
            rules = []
        except BotoCoreError as exc:
            raise StorageError(f"storage failed to read the lifecycle of {self.bucket}: {exc}") from exc
        ours = {
            "ID": self.EXPIRY_RULE,
            "Status": "Enabled",
            "Filter": {"Prefix": ""},
            "Expiration": {"Days": days},
        }
        kept = [rule for rule in rules if rule.get("ID") != self.EXPIRY_RULE]
        with _wrapped(f"set the lifecycle of bucket {self.bucket}"):
            self._s3.put_bucket_lifecycle_configuration(
                Bucket=self.bucket, LifecycleConfiguration={"Rules": [*kept, ours]}
            )

    def ensure_bucket(self) -> None:
        """Create the bucket if it is missing (local runs and tests)."""
        try:
            self._s3.head_bucket(Bucket=self.bucket)
        except ClientError:
            with _wrapped(f"create bucket {self.bucket}"):
                self._s3.create_bucket(Bucket=self.bucket)
