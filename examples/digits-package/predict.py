"""The digits package's predict command: ``python predict.py MODEL OUTPUT``.

A command entry point gets file paths as arguments (see ``fedgrpc.packages.commands``): MODEL
is a safetensors file, and the command writes its predictions to OUTPUT as JSON. This one
labels the quickstart's held-out test digits and reports the accuracy.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from fedgrpc.model.serialization import load_model_list
from fedgrpc.quickstart import digits


def main(model_path: Path, output_path: Path) -> None:
    weights, bias = load_model_list(model_path.read_bytes())
    _, test = digits.train_test()
    labels = (test.x @ weights + bias).argmax(axis=1)
    result = {
        "predictions": labels.tolist(),
        "accuracy": digits.evaluate([weights, bias], test)["accuracy"],
    }
    output_path.write_text(json.dumps(result), encoding="utf-8")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python predict.py MODEL OUTPUT")
    main(Path(sys.argv[1]), Path(sys.argv[2]))
