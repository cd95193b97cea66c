"""Clients for the data a node declares: FHIR REST servers, S3 buckets, local directories.

They know nothing of the node configuration (see :mod:`fedgrpc.flame.datasources`, which makes
them from it and reads the secrets), so they can also be used on their own.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any, cast

import grpc

from fedgrpc.errors import FedgrpcError

__all__ = ["DataClient", "DataSourceError", "FhirClient", "FilesClient", "S3Client"]

_CSV_SUFFIXES = (".csv", ".tsv")


class DataSourceError(FedgrpcError):
    """A data source answered with an error or could not be reached; names where and why."""

    def __init__(
        self, message: str, *, code: grpc.StatusCode, location: str, status: int | None = None
    ) -> None:
        super().__init__(message, code=code)
        self.location = location
        self.status = status


def _origin(url: str) -> tuple[str, str]:
    parts = urllib.parse.urlsplit(url)
    return parts.scheme, parts.netloc.lower()


class _SameOriginRedirects(urllib.request.HTTPRedirectHandler):
    """urllib copies every header, the bearer token included, onto any redirect: not across
    origins. Returning None turns such a redirect into an HTTPError we report."""

    def redirect_request(
        self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any, newurl: str
    ) -> urllib.request.Request | None:
        if _origin(newurl) != _origin(req.full_url):
            return None
        return super().redirect_request(req, fp, code, msg, headers, newurl)


_HTTP_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
}


class FhirClient:
    """A small synchronous FHIR REST client: ``get(query)`` with Bundle paging merged."""

    def __init__(
        self,
        base_url: str,
        *,
        token: str | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        max_pages: int = 1000,
        token_hint: str = "",
    ) -> None:
        self.base_url = base_url.rstrip("/") + "/"
        self._headers = {"Accept": "application/fhir+json", **(headers or {})}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self.timeout = timeout
        self.max_pages = max_pages
        self._token_hint = token_hint
        self._opener = urllib.request.build_opener(_SameOriginRedirects())

    def get(self, query: str) -> dict[str, Any]:
        """The resource or Bundle for ``query`` (e.g. ``Patient?_summary=count``); a paged Bundle
        comes back as one Bundle holding the entries of every page."""
        url = urllib.parse.urljoin(self.base_url, query.lstrip("/"))
        first = self._fetch(url)
        bundle, seen, pages = first, {url}, 1
        while (next_url := _next_link(bundle)) is not None:
            next_url = urllib.parse.urljoin(url, next_url)
            if next_url in seen:
                break  # a server that pages in a circle: what we have is all there is
            if pages >= self.max_pages:
                raise self._error(f"more than {self.max_pages} pages", next_url, None)
            seen.add(next_url)
            bundle = self._fetch(next_url)
            pages += 1
            first.setdefault("entry", []).extend(bundle.get("entry") or [])
        if pages > 1:
            first["link"] = [
                link for link in first.get("link", []) if link.get("relation") != "next"
            ]
        return first

    def _fetch(self, url: str) -> dict[str, Any]:
        if _origin(url) != _origin(self.base_url):
            # A proxied server often advertises its internal address in next links; never
            # send the token there.
            raise self._error(
                f"refusing to follow a link to another server; base is {self.base_url}", url, None
            )
        request = urllib.request.Request(url, headers=self._headers)
        try:
            with self._opener.open(request, timeout=self.timeout) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:
            raise self._http_error(exc, url) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise self._error(f"cannot reach the server: {reason}", url, None) from None
        try:
            data = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise self._error("answer is not JSON", url, None, grpc.StatusCode.DATA_LOSS) from None
        if not isinstance(data, dict):
            raise self._error("answer is not a FHIR resource", url, None, grpc.StatusCode.DATA_LOSS)
        return data

    def _http_error(self, exc: urllib.error.HTTPError, url: str) -> DataSourceError:
        detail = f"HTTP {exc.code} {exc.reason}"
        try:  # a FHIR server explains itself in an OperationOutcome
            issues = json.loads(exc.read()).get("issue", [])
            texts = [i.get("diagnostics") for i in issues if i.get("diagnostics")]
            if texts:
                detail += f": {'; '.join(texts)[:300]}"
        except Exception:
            pass
        if exc.code in (401, 403):
            detail += f" (check {self._token_hint})" if self._token_hint else ""
        if 300 <= exc.code < 400:
            detail += " (redirect to another server not followed)"
        code = _HTTP_CODES.get(
            exc.code,
            grpc.StatusCode.UNAVAILABLE if exc.code >= 500 else grpc.StatusCode.FAILED_PRECONDITION,
        )
        return self._error(detail, url, exc.code, code)

    @staticmethod
    def _error(
        detail: str,
        url: str,
        status: int | None,
        code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE,
    ) -> DataSourceError:
        return DataSourceError(
            f"FHIR GET {url} failed: {detail}", code=code, location=url, status=status
        )


def _next_link(bundle: Mapping[str, Any]) -> str | None:
    if bundle.get("resourceType") != "Bundle":
        return None
    for link in bundle.get("link") or []:
        if isinstance(link, Mapping) and link.get("relation") == "next" and link.get("url"):
            return str(link["url"])
    return None


class FilesClient:
    """Read access to a csv/files directory; dataset names are paths relative to it."""

    def __init__(self, root: Path, *, source_id: str = "", csv_only: bool = False) -> None:
        self.root = Path(root)
        self.source_id = source_id or str(root)
        self.csv_only = csv_only

    def _is_dataset(self, path: Path) -> bool:
        relative = path.relative_to(self.root)
        if any(part.startswith(".") for part in relative.parts) or not path.is_file():
            return False  # hidden files (.DS_Store, editor swap files) are not datasets
        if self.csv_only and path.suffix.lower() not in _CSV_SUFFIXES:
            return False
        # A symlink out of the data directory would expose what was never declared.
        return path.resolve().is_relative_to(self.root.resolve())

    def list_datasets(self) -> list[str]:
        if not self.root.is_dir():
            raise DataSourceError(
                f"data source {self.source_id!r}: directory {self.root} does not exist",
                code=grpc.StatusCode.FAILED_PRECONDITION,
                location=str(self.root),
            )
        paths = sorted(p for p in self.root.rglob("*") if self._is_dataset(p))
        return [p.relative_to(self.root).as_posix() for p in paths]

    def get(self, name: str) -> bytes:
        path = self.root / name
        # Names with ".." or absolute paths never leave the directory: they are not datasets.
        parts = Path(name).parts
        if Path(name).is_absolute() or ".." in parts or not parts or not self._is_dataset(path):
            raise DataSourceError(
                f"data source {self.source_id!r} has no dataset {name!r}",
                code=grpc.StatusCode.NOT_FOUND,
                location=str(path),
            )
        return path.read_bytes()


class S3Client:
    """An S3 bucket (prefix) through boto3; ``.boto`` is the boto3 client for anything else."""

    def __init__(
        self,
        bucket: str,
        *,
        prefix: str = "",
        endpoint_url: str | None = None,
        region: str | None = None,
        access_key: str | None = None,
        secret_key: str | None = None,
        timeout: float = 30.0,
    ) -> None:
        try:
            import boto3
            from botocore.config import Config
        except ImportError:
            raise FedgrpcError(
                "S3 data sources need boto3: pip install 'fedgrpc[s3]'",
                code=grpc.StatusCode.FAILED_PRECONDITION,
            ) from None
        self.bucket = bucket
        self.prefix = prefix
        # Without explicit keys boto3 uses its standard chain (AWS_* variables, instance role).
        credentials = (
            {"aws_access_key_id": access_key, "aws_secret_access_key": secret_key}
            if access_key
            else {}
        )
        config = Config(
            connect_timeout=timeout,
            read_timeout=timeout,
            retries={"max_attempts": 3, "mode": "standard"},
            # MinIO, Ceph and moto serve buckets under the path, not as a subdomain.
            s3={"addressing_style": "path" if endpoint_url else "auto"},
        )
        self.boto: Any = boto3.session.Session().client(
            "s3",
            endpoint_url=endpoint_url,
            region_name=region,
            config=config,
            **credentials,
        )

    def _call(self, what: str, key: str, fn: Any, **kwargs: Any) -> Any:
        from botocore.exceptions import BotoCoreError, ClientError

        location = f"s3://{self.bucket}/{key}"
        try:
            return fn(Bucket=self.bucket, **kwargs)
        except ClientError as exc:
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = _HTTP_CODES.get(status or 0, grpc.StatusCode.UNAVAILABLE)
            message = f"S3 {what} {location} failed: {error.get('Code')} {error.get('Message', '')}"
            raise DataSourceError(
                message.strip(), code=code, location=location, status=status
            ) from None
        except BotoCoreError as exc:
            raise DataSourceError(
                f"S3 {what} {location} failed: {exc}",
                code=grpc.StatusCode.UNAVAILABLE,
                location=location,
            ) from None

    def list_datasets(self) -> list[str]:
        names: list[str] = []
        token: str | None = None
        while True:
            extra = {"ContinuationToken": token} if token else {}
            page = self._call(
                "list", self.prefix, self.boto.list_objects_v2, Prefix=self.prefix, **extra
            )
            names += [
                o["Key"][len(self.prefix) :]
                for o in page.get("Contents", [])
                if not o["Key"].endswith("/")
            ]
            if not page.get("IsTruncated"):
                return names
            token = page["NextContinuationToken"]

    def get(self, name: str) -> bytes:
        key = self.prefix + name
        body = self._call("get", key, self.boto.get_object, Key=key)["Body"]
        try:
            return cast(bytes, body.read())
        finally:
            body.close()


DataClient = FhirClient | S3Client | FilesClient
