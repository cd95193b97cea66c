"""Models: records, the trail of ancestors, download, and seeding from a file."""

from __future__ import annotations

from pathlib import Path

from fedgrpc.api._base import COUNT_ONLY, APIBase, page
from fedgrpc.api._records import Record, to_dict, to_list
from fedgrpc.api._transfer import PathLike, read_seed_model, receive_to_file
from fedgrpc.model.chunking import BLAKE3


class ModelMethods(APIBase):
    def get_model(self, id: str) -> Record:
        """One model's record (``active`` tells whether it is the active model)."""
        return to_dict(self.control.get_model(id=id))

    def get_models(self, session_id: str | None = None, n_max: int | None = None) -> Record:
        """Model records, newest first, optionally of one session: ``{"count", "result"}``."""
        return to_list(self.control.list_models(page=page(n_max), session_id=session_id or None))

    def get_models_count(self) -> int:
        """How many models are stored (seeds and every round's global model)."""
        return int(self.control.list_models(page=COUNT_ONLY).count)

    def get_active_model(self) -> Record:
        """The model new sessions start from. NotFound when none is set."""
        return to_dict(self.control.get_active_model())

    def get_model_trail(
        self,
        id: str | None = None,
        include_self: bool = True,
        reverse: bool = True,
        n_max: int | None = None,
    ) -> Record:
        """The trail of models that led to ``id`` (default: the active model).

        ``include_self`` puts the model itself first; ``n_max`` keeps the nearest ones;
        ``reverse=True`` lists the newest first, False the seed first.
        """
        model_id = id or self.control.get_active_model().id
        found = self.control.get_model_ancestors(
            model_id=model_id, limit=n_max or 0, include_self=include_self
        )
        trail = to_list(found)  # nearest first, i.e. newest first
        if not reverse:
            trail["result"].reverse()
        return trail

    def get_model_ancestors(
        self, id: str, limit: int | None = None, include_self: bool = False
    ) -> Record:
        """Parent, grandparent, ... of ``id``, nearest first (at most ``limit``)."""
        found = self.control.get_model_ancestors(
            model_id=id, limit=limit or 0, include_self=include_self
        )
        return to_list(found)

    def get_model_descendants(
        self, id: str, limit: int | None = None, include_self: bool = False
    ) -> Record:
        """Models aggregated from ``id`` (children, grandchildren, ...), breadth first."""
        found = self.control.get_model_descendants(
            model_id=id, limit=limit or 0, include_self=include_self
        )
        return to_list(found)

    def download_model(self, id: str, path: PathLike) -> Record:
        """Write model ``id`` (safetensors bytes) to ``path``, its size and digest verified.

        The file appears only complete: a failed download raises and leaves ``path`` as it was.
        """
        digest = receive_to_file(self._model_service.download(id), path, "model", BLAKE3)
        return {"success": True, "message": f"model {id} downloaded to {path} (blake3 {digest})"}

    def set_active_model(self, path: PathLike) -> Record:
        """Upload a seed model from a ``.safetensors`` or ``.npz`` file and make it active.

        An ``.npz`` is read without pickle and converted to safetensors. Returns
        ``{"success": True, "message": ..., "model_id": ...}``.
        """
        data = read_seed_model(path)
        uploaded = self._model_service.upload(data, name=Path(path).name)
        model = self.control.set_active_model(model_id=uploaded.model_id)
        return {
            "success": True,
            "message": f"model {model.id} uploaded from {path} and set active",
            "model_id": model.id,
        }
