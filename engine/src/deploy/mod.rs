//! Fleet deploys as a library, so the CLI stays thin and tests can drive it.
//!
//! - [`contract`]: what the deployer and the remote `corvid peer` agree on: the command
//!   line, the JSON lines, the exit codes.
//! - [`hosts`]: the host list and what counts as a safe ssh destination.
//! - [`release`]: the on-host layout (`releases/TAG.partial` → `releases/TAG` →
//!   `current`) and its atomic rename steps.
//! - [`content`]: a release's files inside that layout, BEP 47 exec bits and symlinks,
//!   and the check that an existing release already matches.
//! - [`ssh`]: OpenSSH sessions (with deadlines) and shell quoting.
//! - [`install`]: getting this corvid onto the hosts: the check, the grouping, and the
//!   install by ssh or through a swarm of the hosts' old corvids.
//! - [`host_error`]: why one host failed, as a typed value in the report.
//! - [`ops`]: status, activation (rollback) and pruning of the releases on a host, and
//!   running them on every host over ssh.
//! - [`remote`]: the release steps `corvid peer` runs on a host around its download.
//! - [`plan`]: the deploy's parameters; [`seeder`]: the seeders run in this process;
//!   [`seeder_addr`]: the address the hosts reach them at.
//! - [`fleet`]: the whole deploy: check and install corvid on every host, build the
//!   torrent, seed it with an embedded tracker, run `corvid peer` everywhere, report.

pub mod content;
pub mod contract;
pub mod fleet;
pub mod host_error;
pub mod hosts;
pub mod install;
pub mod ops;
pub mod piece_cache;
pub mod plan;
pub mod release;
pub mod remote;
pub mod seeder;
pub mod seeder_addr;
pub mod ssh;
