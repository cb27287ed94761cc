//! The register sidekick (`switchyard register`): keeps one key alive in etcd for the backend it
//! runs next to. Being written; see issue 4.
