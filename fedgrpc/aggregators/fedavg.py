"""FedAvg (McMahan et al., 2017): the next global model is the clients' weighted average."""

from __future__ import annotations

from fedgrpc.aggregators.accumulator import Arrays, to_model_dtype
from fedgrpc.aggregators.base import Aggregator, check_average_matches


class FedAvg(Aggregator):
    """Weighted averaging, no server-side optimizer and no state."""

    name = "fedavg"

    def server_update(
        self, global_model: Arrays, average: Arrays, state: Arrays | None
    ) -> tuple[Arrays, Arrays | None]:
        check_average_matches(global_model, average)
        # The average may come in accumulation dtypes (float32 for a float16 model); arrays
        # already in the model dtype are returned as they are, not copied.
        new_model = {
            name: to_model_dtype(average[name], tensor.dtype)
            for name, tensor in global_model.items()
        }
        return new_model, None
