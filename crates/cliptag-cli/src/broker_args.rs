//! Brokers as command-line options for `cliptag run`: where detections are published
//! (NATS, MQTT) and which key of a NATS bucket the labels follow. Each sets the
//! `cliptag` element's property of the same name.

use gst::prelude::*;

/// Options that connect the stream to brokers.
#[derive(Debug, Clone, Default, clap::Args)]
#[command(next_help_heading = "Brokers (many machines: detections out, label sets in)")]
pub struct BrokerArgs {
    /// Publish every detection to this NATS server (nats://[user:password@]host[:port],
    /// tls:// for TLS) on <prefix>.<stream>.detections; retried while down.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// protobuf (the cliptag.v1.Detection message) or json [element: protobuf].
    #[arg(long, value_parser = ["protobuf", "json"], requires = "nats")]
    pub nats_format: Option<String>,
    /// Keep the labels in this key of the NATS server's key-value bucket (a label group
    /// shared by every process bound to it); `cliptag labels set --nats URL --key KEY`
    /// changes them all.
    #[arg(long, value_name = "KEY", requires = "nats")]
    pub labels_key: Option<String>,
    /// The key-value bucket of --labels-key [element: cliptag_labels].
    #[arg(long, value_name = "NAME", requires = "labels_key")]
    pub labels_bucket: Option<String>,
    /// Publish every detection as JSON at QoS 1 to this MQTT broker
    /// (mqtt://[user:password@]host[:port], mqtts:// for TLS) on
    /// cliptag/<stream>/detections; retried while down.
    #[arg(long, value_name = "URL")]
    pub mqtt: Option<String>,
    /// PEM certificates to trust for a tls:// NATS server instead of the system's.
    #[arg(long, value_name = "FILE", requires = "nats")]
    pub nats_ca: Option<std::path::PathBuf>,
    /// PEM certificates to trust for an mqtts:// broker instead of the system's.
    #[arg(long, value_name = "FILE", requires = "mqtt")]
    pub mqtt_ca: Option<std::path::PathBuf>,
    /// Detections held per broker while it is slow or down; the oldest unsent are
    /// dropped and counted beyond [element: 1024].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=1_000_000))]
    pub broker_outbox: Option<u32>,
}

impl BrokerArgs {
    /// Sets the element's properties for the options given.
    pub fn apply(&self, tag: &gst::Element) {
        let text = [
            ("nats-url", &self.nats),
            ("labels-key", &self.labels_key),
            ("labels-bucket", &self.labels_bucket),
            ("mqtt-url", &self.mqtt),
        ];
        for (property, value) in text {
            if let Some(value) = value {
                tag.set_property(property, value);
            }
        }
        for (property, path) in [
            ("nats-ca-file", &self.nats_ca),
            ("mqtt-ca-file", &self.mqtt_ca),
        ] {
            if let Some(path) = path {
                tag.set_property(property, path.display().to_string());
            }
        }
        if let Some(format) = &self.nats_format {
            tag.set_property_from_str("nats-format", format);
        }
        if let Some(n) = self.broker_outbox {
            tag.set_property("broker-outbox", n);
        }
    }
}
