//! The workers: TUN -> seal -> UDP, and UDP -> open -> check -> TUN, one loop per worker over
//! the I/O seam. They read the published routing snapshot, index table and keypairs through
//! atomics and never take a lock. `shared` holds that state, below both `device` and here.

pub mod gate;
pub mod indices;
pub mod packet;
pub mod pool;
pub mod rx;
pub mod seal;
pub mod shared;
pub mod side;
pub mod thinning;
pub mod tx;
pub mod worker;
