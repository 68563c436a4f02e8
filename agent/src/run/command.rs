//! The command line each task kind runs.
