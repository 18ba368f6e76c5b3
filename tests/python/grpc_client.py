"""A cliptag.v1 client written with grpcio, its stubs generated here from the .proto.

Usage: grpc_client.py PROTO_ROOT HOST:PORT STREAM

Checks health and reflection, lists streams, changes the label set with a version
check, sees detections switch to the new version without ever mixing the two sets,
and gets INVALID_ARGUMENT / FAILED_PRECONDITION / NOT_FOUND for bad requests. Prints
one JSON line of what it saw; exits non-zero on the first failed check.
"""

import importlib
import importlib.resources
import json
import sys
import tempfile

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from grpc_tools import protoc


def generate(proto_root, out):
    include = str(importlib.resources.files("grpc_tools") / "_proto")
    code = protoc.main(
        [
            "protoc",
            f"-I{proto_root}",
            f"-I{include}",
            f"--python_out={out}",
            f"--grpc_python_out={out}",
            "cliptag/v1/cliptag.proto",
        ]
    )
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, out)
    return (
        importlib.import_module("cliptag.v1.cliptag_pb2"),
        importlib.import_module("cliptag.v1.cliptag_pb2_grpc"),
    )


def check(condition, what):
    if not condition:
        raise SystemExit(f"check failed: {what}")


def expect_code(call, code, what):
    try:
        call()
    except grpc.RpcError as e:
        check(e.code() == code, f"{what}: got {e.code()} ({e.details()}), wanted {code}")
        return e.details()
    raise SystemExit(f"check failed: {what} succeeded")


def main():
    proto_root, address, stream = sys.argv[1:4]
    out = tempfile.mkdtemp(prefix="cliptag-py-")
    pb, pb_grpc = generate(proto_root, out)
    channel = grpc.insecure_channel(address)
    grpc.channel_ready_future(channel).result(timeout=30)

    health = health_pb2_grpc.HealthStub(channel)
    status = health.Check(health_pb2.HealthCheckRequest(service="cliptag.v1.Cliptag"), timeout=30)
    check(status.status == health_pb2.HealthCheckResponse.SERVING, "health says SERVING")

    services = ProtoReflectionDescriptorDatabase(channel).get_services()
    check("cliptag.v1.Cliptag" in services, f"reflection lists the service: {services}")

    client = pb_grpc.CliptagStub(channel)
    streams = client.ListStreams(pb.ListStreamsRequest()).streams
    mine = [s for s in streams if s.id == stream]
    check(len(mine) == 1, f"stream {stream} is listed: {[s.id for s in streams]}")
    version = mine[0].label_set_version
    check(version >= 1, "the stream has a label set")

    new = ["tv static", "a pinwheel", "concentric circles", "a moving ball"]
    before = client.GetLabels(pb.GetLabelsRequest(stream=stream)).sets[0]
    expect_code(
        lambda: client.SetLabels(pb.SetLabelsRequest(stream=stream, labels=pb.LabelSet())),
        grpc.StatusCode.INVALID_ARGUMENT,
        "an empty set",
    )
    dup = pb.LabelSet(labels=[pb.Label(name="a"), pb.Label(name="a")])
    expect_code(
        lambda: client.SetLabels(pb.SetLabelsRequest(stream=stream, labels=dup)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "duplicate labels",
    )
    expect_code(
        lambda: client.SetLabels(
            pb.SetLabelsRequest(
                stream=stream,
                labels=pb.LabelSet(labels=[pb.Label(name=n) for n in new]),
                if_version=version + 5,
            )
        ),
        grpc.StatusCode.FAILED_PRECONDITION,
        "a stale if_version",
    )
    expect_code(
        lambda: client.GetLabels(pb.GetLabelsRequest(stream="no-such-stream")),
        grpc.StatusCode.NOT_FOUND,
        "an unknown stream",
    )
    after = client.GetLabels(pb.GetLabelsRequest(stream=stream)).sets[0]
    check(after == before, "refused requests left the set unchanged")

    detections = client.StreamDetections(
        pb.StreamDetectionsRequest(streams=[stream], include_empty=True), timeout=120
    )
    old_names = {label.name for label in before.labels.labels}
    reply = client.SetLabels(
        pb.SetLabelsRequest(
            stream=stream,
            labels=pb.LabelSet(labels=[pb.Label(name=n) for n in new], top_k=4),
            if_version=version,
        )
    )
    new_version = reply.sets[0].version
    check(new_version == version + 1, f"version {version} became {new_version}")

    seen_old = seen_new = 0
    last_version = 0
    for event in detections:
        if event.WhichOneof("event") != "detection":
            continue
        d = event.detection
        check(d.label_set_version >= last_version, "versions never go back")
        last_version = d.label_set_version
        names = {label.label for label in d.labels}
        if d.label_set_version == new_version:
            check(names <= set(new), f"frame {d.frame} mixes sets: {names}")
            seen_new += 1
            if seen_new >= 5:
                break
        else:
            check(names <= old_names, f"frame {d.frame} mixes sets: {names}")
            seen_old += 1
        check(seen_old < 1000, "the new set never arrived")
    detections.cancel()
    print(
        json.dumps(
            {
                "health": "SERVING",
                "reflection": sorted(services),
                "version": new_version,
                "old_results_after_the_change": seen_old,
                "new_results": seen_new,
            }
        )
    )


if __name__ == "__main__":
    main()
