//! The DNS lookups a domain check makes (TXT and CNAME), through hickory: the system
//! resolver, or the name servers in `[dns] nameservers`. Caching is off so a record
//! the user just published is seen on the next check.

use std::net::SocketAddr;

use hickory_resolver::config::{ConnectionConfig, NameServerConfig, ResolverConfig, ResolverOpts};
use hickory_resolver::net::runtime::TokioRuntimeProvider;
use hickory_resolver::net::NetError;
use hickory_resolver::proto::rr::{RData, RecordType};
use hickory_resolver::TokioResolver;

/// A lookup that got no answer at all (timeout, refused): the record's state is
/// unknown, which is not the same as absent.
#[derive(Debug, thiserror::Error)]
#[error("the DNS lookup of {name} failed: {reason}")]
pub struct LookupFailed {
    pub name: String,
    pub reason: String,
}

pub struct Dns {
    resolver: TokioResolver,
}

impl Dns {
    /// A resolver asking `servers`, or the system's when empty.
    pub fn new(servers: &[SocketAddr]) -> anyhow::Result<Self> {
        let mut builder = if servers.is_empty() {
            TokioResolver::builder_tokio()?
        } else {
            let name_servers = servers
                .iter()
                .map(|server| {
                    let connections = [ConnectionConfig::udp(), ConnectionConfig::tcp()]
                        .into_iter()
                        .map(|mut c| {
                            c.port = server.port();
                            c
                        })
                        .collect();
                    NameServerConfig::new(server.ip(), true, connections)
                })
                .collect();
            TokioResolver::builder_with_config(
                ResolverConfig::from_parts(None, Vec::new(), name_servers),
                TokioRuntimeProvider::default(),
            )
        };
        let options: &mut ResolverOpts = builder.options_mut();
        options.cache_size = 0;
        options.attempts = 2;
        options.timeout = std::time::Duration::from_secs(3);
        Ok(Self {
            resolver: builder.build()?,
        })
    }

    async fn records(&self, name: &str, kind: RecordType) -> Result<Vec<RData>, LookupFailed> {
        let fqdn = format!("{}.", name.trim_end_matches('.'));
        match self.resolver.lookup(fqdn.as_str(), kind).await {
            Ok(lookup) => Ok(lookup.answers().iter().map(|r| r.data.clone()).collect()),
            Err(err) if is_absent(&err) => Ok(Vec::new()),
            Err(err) => Err(LookupFailed {
                name: name.to_owned(),
                reason: err.to_string(),
            }),
        }
    }

    /// Every TXT record at `name`, each with its strings joined (a DKIM key longer than
    /// 255 bytes is published as several strings).
    pub async fn txt(&self, name: &str) -> Result<Vec<String>, LookupFailed> {
        Ok(self
            .records(name, RecordType::TXT)
            .await?
            .into_iter()
            .filter_map(|data| match data {
                RData::TXT(txt) => Some(txt.txt_data.iter().map(|s| String::from_utf8_lossy(s)).collect()),
                _ => None,
            })
            .collect())
    }

    /// The target of the CNAME at `name`, without its final dot.
    pub async fn cname(&self, name: &str) -> Result<Option<String>, LookupFailed> {
        Ok(self
            .records(name, RecordType::CNAME)
            .await?
            .into_iter()
            .find_map(|data| match data {
                RData::CNAME(target) => Some(target.0.to_ascii().trim_end_matches('.').to_ascii_lowercase()),
                _ => None,
            }))
    }
}

fn is_absent(err: &NetError) -> bool {
    err.is_no_records_found() || err.is_nx_domain()
}
