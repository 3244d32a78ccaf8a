"""{{name}}: a data-exporter consumer plugin in Python.

Each report's payload is POSTed to the destination's `url`, with the report id in
`x-report-id` (so the receiver can drop repeats). The plugin never opens a socket: `http.send`
(narrows:exporter/http@0.1.0) asks the host to make the request, under the operator's
outbound allow-list, TLS settings and timeouts.

componentize-py generates the `wit_world` bindings from `wit/`: records are dataclasses,
variants one class per case (`Outcome_Delivered`, ...), options `None` or the value. An import
returning `result` raises `Err(value)` on error; an export returns an error by raising it.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import consumer
from wit_world.imports import http
from wit_world.imports.types import (
    Outcome,
    Outcome_Delivered,
    Outcome_Permanent,
    Outcome_Retryable,
    Parameter,
    ParamType,
    PluginInfo,
    Report,
    Retry,
)

NAME = "{{name}}"
VERSION = "0.1.0"
CONFIG_KEY = "{{config_key}}"

PARAMETERS = [
    Parameter(name="url", type=ParamType.STRING, required=True, default=None, secret=False,
              usage="Where each report's payload is POSTed, e.g. https://receiver.example/hook"),
    Parameter(name="token", type=ParamType.STRING, required=False, default='""', secret=True,
              usage="Sent as `Authorization: Bearer <token>`; empty for none"),
]


def parse_destination(text):
    """The destination's fields, or Err with what to change."""
    try:
        d = json.loads(text)
    except ValueError as e:
        raise Err(f"the destination is not JSON: {e}")
    if not isinstance(d, dict):
        raise Err("the destination must be a JSON object")
    unknown = [k for k in d if k not in ("url", "token")]
    if unknown:
        raise Err(f"unknown field `{unknown[0]}`, expected `url` or `token`")
    url = d.get("url")
    if not isinstance(url, str) or not (url.startswith("http://") or url.startswith("https://")):
        raise Err(f"`url` must be a string starting with http:// or https://, got {json.dumps(url)}")
    token = d.get("token", "")
    if not isinstance(token, str):
        raise Err("`token` must be a string")
    return url, token


# Transport errors worth retrying: the receiver may answer later.
RETRYABLE = (http.RequestError_Connect, http.RequestError_Timeout, http.RequestError_Protocol)


class Consumer(exports.Consumer):
    def info(self) -> PluginInfo:
        return PluginInfo(
            name=NAME,
            version=VERSION,
            config_key=CONFIG_KEY,
            description="POSTs each report's payload to a URL",
            parameters=PARAMETERS,
            settings=[],
        )

    def init(self, settings: str) -> None:
        pass

    def validate(self, destination: str) -> None:
        parse_destination(destination)


class Destination(consumer.Destination):
    """One open destination: kept by the host for as many batches as it sends."""

    def __init__(self, url, token):
        self.url = url
        self.headers = [("content-type", "application/json")]
        if token:
            self.headers.append(("authorization", f"Bearer {token}"))

    @classmethod
    def open(cls, config: str) -> "Destination":
        return cls(*parse_destination(config))

    def deliver(self, reports: list[Report]) -> list[Outcome]:
        outcomes = []
        for report in reports:
            request = http.Request(
                method=http.Method.POST,
                url=self.url,
                headers=self.headers + [("x-report-id", report.id)],
                body=report.payload.encode(),
                basic_auth=None,
                tls=http.Tls(verify_server=True, client_certificate=False),
                timeout_ms=None,
            )
            try:
                resp = http.send(request)
            except Err as e:
                why = f"{type(e.value).__name__}: {e.value.value}"
                retry = isinstance(e.value, RETRYABLE)
                outcomes.append(Outcome_Retryable(Retry(reason=why, retry_after_ms=None)) if retry else Outcome_Permanent(why))
                continue
            if 200 <= resp.status < 300:
                outcomes.append(Outcome_Delivered())
            elif resp.status in (408, 429) or resp.status >= 500:
                outcomes.append(Outcome_Retryable(Retry(reason=f"answered {resp.status}", retry_after_ms=None)))
            else:
                outcomes.append(Outcome_Permanent(f"answered {resp.status}: {resp.body[:200].decode('utf-8', 'replace')}"))
        return outcomes

    def flush(self) -> None:
        """Every report was answered as it was sent: nothing is held here."""
