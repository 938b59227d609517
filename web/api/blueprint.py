"""The flask-smorest Blueprint of every API module, with the one bounded JSON body parser."""
from __future__ import annotations

from typing import Any

import flask
import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request


class BodyParser(FlaskParser):
    """webargs reads bodies with the stdlib json module (no depth limit); this parser uses Flask's
    ``request.get_json``, which the app's JSON provider bounds (web.json_body)."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        # request.get_json parses with web.json_body (the app's JSON provider) and caches the result.
        return req.get_json() if req.get_data(cache=True) else core.missing


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = BodyParser()
