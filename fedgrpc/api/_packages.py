"""Compute packages: tarballs with a fedgrpc.yaml that clients can fetch and run."""

from __future__ import annotations

from fedgrpc.api._base import COUNT_ONLY, APIBase, page
from fedgrpc.api._records import Record, to_dict, to_list
from fedgrpc.api._transfer import PathLike, package_parts, package_stream, receive_to_file
from fedgrpc.model.chunking import SHA256


class PackageMethods(APIBase):
    def get_package(self, id: str) -> Record:
        """One compute package's record. NotFound if there is none."""
        return to_dict(self.control.get_package(id=id))

    def get_packages(self, n_max: int | None = None) -> Record:
        """Compute packages, newest first: ``{"count", "result"}``."""
        return to_list(self.control.list_packages(page=page(n_max)))

    def get_packages_count(self) -> int:
        """How many compute packages are stored."""
        return int(self.control.list_packages(page=COUNT_ONLY).count)

    def get_active_package(self) -> Record:
        """The active compute package. NotFound when none is set."""
        return to_dict(self.control.get_active_package())

    def get_package_checksum(self) -> Record:
        """``{"checksum": <sha256 of the active package>}``. NotFound when none is set."""
        return {"checksum": self.control.get_active_package().sha256}

    def download_package(self, path: PathLike) -> Record:
        """Write the active compute package to ``path``, its size and sha256 verified."""
        chunks = self.control.download_package(id="")
        sha256 = receive_to_file(package_parts(chunks), path, "package", SHA256)
        return {"success": True, "message": f"package downloaded to {path} (sha256 {sha256})"}

    def set_active_package(
        self, path: PathLike, helper: str, name: str | None = None, description: str | None = None
    ) -> Record:
        """Upload a compute package tarball and make it the active one.

        ``name`` defaults to the file's name. Returns
        ``{"success": True, "message": ..., "package_id": ...}``.
        """
        stream = package_stream(path, helper=helper, name=name, description=description)
        uploaded = self.control.upload_package(stream)
        package = self.control.set_active_package(id=uploaded.id)
        return {
            "success": True,
            "message": f"package {package.name} ({package.id}) uploaded and set active",
            "package_id": package.id,
        }
