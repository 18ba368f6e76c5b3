#!/usr/bin/env python3
"""A cliptag.v1 client in Python with grpcio: follow one stream's detections, add a
label while it runs (with a version check, so a concurrent edit is never overwritten),
and see the detections switch to the new label set.

    pip install grpcio grpcio-tools
    cliptag run --grpc 127.0.0.1:50051 --stream-id cam &
    python3 examples/python/tag_client.py 127.0.0.1:50051 cam "concentric circles"

The stubs are generated at start from proto/ (next to this file's directory) into a
temporary directory, so nothing generated is kept. With a server that has a token, pass
--token or set CLIPTAG_TOKEN. Prints one JSON object per line: each detection, the
change, and a summary; exits 1 if the new set never reaches a frame.
"""

import argparse
import importlib
import importlib.resources
import json
import os
import pathlib
import sys
import tempfile
import threading

import grpc
from grpc_tools import protoc

PROTO_ROOT = pathlib.Path(__file__).resolve().parents[2] / "proto"


def load_stubs(out_dir):
    """Generates the Python modules for cliptag.v1 and imports them."""
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main(["protoc", f"-I{PROTO_ROOT}", f"-I{include}", f"--python_out={out_dir}",
                        f"--grpc_python_out={out_dir}", "cliptag/v1/cliptag.proto"])
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)
    return (importlib.import_module("cliptag.v1.cliptag_pb2"),
            importlib.import_module("cliptag.v1.cliptag_pb2_grpc"))


def emit(**fields):
    print(json.dumps(fields), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("server", help="host:port of cliptag's gRPC service")
    parser.add_argument("stream", help="the stream to follow and change")
    parser.add_argument("label", help="the label to add")
    parser.add_argument("--token", default=os.environ.get("CLIPTAG_TOKEN"))
    parser.add_argument("--after", type=int, default=5,
                        help="detections to see before the change and after it (default 5)")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as stubs:
        pb, rpc = load_stubs(stubs)
        with grpc.insecure_channel(args.server) as channel:
            client = rpc.CliptagStub(channel)
            metadata = [("authorization", f"Bearer {args.token}")] if args.token else []

            streams = client.ListStreams(pb.ListStreamsRequest(), timeout=10)
            emit(streams=[s.id for s in streams.streams])
            current = client.GetLabels(pb.GetLabelsRequest(stream=args.stream), timeout=10).sets[0]

            # Detections arrive on their own thread; the main thread makes the change.
            before = threading.Event()
            after = threading.Event()
            state = {"seen": 0, "new_version": None, "new": 0, "new_label_scored": False}
            lock = threading.Lock()
            subscription = client.StreamDetections(
                pb.StreamDetectionsRequest(streams=[args.stream], include_empty=True))

            def follow():
                try:
                    for event in subscription:
                        if event.HasField("lagged"):
                            emit(lagged=event.lagged.missed)
                            continue
                        d = event.detection
                        emit(frame=d.frame, version=d.label_set_version,
                             labels={l.label: round(l.score, 3) for l in d.labels})
                        with lock:
                            state["seen"] += 1
                            if state["seen"] >= args.after:
                                before.set()
                            if state["new_version"] is not None and d.label_set_version >= state["new_version"]:
                                state["new"] += 1
                                state["new_label_scored"] |= any(l.label == args.label for l in d.labels)
                                if state["new"] >= args.after:
                                    after.set()
                                    return
                except grpc.RpcError as e:
                    if e.code() != grpc.StatusCode.CANCELLED:
                        emit(error=f"{e.code().name}: {e.details()}")
                    after.set()
                    before.set()

            reader = threading.Thread(target=follow, daemon=True)
            reader.start()
            before.wait(timeout=30)

            # Apply only if nobody changed the set since it was read.
            try:
                changed = client.UpdateLabels(
                    pb.UpdateLabelsRequest(stream=args.stream, add=[pb.Label(name=args.label)],
                                           if_version=current.version),
                    metadata=metadata, timeout=30)
            except grpc.RpcError as e:
                subscription.cancel()
                emit(error=f"{e.code().name}: {e.details()}")
                return 1
            new_version = changed.sets[0].version
            with lock:
                state["new_version"] = new_version
            emit(changed=new_version, labels=[l.name for l in changed.sets[0].labels.labels])

            after.wait(timeout=30)
            subscription.cancel()
            reader.join(timeout=5)
            with lock:
                emit(summary=True, version=new_version, new_results=state["new"],
                     new_label_scored=state["new_label_scored"])
                return 0 if state["new"] >= args.after and state["new_label_scored"] else 1


if __name__ == "__main__":
    sys.exit(main())
