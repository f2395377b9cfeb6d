//! Writes the fuzz targets' seed corpus from the hostile-header table:
//! `cargo run -p tracelink-testkit --example write_fuzz_seeds -- fuzz/seeds`.
//!
//! Values are cut to 16 KiB (the fuzzers run with `-max_len=20000`; the 9000-byte cases still
//! cross the 8192-byte read bound, and the 1 MiB case runs whole in the broker tests).

use std::path::PathBuf;

use tracelink_testkit::{corpus, encode_headers};

const MAX_VALUE: usize = 16 * 1024;

fn main() -> std::io::Result<()> {
    let root = PathBuf::from(
        std::env::args()
            .nth(1)
            .unwrap_or_else(|| "fuzz/seeds".into()),
    );
    for case in corpus() {
        let headers: Vec<(String, Vec<u8>)> = case
            .headers
            .iter()
            .map(|(k, v)| (k.clone(), v[..v.len().min(MAX_VALUE)].to_vec()))
            .collect();
        let plain = encode_headers(&headers);
        // Carriers whose value type is picked by a tag byte: 0 (bytes) and 5 (string).
        let tagged = |tag: u8| {
            let tagged: Vec<(String, Vec<u8>)> = headers
                .iter()
                .map(|(k, v)| (k.clone(), [&[tag][..], v].concat()))
                .collect();
            encode_headers(&tagged)
        };
        let mut files: Vec<(&str, String, Vec<u8>)> = vec![
            ("carrier_map", case.name.to_owned(), plain.clone()),
            ("carrier_kafka", case.name.to_owned(), plain.clone()),
            ("carrier_nats", case.name.to_owned(), plain.clone()),
            ("carrier_amqp", format!("{}-bytes", case.name), tagged(0)),
            ("carrier_amqp", format!("{}-string", case.name), tagged(11)),
            ("carrier_sqs", format!("{}-binary", case.name), tagged(0)),
            ("carrier_sqs", format!("{}-string", case.name), tagged(5)),
        ];
        for (selector, adapter) in ["kafka", "amqp", "nats", "sqs"].iter().enumerate() {
            let mut input = vec![selector as u8];
            input.extend_from_slice(&plain);
            files.push(("consumer_layer", format!("{}-{adapter}", case.name), input));
        }
        for (target, name, bytes) in files {
            let dir = root.join(target);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join(name), bytes)?;
        }
    }
    Ok(())
}
