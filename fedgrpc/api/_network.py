"""Clients, combiners and the controller itself."""

from __future__ import annotations

from fedgrpc.api._base import COUNT_ONLY, APIBase, page
from fedgrpc.api._records import Record, to_dict, to_list


class NetworkMethods(APIBase):
    def get_controller_status(self) -> Record:
        """The controller's state: idle/running, version, active session and model, and how
        many combiners and clients are online."""
        return to_dict(self.control.get_controller_status())

    def get_client(self, id: str) -> Record:
        """One client, by id or name. NotFound if there is none."""
        return to_dict(self.control.get_client(id=id))

    def get_clients(self, n_max: int | None = None) -> Record:
        """Clients known to the network (at most ``n_max``): ``{"count", "result"}``."""
        return to_list(self.control.list_clients(page=page(n_max)))

    def get_clients_count(self) -> int:
        """How many clients the network knows."""
        return int(self.control.list_clients(page=COUNT_ONLY).count)

    def get_active_clients(
        self, combiner_id: str | None = None, n_max: int | None = None
    ) -> Record:
        """Online clients, optionally only those of one combiner (by id or name; NotFound for an
        unknown combiner)."""
        combiner_name = self.control.get_combiner(id=combiner_id).name if combiner_id else None
        found = self.control.list_clients(
            page=page(n_max), status="online", combiner_name=combiner_name
        )
        return to_list(found)

    def get_client_config(self, checksum: bool = True) -> Record:
        """What a client needs to join: the controller's address, the package checksum (when
        ``checksum``) and helper."""
        return to_dict(self.control.get_client_config(checksum=checksum))

    def get_combiner(self, id: str) -> Record:
        """One combiner, by id or name. NotFound if there is none."""
        return to_dict(self.control.get_combiner(id=id))

    def get_combiners(self, n_max: int | None = None) -> Record:
        """Combiners of the network (at most ``n_max``): ``{"count", "result"}``."""
        return to_list(self.control.list_combiners(page=page(n_max)))

    def get_combiners_count(self) -> int:
        """How many combiners the network knows."""
        return int(self.control.list_combiners(page=COUNT_ONLY).count)
