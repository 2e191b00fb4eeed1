//! swarm: not yet written.
