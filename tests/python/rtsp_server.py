#!/usr/bin/python3
"""An RTSP server with live test-pattern cameras, for the end-to-end tests.

GStreamer's own RTSP server (gst-rtsp-server, through PyGObject) on a free loopback
port, one mount per pattern named on the command line (/ball, /snow, ...), each
320x240 at 15 frames a second as RTP/JPEG over the RTSP connection (TCP, so a closed
connection reaches the client at once). Prints "ready PORT" when it serves, then reads
commands on stdin, one per line, and answers "ok COMMAND" to each:

  kill NAME    the camera is gone: the mount is removed and its clients disconnected
  start NAME   the camera is back: the mount is served again
  freeze NAME  the camera hangs: its connections stay open but no frame is sent
  thaw NAME    frames flow again

The server stops when stdin closes.

    python3 rtsp_server.py ball snow
"""

import sys
import threading

import gi

gi.require_version("Gst", "1.0")
gi.require_version("GstRtsp", "1.0")
gi.require_version("GstRtspServer", "1.0")
from gi.repository import GLib, Gst, GstRtsp, GstRtspServer  # noqa: E402

LAUNCH = (
    "( videotestsrc is-live=true pattern={pattern} "
    "! video/x-raw,format=I420,width=320,height=240,framerate=15/1 "
    "! jpegenc quality=70 ! rtpjpegpay name=pay0 pt=96 )"
)


class Cameras:
    """The mounts, their clients and which cameras are frozen."""

    def __init__(self, server, patterns):
        self.server = server
        self.patterns = patterns
        self.frozen = set()
        self.clients = {}  # client -> the mount it set up
        self.lock = threading.Lock()
        server.connect("client-connected", self.on_client)

    def factory(self, name):
        factory = GstRtspServer.RTSPMediaFactory()
        factory.set_launch(LAUNCH.format(pattern=self.patterns[name]))
        factory.set_shared(False)
        factory.set_protocols(GstRtsp.RTSPLowerTrans.TCP)
        factory.connect("media-configure", self.on_media, name)
        return factory

    def mount(self, name):
        self.server.get_mount_points().add_factory("/" + name, self.factory(name))

    def on_media(self, _factory, media, name):
        pay = media.get_element().get_by_name("pay0")
        # Frames into the payloader: one JPEG per buffer (it sends RTP as buffer lists).
        pay.get_static_pad("sink").add_probe(Gst.PadProbeType.BUFFER, self.on_buffer, name)

    def on_buffer(self, _pad, _info, name):
        with self.lock:
            frozen = name in self.frozen
        return Gst.PadProbeReturn.DROP if frozen else Gst.PadProbeReturn.OK

    def on_client(self, _server, client):
        client.connect("setup-request", self.on_setup)
        client.connect("closed", self.on_closed)

    def on_setup(self, client, context):
        path = context.uri.abspath.strip("/").split("/")[0]
        with self.lock:
            self.clients[client] = path

    def on_closed(self, client):
        with self.lock:
            self.clients.pop(client, None)

    def kill(self, name):
        self.server.get_mount_points().remove_factory("/" + name)
        with self.lock:
            gone = [c for c, path in self.clients.items() if path == name]
        for client in gone:
            client.close()

    def command(self, line):
        verb, _, name = line.strip().partition(" ")
        if name not in self.patterns:
            return "error unknown camera " + name
        if verb == "kill":
            self.kill(name)
        elif verb == "start":
            self.mount(name)
        elif verb in ("freeze", "thaw"):
            with self.lock:
                (self.frozen.add if verb == "freeze" else self.frozen.discard)(name)
        else:
            return "error unknown command " + verb
        return "ok " + line.strip()


def main():
    Gst.init(None)
    names = sys.argv[1:] or ["ball"]
    server = GstRtspServer.RTSPServer()
    server.set_address("127.0.0.1")
    server.set_service("0")  # a free port, read back below
    cameras = Cameras(server, {name: name for name in names})
    for name in names:
        cameras.mount(name)
    loop = GLib.MainLoop()
    if server.attach(None) == 0:
        sys.exit("cannot start the RTSP server")
    print("ready", server.get_bound_port(), flush=True)

    def serve_commands():
        for line in sys.stdin:
            if not line.strip():
                continue
            answer = []
            done = threading.Event()

            def run(line=line):
                answer.append(cameras.command(line))
                done.set()
                return False

            # Mount points and clients belong to the main loop's thread.
            GLib.idle_add(run)
            done.wait()
            print(answer[0], flush=True)
        GLib.idle_add(loop.quit)

    threading.Thread(target=serve_commands, daemon=True).start()
    loop.run()


if __name__ == "__main__":
    main()
