"""The contract between web and workers: broker, job kinds, enqueueing, progress and audit streams.

Imports neither ``web`` nor boto3.
"""
