//! The chat page: HTML, CSS and the page's script from `src/web/`, embedded in the binary.
//!
//! The page is built on the JavaScript client library (`clients/js`, npm `roomcast-client`):
//! `src/web/roomcast-client/` holds the library's modules exactly as `tsc` builds them
//! (`npm run build:web` in `clients/js`; a test of the package fails when they differ), and
//! `src/web/app.js` is the page's own interface code, which imports them.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

const INDEX_HTML: &str = include_str!("web/index.html");
const APP_JS: &str = include_str!("web/app.js");
const STYLE_CSS: &str = include_str!("web/style.css");

/// The client library's modules, served under `/roomcast-client/`.
macro_rules! client_modules {
    ($($file:literal),* $(,)?) => {
        &[$(($file, include_str!(concat!("web/roomcast-client/", $file)))),*]
    };
}
const CLIENT_MODULES: &[(&str, &str)] = client_modules![
    "client.js",
    "emitter.js",
    "errors.js",
    "index.js",
    "protocol.js",
    "room.js",
];

const JS: &str = "text/javascript; charset=utf-8";

pub async fn index() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        INDEX_HTML,
    )
}

pub async fn app_js() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, JS)], APP_JS)
}

pub async fn style_css() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        STYLE_CSS,
    )
}

/// One module of the client library (`/roomcast-client/{file}`), or 404.
pub async fn client_module(Path(file): Path<String>) -> impl IntoResponse {
    match CLIENT_MODULES.iter().find(|(name, _)| *name == file) {
        Some((_, body)) => Ok(([(header::CONTENT_TYPE, JS)], *body)),
        None => Err(StatusCode::NOT_FOUND),
    }
}

#[cfg(test)]
mod tests {
    use super::CLIENT_MODULES;

    /// Every module `npm run build:web` wrote is embedded (a new source file of the library
    /// must be added to `CLIENT_MODULES`), and nothing else is.
    #[test]
    fn every_built_client_module_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/web/roomcast-client");
        let mut built: Vec<String> = std::fs::read_dir(&dir)
            .expect("src/web/roomcast-client exists")
            .map(|e| {
                e.expect("dir entry")
                    .file_name()
                    .to_string_lossy()
                    .into_owned()
            })
            .collect();
        built.sort();
        let mut embedded: Vec<String> = CLIENT_MODULES
            .iter()
            .map(|(n, _)| (*n).to_owned())
            .collect();
        embedded.sort();
        assert_eq!(built, embedded);
    }
}
