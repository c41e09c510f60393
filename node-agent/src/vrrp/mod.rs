//! VRRP version 3 (RFC 5798) for VIP failover between directors (issue 5). Work in progress.
