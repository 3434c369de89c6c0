//! End-to-end tests of the Anaplan simulator over a real listener.
