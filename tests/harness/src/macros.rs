//! Test generators: one `#[tokio::test]` per engine for each listed scenario.

/// Generates one `#[tokio::test]` per engine (modules `memory` and `redis`) for each listed
/// `async fn name(backend: Backend)` of the calling test file.
#[macro_export]
macro_rules! both_engines {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::Memory).await } )*
        }
        mod redis {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::Redis).await } )*
        }
    };
}

/// Generates one `#[tokio::test]` on Redis Cluster (module `cluster`) for each listed
/// `async fn name(backend: Backend)`, for the tests that matter on a cluster.
#[macro_export]
macro_rules! on_cluster {
    ($($name:ident),* $(,)?) => {
        mod cluster {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::Cluster).await } )*
        }
    };
}

/// Generates one `#[tokio::test]` on Redis over TLS (module `tls`) for each listed
/// `async fn name(backend: Backend)`.
#[macro_export]
macro_rules! on_tls {
    ($($name:ident),* $(,)?) => {
        mod tls {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name(super::Backend::RedisTls).await } )*
        }
    };
}

/// Like [`both_engines!`], plus a third module `tls` on Redis over TLS only.
#[macro_export]
macro_rules! every_engine {
    ($($name:ident),* $(,)?) => {
        $crate::both_engines!($($name),*);
        $crate::on_tls!($($name),*);
    };
}

/// Generates one `#[tokio::test]` per transport (modules `websocket` and `sse`) for each listed
/// `async fn name(transport: Transport)` of the calling test file.
#[macro_export]
macro_rules! both_transports {
    ($($name:ident),* $(,)?) => {
        mod websocket {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::Transport::WebSocket).await } )*
        }
        mod sse {
            $( #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
               async fn $name() { super::$name($crate::Transport::Sse).await } )*
        }
    };
}
