//! A minimal Pingora proxy for bench/run.sh: TLS on one address, every request to one upstream
//! over a kept-alive HTTP/1.1 connection, with the `/instances/<id>` prefix removed as the other
//! peers do. One thread, no work stealing, and no grace period, so that it is measured like
//! the others (one core) and stops at once on SIGTERM.
//!
//!   vod-bench-pingora LISTEN UPSTREAM CERT KEY PREFIX

use async_trait::async_trait;
use pingora::prelude::*;
use pingora::server::configuration::ServerConf;

struct OneUpstream {
    upstream: String,
    prefix: String,
}

#[async_trait]
impl ProxyHttp for OneUpstream {
    type CTX = ();

    fn new_ctx(&self) {}

    async fn upstream_peer(&self, _: &mut Session, _: &mut ()) -> Result<Box<HttpPeer>> {
        Ok(Box::new(HttpPeer::new(
            self.upstream.as_str(),
            false,
            String::new(),
        )))
    }

    async fn upstream_request_filter(
        &self,
        _: &mut Session,
        req: &mut RequestHeader,
        _: &mut (),
    ) -> Result<()> {
        let rest = req
            .uri
            .path_and_query()
            .map(|p| p.as_str())
            .and_then(|p| p.strip_prefix(self.prefix.as_str()))
            .map(str::to_owned);
        if let Some(rest) = rest {
            let uri = rest
                .parse()
                .map_err(|_| Error::explain(ErrorType::InvalidHTTPHeader, "bad path"))?;
            req.set_uri(uri);
        }
        Ok(())
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [listen, upstream, cert, key, prefix] = args.as_slice() else {
        eprintln!("usage: vod-bench-pingora LISTEN UPSTREAM CERT KEY PREFIX");
        std::process::exit(2);
    };
    let conf = ServerConf {
        threads: 1,
        work_stealing: false,
        grace_period_seconds: Some(0),
        graceful_shutdown_timeout_seconds: Some(0),
        ..ServerConf::default()
    };
    let mut server = Server::new_with_opt_and_conf(None, conf);
    server.bootstrap();
    let mut proxy = http_proxy_service(
        &server.configuration,
        OneUpstream {
            upstream: upstream.clone(),
            prefix: prefix.clone(),
        },
    );
    proxy
        .add_tls(listen, cert, key)
        .expect("the certificate and key load");
    server.add_service(proxy);
    server.run_forever();
}
