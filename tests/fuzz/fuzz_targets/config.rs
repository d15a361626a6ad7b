//! The broker's TOML configuration on arbitrary UTF-8, and topic settings
//! given as CREATE_TOPIC `key = value` pairs.
//!
//! Asserts: no panic; a file that parses resolves settings for every topic
//! it names; and settings, once resolved, survive the trip through the
//! pairs DESCRIBE_TOPIC reports and CREATE_TOPIC takes back ("They can be
//! fed back to CREATE_TOPIC unchanged", docs/PROTOCOL.md).
#![no_main]

use libfuzzer_sys::fuzz_target;
use spool::broker::{Config, TopicOverrides, TopicSettings};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };

    // As a whole configuration file.
    if let Ok(config) = Config::parse(text) {
        let defaults = config.topic_defaults().expect("checked defaults resolve");
        round_trips(&defaults);
        for name in config.topics.keys() {
            let settings = config
                .topic_settings(name, &TopicOverrides::default())
                .expect("checked topics resolve");
            round_trips(&settings);
        }
    }

    // As CREATE_TOPIC settings: one `key=value` per line.
    let pairs: Vec<(String, String)> = text
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    if let Ok(overrides) = TopicOverrides::from_pairs(&pairs) {
        if let Ok(settings) = overrides.resolve(&TopicSettings::default()) {
            round_trips(&settings);
        }
    }
});

/// Settings reported as pairs and given back resolve to the same settings.
fn round_trips(settings: &TopicSettings) {
    let pairs = settings.to_pairs();
    let back = TopicOverrides::from_pairs(&pairs)
        .unwrap_or_else(|e| panic!("reported pairs {pairs:?} do not parse: {e}"))
        .resolve(&TopicSettings::default())
        .unwrap_or_else(|e| panic!("reported pairs {pairs:?} do not resolve: {e}"));
    assert_eq!(&back, settings, "pairs {pairs:?}");
}
