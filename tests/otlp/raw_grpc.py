"""Call a gRPC method of data-exporter with raw bytes, through grpcio (the gRPC library the
OpenTelemetry Python exporter uses), for what an SDK never sends: another signal's service, a
malformed message, a gzip bomb.

  raw_grpc.py --endpoint HOST:PORT --method /pkg.Service/Method --token TOKEN
              (--hex HEX | --zeros N) [--gzip]

`--hex` sends those bytes as the message, `--zeros N` N zero bytes (a message that deflates to
almost nothing). Prints `code=NAME`, `details=...` and, for a failure, `trailers=` the keys of
its trailing metadata (the status the server answered).
"""

import argparse

import grpc


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--endpoint", required=True)
    p.add_argument("--method", required=True)
    p.add_argument("--token", required=True)
    body = p.add_mutually_exclusive_group(required=True)
    body.add_argument("--hex")
    body.add_argument("--zeros", type=int)
    p.add_argument("--gzip", action="store_true")
    args = p.parse_args()
    message = bytes.fromhex(args.hex) if args.hex is not None else bytes(args.zeros)
    compression = grpc.Compression.Gzip if args.gzip else grpc.Compression.NoCompression
    with grpc.insecure_channel(args.endpoint) as channel:
        call = channel.unary_unary(args.method)
        try:
            answer = call(
                message,
                metadata=[("authorization", f"Bearer {args.token}")],
                compression=compression,
                timeout=30,
            )
            print(f"code=OK\nanswer={answer.hex()}")
        except grpc.RpcError as e:
            print(f"code={e.code().name}\ndetails={e.details()}")
            keys = sorted(k for k, _ in (e.trailing_metadata() or ()))
            print(f"trailers={','.join(keys)}")


if __name__ == "__main__":
    main()
