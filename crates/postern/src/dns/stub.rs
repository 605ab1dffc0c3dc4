//! A `Resolver` for tests: fixed DNS answers by name, and a log of every query asked.
//! Shared by the next-hop and the inbound SPF/DKIM/DMARC tests, so both see the same
//! "anything not listed does not exist" world.

use super::{BoxFuture, DnsError, Resolver};
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;

#[derive(Default)]
pub struct StubResolver {
    mx: HashMap<String, Result<Vec<(u16, String)>, DnsError>>,
    ips: HashMap<String, Result<Vec<IpAddr>, DnsError>>,
    txt: HashMap<String, Result<Vec<Vec<u8>>, DnsError>>,
    queries: Mutex<Vec<String>>,
}

impl StubResolver {
    pub fn mx(mut self, domain: &str, records: &[(u16, &str)]) -> Self {
        let records = records.iter().map(|(p, h)| (*p, h.to_string())).collect();
        self.mx.insert(domain.to_string(), Ok(records));
        self
    }

    pub fn mx_err(mut self, domain: &str, err: DnsError) -> Self {
        self.mx.insert(domain.to_string(), Err(err));
        self
    }

    pub fn ips(mut self, host: &str, ips: &[&str]) -> Self {
        let ips = ips.iter().map(|ip| ip.parse().unwrap()).collect();
        self.ips.insert(host.to_string(), Ok(ips));
        self
    }

    pub fn ips_err(mut self, host: &str, err: DnsError) -> Self {
        self.ips.insert(host.to_string(), Err(err));
        self
    }

    pub fn txt(mut self, name: &str, records: &[&str]) -> Self {
        let records = records.iter().map(|r| r.as_bytes().to_vec()).collect();
        self.txt.insert(name.to_string(), Ok(records));
        self
    }

    pub fn txt_err(mut self, name: &str, err: DnsError) -> Self {
        self.txt.insert(name.to_string(), Err(err));
        self
    }

    /// Every query so far, in order, as "MX name", "A name" or "TXT name".
    pub fn queries(&self) -> Vec<String> {
        self.queries.lock().unwrap().clone()
    }

    fn answer<T: Clone>(
        &self,
        kind: &str,
        name: &str,
        table: &HashMap<String, Result<T, DnsError>>,
    ) -> Result<T, DnsError> {
        self.queries.lock().unwrap().push(format!("{kind} {name}"));
        table
            .get(name)
            .cloned()
            .unwrap_or(Err(DnsError::NoSuchDomain))
    }
}

impl Resolver for StubResolver {
    fn mx<'a>(&'a self, domain: &'a str) -> BoxFuture<'a, Result<Vec<(u16, String)>, DnsError>> {
        let answer = self.answer("MX", domain, &self.mx);
        Box::pin(async move { answer })
    }

    fn ips<'a>(&'a self, host: &'a str) -> BoxFuture<'a, Result<Vec<IpAddr>, DnsError>> {
        let answer = self.answer("A", host, &self.ips);
        Box::pin(async move { answer })
    }

    fn txt<'a>(&'a self, name: &'a str) -> BoxFuture<'a, Result<Vec<Vec<u8>>, DnsError>> {
        let answer = self.answer("TXT", name, &self.txt);
        Box::pin(async move { answer })
    }
}
