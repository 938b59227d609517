"""The audit trail: exporter (stream -> rows), hash chain and verifier, queries, exports, retention."""
