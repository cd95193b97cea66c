"""Status events and validations. An empty or None filter means "any" (as in FEDn)."""

from __future__ import annotations

from fedgrpc.api._base import COUNT_ONLY, APIBase, page
from fedgrpc.api._records import Record, to_dict, to_list


class EventMethods(APIBase):
    def get_status(self, id: str) -> Record:
        """One status event. NotFound if there is none."""
        return to_dict(self.control.get_status(id=id))

    def get_statuses(
        self,
        session_id: str | None = None,
        event_type: str | None = None,
        sender_name: str | None = None,
        sender_role: str | None = None,
        n_max: int | None = None,
    ) -> Record:
        """Status events, newest first, matching every filter given: ``{"count", "result"}``."""
        found = self.control.list_statuses(
            page=page(n_max),
            session_id=session_id or None,
            event_type=event_type or None,
            sender_name=sender_name or None,
            sender_role=sender_role or None,
        )
        return to_list(found)

    def get_statuses_count(self) -> int:
        """How many status events are stored."""
        return int(self.control.list_statuses(page=COUNT_ONLY).count)

    def get_validation(self, id: str) -> Record:
        """One validation (a client's metrics for a model). NotFound if there is none."""
        return to_dict(self.control.get_validation(id=id))

    def get_validations(
        self,
        session_id: str | None = None,
        model_id: str | None = None,
        correlation_id: str | None = None,
        sender_name: str | None = None,
        sender_role: str | None = None,
        receiver_name: str | None = None,
        receiver_role: str | None = None,
        n_max: int | None = None,
    ) -> Record:
        """Validations, newest first, matching every filter given: ``{"count", "result"}``.

        The sender is the validating client, the receiver its combiner.
        """
        found = self.control.list_validations(
            page=page(n_max),
            session_id=session_id or None,
            model_id=model_id or None,
            correlation_id=correlation_id or None,
            sender_name=sender_name or None,
            sender_role=sender_role or None,
            receiver_name=receiver_name or None,
            receiver_role=receiver_role or None,
        )
        return to_list(found)

    def get_validations_count(self) -> int:
        """How many validations are stored."""
        return int(self.control.list_validations(page=COUNT_ONLY).count)
