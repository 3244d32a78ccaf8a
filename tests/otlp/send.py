"""Send log records to data-exporter with the OpenTelemetry Python SDK's OTLP exporters.

Driven by host/tests/all/otlp.rs, with the venv tests/otlp/venv.sh makes. Each record is a
stdlib `logging` call through the SDK's LoggingHandler, batched by BatchLogRecordProcessor and
exported by the OTLP/HTTP (protobuf) or OTLP/gRPC exporter: the clients agents use.

  send.py --transport http|grpc --endpoint URL --token TOKEN --count N --run RUN [--gzip]
          [--batch N] [--timeout SECS] [--ca PEM [--cert PEM --key PEM]]

`--batch` is the processor's largest export (500 by default); `--ca` trusts that CA (an https
endpoint; gRPC with `insecure=False` and channel credentials), `--cert`/`--key` present a client
certificate (mTLS).

Record i carries the attributes `run` = RUN and `seq` = i, body "record i of RUN", logger
(scope) `dx.otlp.test`, resource `service.name` = `dx-otlp-test`. Prints `flushed` when the
provider's final flush returns.
"""

import argparse
import logging
import sys

from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
from opentelemetry.sdk.resources import Resource


def read(path):
    with open(path, "rb") as f:
        return f.read()


def exporter(args):
    headers = {"authorization": f"Bearer {args.token}"}
    if args.transport == "http":
        from opentelemetry.exporter.otlp.proto.http import Compression
        from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter

        compression = Compression.Gzip if args.gzip else Compression.NoCompression
        return OTLPLogExporter(
            endpoint=args.endpoint.rstrip("/") + "/v1/logs",
            headers=headers,
            compression=compression,
            timeout=args.timeout,
            certificate_file=args.ca,
            client_certificate_file=args.cert,
            client_key_file=args.key,
        )
    import grpc
    from opentelemetry.exporter.otlp.proto.grpc._log_exporter import OTLPLogExporter

    compression = grpc.Compression.Gzip if args.gzip else grpc.Compression.NoCompression
    credentials = None
    if args.ca:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=read(args.ca),
            private_key=read(args.key) if args.key else None,
            certificate_chain=read(args.cert) if args.cert else None,
        )
    return OTLPLogExporter(
        endpoint=args.endpoint,
        insecure=credentials is None,
        credentials=credentials,
        headers=headers,
        compression=compression,
        timeout=args.timeout,
    )


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--transport", choices=["http", "grpc"], required=True)
    p.add_argument("--endpoint", required=True)
    p.add_argument("--token", required=True)
    p.add_argument("--count", type=int, required=True)
    p.add_argument("--run", required=True)
    p.add_argument("--gzip", action="store_true")
    p.add_argument("--timeout", type=float, default=60)
    p.add_argument("--batch", type=int, default=500)
    p.add_argument("--ca")
    p.add_argument("--cert")
    p.add_argument("--key")
    args = p.parse_args()

    provider = LoggerProvider(resource=Resource.create({"service.name": "dx-otlp-test"}))
    provider.add_log_record_processor(
        BatchLogRecordProcessor(
            exporter(args),
            max_queue_size=args.count + 1,
            max_export_batch_size=min(args.batch, args.count),
            schedule_delay_millis=200,
            export_timeout_millis=int(args.timeout * 1000),
        )
    )
    log = logging.getLogger("dx.otlp.test")
    log.propagate = False
    log.setLevel(logging.INFO)
    log.addHandler(LoggingHandler(level=logging.INFO, logger_provider=provider))
    for i in range(args.count):
        log.warning("record %d of %s", i, args.run, extra={"run": args.run, "seq": i})
    provider.force_flush(timeout_millis=int(args.timeout * 4000))
    provider.shutdown()
    print("flushed", flush=True)


if __name__ == "__main__":
    sys.exit(main())
