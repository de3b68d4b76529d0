//! Every test, bench run and demo lives in a network namespace of its own: loopback only, no
//! port taken by anything else, nothing left behind.

/// Moves the calling thread into a fresh network namespace (loopback up). Call it first thing,
/// before creating sockets or threads, which then inherit the namespace.
pub fn fresh() -> anyhow::Result<()> {
    reuseport_steer::netns::enter_new()?;
    Ok(())
}
