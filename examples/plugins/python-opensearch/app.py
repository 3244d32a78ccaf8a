"""An OpenSearch consumer for data-exporter, in Python.

Each report's payload becomes the document `{host_port}/{index}/_doc/{report id}` (PUT, so a
retried report overwrites its own document instead of adding a second one).

It never opens a socket: `http.send` (narrows:exporter/http@0.1.0) asks the host to make the
request, with the host's connection pools, CA bundle, client certificate, timeouts and the
operator's outbound allow-list. Built with componentize-py (see README.md), which generates the
`wit_world` bindings package from `wit/`: records are dataclasses, variants one class per case
(`Outcome_Delivered`, ...), options `None` or the value, list<u8> `bytes`. An import returning
`result` raises `Err(value)` on error; an export returns an error by raising `Err(value)`.
"""

import json
import re

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import consumer
from wit_world.imports import http, log
from wit_world.imports.types import (
    BatchFailure,
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

NAME = "python-opensearch"
VERSION = "0.1.0"
CONFIG_KEY = "openSearchPy"


def param(name, type_, usage, required=False, default=None, secret=False):
    return Parameter(name=name, type=type_, required=required, default=default, usage=usage, secret=secret)


S, B, I = ParamType.STRING, ParamType.BOOLEAN, ParamType.INTEGER

PARAMETERS = [
    param("host_port", S, "Base URL of the cluster, e.g. https://opensearch:9200", required=True),
    param("index", S, "Index the documents are written to, e.g. scans", required=True),
    param("username", S, "Basic-auth user name; empty for none", default='""'),
    param("password", S, "Basic-auth password", default='""', secret=True),
    param("checkCert", B, "Verify the server's TLS certificate", default="true"),
    param("mutualTLS", B, "Present the client certificate configured by the operator", default="false"),
    param(
        "labels_field",
        S,
        "When set, each document also gets this field: an object of the report's labels "
        "(the payload must be a JSON object)",
        default='""',
    ),
]

SETTINGS = [
    param(
        "request_timeout_ms",
        I,
        "Deadline of each request to OpenSearch, in ms; the host's http.timeout_ms applies when unset",
    ),
]

# ---- config parsing: the same rules as the Rust opensearch plugin ------------------------------

JSON_TYPES = {ParamType.STRING: (str,), ParamType.BOOLEAN: (bool,), ParamType.INTEGER: (int,)}
TYPE_NAMES = {ParamType.STRING: "string", ParamType.BOOLEAN: "boolean", ParamType.INTEGER: "integer"}


class ConfigError(Exception):
    pass


def parse_object(text, params, what):
    """Parse a JSON object against `params`: unknown fields, missing required ones and wrong types are refused."""
    try:
        value = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{what} is not JSON: {e}")
    if not isinstance(value, dict):
        raise ConfigError(f"{what} must be a JSON object")
    known = {p.name: p for p in params}
    out = {}
    for k, v in value.items():
        p = known.get(k)
        if p is None:
            names = ", ".join(f"`{p.name}`" for p in params)
            raise ConfigError(f"unknown field `{k}`, expected one of {names}")
        # bool is an int in Python: an integer parameter takes no true/false.
        ok = isinstance(v, JSON_TYPES[p.type]) and not (p.type == ParamType.INTEGER and isinstance(v, bool))
        if not ok:
            raise ConfigError(f"`{k}` must be a JSON {TYPE_NAMES[p.type]}, got {json.dumps(v)}")
        out[k] = v
    for p in params:
        if p.name not in out:
            if p.required:
                raise ConfigError(f"missing field `{p.name}`")
            out[p.name] = json.loads(p.default) if p.default is not None else None
    return out


INDEX_FORBIDDEN = '\\/*?"<>| ,#:'


def check_destination(d):
    hp = d["host_port"].strip()
    if hp == "":
        return "`host_port` is empty: set it to the cluster's base URL, e.g. https://opensearch:9200"
    if not (hp.startswith("http://") or hp.startswith("https://")):
        return f"`host_port` must start with http:// or https://, got {json.dumps(hp)}: e.g. https://opensearch:9200"
    if "@" in hp:
        return "`host_port` must not carry credentials: use `username` and `password`"
    index = d["index"]
    if index == "":
        return "`index` is empty: set the name of the index to write to, e.g. scans"
    if index != index.lower():
        return f"`index` {json.dumps(index)} has upper-case letters: OpenSearch index names are lower-case"
    bad = next((c for c in index if c in INDEX_FORBIDDEN), None)
    if bad is not None:
        return f"`index` {json.dumps(index)} contains '{bad}', which OpenSearch does not allow in index names"
    if index[0] in "_-+" or index in (".", ".."):
        return f"`index` {json.dumps(index)} may not start with _, - or + nor be . or .."
    if len(index.encode()) > 255:
        return "`index` is longer than 255 bytes, the most OpenSearch allows"
    if d["password"] != "" and d["username"] == "":
        return "`password` is set but `username` is empty: set both for basic auth, or neither"
    return None


def parse_destination(text):
    d = parse_object(text, PARAMETERS, "the destination")
    problem = check_destination(d)
    if problem:
        raise ConfigError(problem)
    return d


# ---- outcomes -----------------------------------------------------------------------------------

UNRESERVED = re.compile(r"[A-Za-z0-9\-_.!~*'()]")


def quote(s):
    """Percent-encode a path segment the way JavaScript's encodeURIComponent does."""
    return "".join(c if UNRESERVED.fullmatch(c) else "".join(f"%{b:02X}" for b in c.encode()) for c in s)


def header(resp, name):
    return next((v for k, v in resp.headers if k == name), None)


def retry_after_ms(resp):
    """`Retry-After` in seconds, as milliseconds, when the server said."""
    v = header(resp, "retry-after")
    return int(v.strip()) * 1000 if v is not None and v.strip().isdigit() else None


def excerpt(body):
    t = body.decode("utf-8", "replace").strip()
    return t[:300] + "…" if len(t) > 300 else t


def refusal(resp):
    """Why OpenSearch refused a document: `type: reason` from its error answer, else the body."""
    try:
        e = json.loads(resp.body).get("error")
        if isinstance(e, dict):
            return f"{e.get('type', 'error')}: {e.get('reason', '')}"
        if isinstance(e, str):
            return e
    except (ValueError, AttributeError):
        pass
    return excerpt(resp.body)


def outcome_of(resp, host_port):
    """One report's outcome from OpenSearch's answer; the same classes as the Rust plugin's."""
    s = resp.status
    if 200 <= s < 300:
        return Outcome_Delivered()
    if s == 401:
        return Outcome_Permanent(
            f"OpenSearch at {host_port} answered 401: authentication failed; check `username` and `password`"
        )
    if s == 403:
        return Outcome_Permanent(
            f"OpenSearch at {host_port} answered 403: the user may not write to this index ({excerpt(resp.body)})"
        )
    if s in (408, 429) or s >= 500:
        why = f"OpenSearch at {host_port} answered {s}: {refusal(resp)}"
        return Outcome_Retryable(Retry(reason=why, retry_after_ms=retry_after_ms(resp)))
    return Outcome_Permanent(f"OpenSearch rejected the document ({s}): {refusal(resp)}")


# Transport errors worth retrying: the server may answer later. TLS, policy and bad URLs will not change.
RETRYABLE = (
    http.RequestError_Connect,
    http.RequestError_Timeout,
    http.RequestError_Protocol,
    http.RequestError_ResponseTooLarge,
)
ERROR_NAMES = {
    http.RequestError_InvalidRequest: "invalid-request",
    http.RequestError_Denied: "denied",
    http.RequestError_Connect: "connect",
    http.RequestError_Tls: "tls",
    http.RequestError_Timeout: "timeout",
    http.RequestError_Protocol: "protocol",
    http.RequestError_ResponseTooLarge: "response-too-large",
}

# ---- the plugin ---------------------------------------------------------------------------------

settings = {"request_timeout_ms": None}


class Consumer(exports.Consumer):
    def info(self) -> PluginInfo:
        return PluginInfo(
            name=NAME,
            version=VERSION,
            config_key=CONFIG_KEY,
            description="Indexes each report's payload as an OpenSearch document, one PUT per report (Python example).",
            parameters=PARAMETERS,
            settings=SETTINGS,
        )

    def init(self, text: str) -> None:
        global settings
        try:
            parsed = parse_object(text, SETTINGS, "the settings")
        except ConfigError as e:
            raise Err(str(e))
        t = parsed["request_timeout_ms"]
        if t is not None and not 0 < t < 2**32:
            raise Err("`request_timeout_ms` must be between 1 and 4294967295")
        settings = parsed

    def validate(self, destination: str) -> None:
        try:
            parse_destination(destination)
        except ConfigError as e:
            raise Err(str(e))


class Destination(consumer.Destination):
    """One open destination: the base URL, auth and TLS options, kept for every batch."""

    def __init__(self, d):
        self.host_port = d["host_port"].strip().rstrip("/")
        self.base = f"{self.host_port}/{quote(d['index'])}/_doc/"
        self.labels_field = d["labels_field"]
        self.basic_auth = (d["username"], d["password"]) if d["username"] != "" else None
        self.tls = http.Tls(verify_server=d["checkCert"], client_certificate=d["mutualTLS"])

    @classmethod
    def open(cls, config: str) -> "Destination":
        try:
            return cls(parse_destination(config))
        except ConfigError as e:
            raise Err(str(e))

    def document(self, report: Report) -> bytes:
        """The payload as sent, or with the labels added under `labels_field`."""
        if self.labels_field == "":
            return report.payload.encode()
        doc = json.loads(report.payload)
        if not isinstance(doc, dict):
            raise ValueError("`labels_field` is set, but the payload is not a JSON object")
        doc[self.labels_field] = dict(report.metadata.labels)
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()

    def deliver(self, reports: list[Report]) -> list[Outcome]:
        outcomes = []
        for report in reports:
            try:
                body = self.document(report)
            except ValueError as e:
                outcomes.append(Outcome_Permanent(str(e)))
                continue
            if report.metadata.attempt > 1:
                log.log(log.Level.DEBUG, f"report {report.id}: attempt {report.metadata.attempt}")
            request = http.Request(
                method=http.Method.PUT,
                url=self.base + quote(report.id),
                headers=[("content-type", "application/json")],
                body=body,
                basic_auth=self.basic_auth,
                tls=self.tls,
                timeout_ms=settings["request_timeout_ms"],
            )
            try:
                resp = http.send(request)
            except Err as e:
                err = e.value
                why = f"OpenSearch at {self.host_port}: {ERROR_NAMES.get(type(err), 'error')}: {err.value}"
                if not isinstance(err, RETRYABLE):
                    outcomes.append(Outcome_Permanent(why))
                    continue
                # Unreachable, timed out, cut off: the rest of the batch would fare no better. At
                # the first report the whole batch failed (as the Rust plugin's one _bulk request
                # would); later, the reports not sent yet are retried.
                if not outcomes:
                    raise Err(BatchFailure(reason=why, retry_after_ms=None))
                retry = Outcome_Retryable(Retry(reason=why, retry_after_ms=None))
                outcomes.extend(retry for _ in range(len(reports) - len(outcomes)))
                return outcomes
            outcomes.append(outcome_of(resp, self.host_port))
        return outcomes

    def flush(self) -> None:
        """Every document was acknowledged by OpenSearch as it was sent: nothing is held here."""
