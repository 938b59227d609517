"""Valet Key's composition root: the runtime wiring and the ``valetkey`` command line."""
