//! Fuzz target `config`: a configuration file's text through the gateway's TOML loading
//! and validation (`Config::load` without the environment). Checked: nothing panics
//! (a bad value is an error naming its key, exit 64, never a crash); a configuration that
//! validates renders (`roomcast config`) and its TOML loads again to the same config.
#![no_main]

use libfuzzer_sys::fuzz_target;
use roomcast::fuzzing::config_from_toml;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(mut config) = config_from_toml(text) else {
        return;
    };
    // Files named by the configuration are not followed (a fuzzed path could be a
    // device that never ends); everything else validates as at start.
    config.redis.tls_ca_file = None;
    if config.validate().is_err() {
        return;
    }
    let _ = config.to_redacted_toml();
    let rendered = toml::to_string(&config).expect("a valid configuration renders as TOML");
    let again = config_from_toml(&rendered)
        .unwrap_or_else(|e| panic!("rendered configuration does not load: {e}\n{rendered}"));
    assert!(
        again.validate().is_ok(),
        "rendered configuration does not validate:\n{rendered}"
    );
    assert_eq!(
        toml::to_string(&again).ok().as_deref(),
        Some(rendered.as_str())
    );
});
