#!/usr/bin/env python3
"""Reads cliptag's per-frame labels from an appsink with PyGObject, without any
cliptag library: the element attaches them as a GstCustomMeta named GstCliptagMeta
holding a GstStructure.

    GST_PLUGIN_PATH=target/debug python3 examples/read_meta.py [PIPELINE]

Needs Debian's python3-gi and gir1.2-gstreamer-1.0. The default pipeline tags 30 frames
of videotestsrc's moving ball. Prints one JSON line per frame; exits 1 if a frame has
no cliptag meta.
"""

import json
import sys
import warnings

import gi

gi.require_version("Gst", "1.0")
from gi.repository import Gst  # noqa: E402

DEFAULT = (
    "videotestsrc pattern=ball num-buffers=30 ! video/x-raw,width=320,height=240 "
    '! cliptag labels="a moving ball,smpte color bars,tv static" ! appsink name=out sync=false'
)


def array(structure, field):
    """A GstValueArray field as a list. Plain PyGObject has no converter for the type;
    Gst.Structure.get_array returns it as a (deprecated, but present) GValueArray."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        ok, values = structure.get_array(field)
        if not ok:
            return []
        return [values.get_nth(i) for i in range(values.n_values)]


def tags_of(buffer):
    meta = buffer.get_custom_meta("GstCliptagMeta")
    if meta is None:
        return None
    s = meta.get_structure()
    labels = array(s, "labels")
    scores = array(s, "scores")
    return {
        "frame": s.get_value("frame"),
        "labels": list(zip(labels, scores)),
        "version": s.get_value("version"),
        "stale": s.get_value("stale"),
        "computed_for": s.get_value("computed-for"),
        "model": s.get_value("model"),
    }


def main():
    Gst.init(None)
    if Gst.ElementFactory.find("cliptag") is None:
        print("the cliptag element is not found: set GST_PLUGIN_PATH to the directory of libgstcliptag.so",
              file=sys.stderr)
        return 2
    pipeline = Gst.parse_launch(sys.argv[1] if len(sys.argv) > 1 else DEFAULT)
    sink = pipeline.get_by_name("out")
    pipeline.set_state(Gst.State.PLAYING)
    missing = 0
    while True:
        sample = sink.emit("pull-sample")
        if sample is None:
            break
        tags = tags_of(sample.get_buffer())
        if tags is None:
            missing += 1
            continue
        print(json.dumps(tags), flush=True)
    bus = pipeline.get_bus()
    err = bus.pop_filtered(Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if err is not None:
        error, debug = err.parse_error()
        print(f"error: {error.message} ({debug})", file=sys.stderr)
        return 1
    return 1 if missing else 0


if __name__ == "__main__":
    sys.exit(main())
