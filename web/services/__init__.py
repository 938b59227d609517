"""Request-scoped services shared by the JSON API and the pages: authorize, validate, act.

Views in ``web/api`` and ``web/pages*`` stay thin and call these; a page never
imports an API view module.
"""
