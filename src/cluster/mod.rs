//! The cluster stage: who the members are (static list, DNS or Redis), who owns each trace id
//! (rendezvous hashing), and the peer protocol that carries spans to their owner.

pub mod dns;
pub mod forward;
pub mod membership;
pub mod peer;
pub mod redis;
pub mod status;
