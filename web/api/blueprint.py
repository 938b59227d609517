"""The flask-smorest Blueprint of every API module, with the one bounded JSON body parser."""
from __future__ import annotations

from typing import Any

import flask
import flask_smorest
from webargs import core
from webargs.flaskparser import FlaskParser, is_json_request

from web import json_body


class BodyParser(FlaskParser):
    """webargs reads bodies with the stdlib json module (no depth limit); this parser uses web.json_body."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not is_json_request(req):
            return core.missing
        data = req.get_data(cache=True)
        return json_body.loads(data) if data else core.missing


class Blueprint(flask_smorest.Blueprint):
    ARGUMENTS_PARSER = BodyParser()
