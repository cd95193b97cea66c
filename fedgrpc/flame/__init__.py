"""FLAME-compatible federated analysis: node SDK, data encoding, encryption, data sources."""
