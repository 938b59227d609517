"""Dramatiq actors and the operations they run against ECS, CloudWatch Logs and target Redis."""
