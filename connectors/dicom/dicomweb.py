"""PACS over DICOMweb (dicomweb-client): QIDO-RS search, WADO-RS retrieve, STOW-RS store.

A thin layer over ``dicomweb_client.api.DICOMwebClient`` that returns pydicom datasets, writes
retrieved series to a folder, and turns HTTP and connection errors into ``DicomWebError`` naming
the URL and the status.

Example::

    web = DicomWebStore("http://127.0.0.1:8042/dicom-web")
    for series in web.search_series(study_uid):
        web.retrieve_series(study_uid, series.SeriesInstanceUID, Path("series"))
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

import pydicom
import requests
from pydicom.dataset import Dataset

__all__ = ["DicomWebError", "DicomWebStore"]

T = TypeVar("T")


class DicomWebError(RuntimeError):
    """A DICOMweb request failed; the message names the URL and the HTTP status or the reason.

    Args:
        message: What failed.
        url: The request URL (or the service root when the request never left).
        status: The HTTP status code, or None when there was no HTTP answer.
    """

    def __init__(self, message: str, url: str, status: int | None = None) -> None:
        super().__init__(message)
        self.url = url
        self.status = status


class DicomWebStore:
    """A DICOMweb service (QIDO-RS, WADO-RS, STOW-RS) at one root URL.

    Args:
        url: The service root, e.g. ``http://host:8042/dicom-web``.
        timeout: Seconds for each HTTP request.
        headers: Extra HTTP headers (e.g. ``{"Authorization": "Bearer ..."}``).
    """

    def __init__(self, url: str, *, timeout: float = 30.0, headers: dict[str, str] | None = None) -> None:
        from dicomweb_client.api import DICOMwebClient

        if not url.startswith(("http://", "https://")):
            raise ValueError(f"DICOMweb URL {url!r} must start with http:// or https://")
        self.url = url.rstrip("/")
        self._client = DICOMwebClient(self.url, headers=headers, timeout=timeout)
        # busy answers (408, 429, 503, 504) are retried briefly, then reported
        self._client.set_http_retry_params(max_attempts=3, wait_exponential_multiplier=200)

    def _call(self, what: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        try:
            return fn(*args, **kwargs)
        except requests.HTTPError as e:
            response = e.response
            url = response.url if response is not None and response.url else self.url
            status = response.status_code if response is not None else None
            reason = f"HTTP {status} {response.reason}" if response is not None else str(e)
            raise DicomWebError(f"{what} failed: {reason} from {url}", url, status) from e
        except requests.RequestException as e:
            raise DicomWebError(
                f"{what} failed: cannot reach {self.url} ({type(e).__name__})", self.url
            ) from e

    def search_studies(self, **filters: object) -> list[Dataset]:
        """QIDO-RS search of studies; ``filters`` are DICOM keywords, e.g. ``PatientID="P1"``."""
        found = self._call(
            "QIDO-RS study search", self._client.search_for_studies, search_filters=filters or None
        )
        return [Dataset.from_json(item) for item in found]

    def search_series(self, study_uid: str | None = None, **filters: object) -> list[Dataset]:
        """QIDO-RS search of series, of one study or of all studies."""
        found = self._call(
            "QIDO-RS series search",
            self._client.search_for_series,
            study_instance_uid=study_uid,
            search_filters=filters or None,
        )
        return [Dataset.from_json(item) for item in found]

    def retrieve_series(self, study_uid: str, series_uid: str, folder: Path) -> list[Path]:
        """WADO-RS retrieve of one series into ``folder`` as ``<SOPInstanceUID>.dcm`` files.

        Returns:
            The files written.
        """
        from connectors.dicom.pacs import safe_uid

        if not study_uid or not series_uid:
            raise ValueError("study_uid and series_uid are both needed to retrieve a series")
        datasets = self._call(
            f"WADO-RS retrieve of series {series_uid}",
            self._client.retrieve_series,
            study_instance_uid=study_uid,
            series_instance_uid=series_uid,
        )
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        paths = []
        for ds in datasets:
            path = folder / f"{safe_uid(ds.SOPInstanceUID)}.dcm"
            ds.save_as(path, enforce_file_format=True)
            paths.append(path)
        return paths

    def store(self, items: Iterable[Path | str | Dataset]) -> list[str]:
        """STOW-RS store of files or datasets (one request per study).

        Returns:
            The SOP Instance UIDs the server stored.

        Raises:
            DicomWebError: An HTTP error, or the server listed some instances as failed.
        """
        datasets = [item if isinstance(item, Dataset) else pydicom.dcmread(item) for item in items]
        if not datasets:
            raise ValueError("nothing to store: pass DICOM files or datasets")
        by_study: dict[str, list[Dataset]] = {}
        for ds in datasets:
            by_study.setdefault(str(ds.StudyInstanceUID), []).append(ds)
        stored: list[str] = []
        for study_uid, group in by_study.items():
            response = self._call(
                f"STOW-RS store of {len(group)} instance(s)",
                self._client.store_instances,
                datasets=group,
                study_instance_uid=study_uid,
            )
            failed = _uids(response, "FailedSOPSequence")
            if failed:
                raise DicomWebError(
                    f"STOW-RS store to {self.url}/studies/{study_uid}: {len(failed)} instance(s) failed "
                    f"({', '.join(failed[:5])})",
                    f"{self.url}/studies/{study_uid}",
                )
            stored += _uids(response, "ReferencedSOPSequence")
        return stored


def _uids(response: Dataset | None, sequence: str) -> list[str]:
    items: Sequence[Dataset] = (response or Dataset()).get(sequence, []) or []
    return [str(item.get("ReferencedSOPInstanceUID", "")) for item in items]
