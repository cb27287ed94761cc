//! The Switchyard config every scenario starts from (`Cfg`: etcd endpoints and API, one HTTP
//! frontend, one backend under a prefix, the checks of the module docs), built on `support::Cfg`.

use super::*;

pub(crate) struct Cfg<'a> {
    pub(crate) api: Api,
    pub(crate) endpoints: &'a [String],
    pub(crate) backend: &'a str,
    pub(crate) prefix: &'a str,
    pub(crate) check: &'a str,
    pub(crate) global: &'a str,
    pub(crate) etcd: &'a str,
    pub(crate) frontend: &'a str,
    pub(crate) extra: &'a str,
}

impl<'a> Cfg<'a> {
    pub(crate) fn new(
        api: Api,
        endpoints: &'a [String],
        backend: &'a str,
        prefix: &'a str,
    ) -> Cfg<'a> {
        Cfg {
            api,
            endpoints,
            backend,
            prefix,
            check: "tcp",
            global: "",
            etcd: "",
            frontend: "",
            extra: "",
        }
    }

    pub(crate) fn toml(&self) -> String {
        support::Cfg::http("web")
            .table(&format!("[global]\n{}", self.global))
            .etcd_endpoints(self.endpoints)
            .api(self.api)
            .etcd_lines(self.etcd)
            .frontend_lines(self.frontend)
            .backend(self.backend)
            .prefix(self.prefix)
            .backend_lines(self.extra)
            .check(&format!("type = \"{}\"\n{CHECK}", self.check))
            .toml()
    }
}
