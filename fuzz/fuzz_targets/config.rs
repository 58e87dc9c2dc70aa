//! The CA's and the sidecar's TOML configuration: parsing and validation (`Config::build`),
//! exactly as `--config FILE` reads them, on arbitrary text. Invariant: no panic; a bad
//! file is an error, never a crash. (Neither `build` reads the files a config names.)

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(file) = toml::from_str::<trellis_ca::config::FileConfig>(text) {
        if let Ok(config) = trellis_ca::Config::build(file) {
            assert!(config.default_ttl <= config.max_ttl);
            let _ = format!("{config:?}");
        }
    }
    if let Ok(file) = toml::from_str::<trellis_sidecar::config::FileConfig>(text) {
        if let Ok(config) = trellis_sidecar::config::Config::build(file) {
            let _ = format!("{config:?}");
        }
    }
});
